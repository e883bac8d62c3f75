"""Numerical equivalence of hypernetized models with a hand-written computation.

Every test computes the same math twice:

* through :func:`hypernn.hypernetize` (``hnet(x)``), and
* by hand, from ``hnet.embedding_module.weight`` and ``hnet.weight_generator.weight/bias``
  with plain torch ops: ``emb = E[arange]``, ``chunks = emb @ W.T + b``,
  ``flat = chunks.reshape(-1)``, ``tensor = flat[offset:offset + n].reshape(shape)``, and
  the model's forward written out (matmuls, convolutions, batch / layer norm, the LSTM
  cell, multi-head attention).

The offsets of the hand-written side come from an independent re-derivation of the chunk
layout (:func:`hand_layout`), not from ``hnet.layout``; the layout is then checked to agree.
Outputs and the gradients of every trainable parameter of the hypernetwork are compared.
These are hyper-nn's computations, so the hypernetworks use ``init="default"`` (no start
map); the hyperfan map on top is checked in ``test_torch_init.py``.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from hypernn import hypernetize, select
from layout_reference import hand_layout

DTYPE = torch.float64
GENERATOR_PARAMS = ("embedding_module.weight", "weight_generator.weight", "weight_generator.bias")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- the hand-written hypernetwork




def flatten_outputs(out) -> List[torch.Tensor]:
    if out is None:
        return []
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in flatten_outputs(item)]


def compare(
    hnet: nn.Module,
    model: nn.Module,
    hand_forward: Callable[..., object],
    inputs: Sequence[object],
    *,
    selected: Sequence[str],
    kind: str,
    num_embeddings: int,
    tied: Dict[str, str] = None,
    check_grads: bool = True,
) -> None:
    """Check ``hnet(*inputs)`` and its gradients against ``hand_forward(params, *inputs)``.

    ``selected``: the generated tensors' names, in the order they must be laid out;
    ``tied``: ``{alias: name}`` of tied names that must reuse a generated tensor;
    ``model``: the original model (the source of the unselected parameters' values).
    """
    tied = dict(tied or {})
    model_params = dict(model.named_parameters(remove_duplicate=False))
    shapes = [tuple(model_params[name].shape) for name in selected]
    sizes = [math.prod(shape) for shape in shapes]
    offsets, chunk_dim, num_chunks = hand_layout(sizes, kind, num_embeddings)

    # The hypernetwork generates exactly the selected tensors where the layout says.
    assert hnet.selection.names == tuple(selected)
    assert [(s.name, s.shape, s.offset, s.aliases) for s in hnet.layout.slots] == [
        (n, shape, off, tuple(a for a, t in tied.items() if t == n)) for n, shape, off in zip(selected, shapes, offsets)
    ]
    assert (hnet.layout.num_chunks, hnet.layout.chunk_dim) == (num_chunks, chunk_dim)
    assert hnet.layout.num_params == sum(sizes)
    assert hnet.layout.generated_size == num_chunks * chunk_dim

    # Its trainable parameters: the generator's, plus the model's unselected ones.
    generated_names = set(selected) | set(tied)
    unselected = [n for n, _ in model.named_parameters() if n not in generated_names]
    hnet_params = dict(hnet.named_parameters())
    assert set(hnet_params) == set(GENERATOR_PARAMS) | {"target_network." + n for n in unselected}
    assert hnet_params["weight_generator.weight"].dtype == DTYPE

    # Leaves of the hand-written computation: copies of the generator's parameters, and of
    # the *original* model's unselected parameters (so kept values are checked too).
    leaves = {n: hnet_params[n].detach().clone().requires_grad_() for n in GENERATOR_PARAMS}
    leaves.update({"target_network." + n: model_params[n].detach().clone().requires_grad_() for n in unselected})

    embedding = leaves["embedding_module.weight"][torch.arange(num_chunks)]
    chunks = embedding @ leaves["weight_generator.weight"].T + leaves["weight_generator.bias"]
    assert chunks.shape == (num_chunks, chunk_dim)
    flat = chunks.reshape(-1)
    params = {n: flat[o : o + s].reshape(shape) for n, shape, o, s in zip(selected, shapes, offsets, sizes)}
    params.update({alias: params[name] for alias, name in tied.items()})
    params.update({n: leaves["target_network." + n] for n in unselected})

    expected = hand_forward(params, *inputs)
    actual = hnet(*inputs)
    assert_close(actual, expected)
    if not check_grads:
        return

    expected_flat, actual_flat = flatten_outputs(expected), flatten_outputs(actual)
    cotangents = [torch.randn_like(t) for t in expected_flat]
    names = sorted(leaves)
    expected_grads = torch.autograd.grad(sum((t * c).sum() for t, c in zip(expected_flat, cotangents)), [leaves[n] for n in names])
    actual_grads = torch.autograd.grad(sum((t * c).sum() for t, c in zip(actual_flat, cotangents)), [hnet_params[n] for n in names])
    for name, e, a in zip(names, expected_grads, actual_grads):
        assert_close(a, e, msg=lambda m, name=name: f"gradient of {name}: {m}")
        assert e.abs().sum() > 0, f"degenerate test: zero gradient for {name}"


# ---------------------------------------------------------------- hand-written models


def linear(x, weight, bias=None):
    out = x @ weight.T
    return out if bias is None else out + bias


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def hand_mlp(p, x):
    return linear(torch.relu(linear(x, p["0.weight"], p["0.bias"])), p["2.weight"], p["2.bias"])


def hand_attention(query, key, value, w_in, b_in, w_out, b_out, num_heads, batch_first=False):
    """Multi-head attention: returns (output, attention weights averaged over heads)."""
    if batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    (L, N, E), S = query.shape, key.shape[0]
    d = E // num_heads
    wq, wk, wv = w_in.chunk(3)
    bq, bk, bv = b_in.chunk(3)

    def heads(t, length):  # (length, N, E) -> (N, heads, length, d)
        return t.reshape(length, N, num_heads, d).permute(1, 2, 0, 3)

    q, k, v = heads(linear(query, wq, bq), L), heads(linear(key, wk, bk), S), heads(linear(value, wv, bv), S)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (N, heads, L, S)
    merged = (weights @ v).permute(2, 0, 1, 3).reshape(L, N, E)
    out = linear(merged, w_out, b_out)
    if batch_first:
        out = out.transpose(0, 1)
    return out, weights.mean(1)


def hand_encoder_layer(p, src, *, num_heads, norm_first, batch_first, eps=1e-5):
    def self_attention(x):
        return hand_attention(x, x, x, p["self_attn.in_proj_weight"], p["self_attn.in_proj_bias"],
                              p["self_attn.out_proj.weight"], p["self_attn.out_proj.bias"], num_heads, batch_first)[0]  # fmt: skip

    def feed_forward(x):
        return linear(torch.relu(linear(x, p["linear1.weight"], p["linear1.bias"])), p["linear2.weight"], p["linear2.bias"])

    def norm(i, x):
        return layer_norm(x, p[f"norm{i}.weight"], p[f"norm{i}.bias"], eps)

    x = src
    if norm_first:
        x = x + self_attention(norm(1, x))
        return x + feed_forward(norm(2, x))
    x = norm(1, x + self_attention(x))
    return norm(2, x + feed_forward(x))


def hand_lstm(p, x, state=None, *, num_layers, hidden_size, batch_first):
    if batch_first:
        x = x.transpose(0, 1)
    T, B, _ = x.shape
    if state is None:
        zeros = torch.zeros(num_layers, B, hidden_size, dtype=x.dtype)
        state = (zeros, zeros)
    layer_input, h_n, c_n = x, [], []
    for layer in range(num_layers):
        w_ih, w_hh = p[f"weight_ih_l{layer}"], p[f"weight_hh_l{layer}"]
        b_ih, b_hh = p[f"bias_ih_l{layer}"], p[f"bias_hh_l{layer}"]
        h, c = state[0][layer], state[1][layer]
        outputs = []
        for t in range(T):
            gates = layer_input[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
            i, f, g, o = gates.chunk(4, dim=1)  # torch's gate order
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c = f * c + i * g
            h = o * torch.tanh(c)
            outputs.append(h)
        layer_input = torch.stack(outputs)
        h_n.append(h)
        c_n.append(c)
    out = layer_input.transpose(0, 1) if batch_first else layer_input
    return out, (torch.stack(h_n), torch.stack(c_n))


# ---------------------------------------------------------------- 1. MLP


def make_mlp():
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(DTYPE)


MLP_ALL = ["0.weight", "0.bias", "2.weight", "2.bias"]


@pytest.mark.parametrize(
    "targets, selected, kind, num_embeddings",
    [
        (None, MLP_ALL, "global", 5),  # 51 values: 5 chunks of 11, 4 unused
        (None, MLP_ALL, "global", 1),
        (None, MLP_ALL, "per_tensor", 6),  # chunk_dim 8: 3 + 1 + 3 + 1 chunks, padding between
        (None, MLP_ALL, "per_tensor", 20),
        (["0"], ["0.weight", "0.bias"], "global", 3),
        (["0"], ["0.weight", "0.bias"], "per_tensor", 4),
        (["2.weight"], ["2.weight"], "global", 2),
        (r".*\.weight", ["0.weight", "2.weight"], "per_tensor", 5),  # a regex: biases stay parameters
    ],
)
def test_mlp(targets, selected, kind, num_embeddings):
    model = make_mlp()
    hnet = hypernetize(model, init="default", embedding_dim=3, num_embeddings=num_embeddings, targets=targets, layout=kind)
    x = torch.randn(7, 4, dtype=DTYPE)
    compare(hnet, model, hand_mlp, (x,), selected=selected, kind=kind, num_embeddings=num_embeddings)


def test_mlp_partial_keeps_unselected_layer_trainable():
    model = make_mlp()
    hnet = hypernetize(model, init="default", embedding_dim=3, num_embeddings=3, targets=["0"])
    kept = hnet.target_network[2]
    assert any(p is kept.weight for p in hnet.parameters()) and any(p is kept.bias for p in hnet.parameters())
    assert kept.weight is not model[2].weight  # a copy, not shared with the original
    assert_close(kept.weight, model[2].weight, rtol=0, atol=0)
    assert hnet.target_network[0].weight is None and "0.weight" not in dict(hnet.target_network.named_parameters())
    x = torch.randn(5, 4, dtype=DTYPE)
    hnet(x).square().sum().backward()
    assert kept.weight.grad is not None and kept.weight.grad.abs().sum() > 0

    # One optimiser step on the hypernetwork moves the kept layer like plain SGD would.
    before = kept.weight.detach().clone()
    torch.optim.SGD(hnet.parameters(), lr=0.1).step()
    assert_close(kept.weight.detach(), before - 0.1 * kept.weight.grad)


# ---------------------------------------------------------------- 2. CNN with BatchNorm


class CNN(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3, momentum=0.3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 5 * 5, 4))  # fmt: skip


CNN_ALL = ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]


def make_cnn():
    model = CNN().to(DTYPE)
    with torch.no_grad():  # non-trivial affine and running statistics
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


def hand_cnn(stats: dict):
    """The CNN by hand; ``stats`` holds running_mean/var (updated here in train mode)."""

    def forward(p, x):
        y = F.conv2d(x, p["0.weight"], p["0.bias"], padding=1)
        w, b, eps, momentum = p["1.weight"], p["1.bias"], 1e-5, 0.3
        shape = (1, -1, 1, 1)
        if stats["training"]:
            mean = y.mean(dim=(0, 2, 3))
            var = ((y - mean.reshape(shape)) ** 2).mean(dim=(0, 2, 3))
            n = y.numel() / y.shape[1]
            stats["running_mean"] = (1 - momentum) * stats["running_mean"] + momentum * mean.detach()
            stats["running_var"] = (1 - momentum) * stats["running_var"] + momentum * var.detach() * n / (n - 1)
            stats["num_batches_tracked"] = stats["num_batches_tracked"] + 1
        else:
            mean, var = stats["running_mean"], stats["running_var"]
        y = (y - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps) * w.reshape(shape) + b.reshape(shape)
        return linear(torch.relu(y).flatten(1), p["4.weight"], p["4.bias"])

    return forward


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "targets, selected, kind, num_embeddings",
    [
        (None, CNN_ALL, "global", 7),
        (None, CNN_ALL, "per_tensor", 12),
        (nn.Conv2d, ["0.weight", "0.bias"], "global", 2),
        ([nn.Conv2d, "4"], ["0.weight", "0.bias", "4.weight", "4.bias"], "per_tensor", 9),
    ],
)
def test_cnn_batchnorm(training, targets, selected, kind, num_embeddings):
    model = make_cnn()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    hnet = hypernetize(model, init="default", embedding_dim=4, num_embeddings=num_embeddings, targets=targets, layout=kind)
    hnet.train(training)
    bn = hnet.target_network[1]
    assert bn.training is training and hnet.target_network[0].training is training

    stats = {"training": training, **{k: getattr(bn, k).clone() for k in ("running_mean", "running_var", "num_batches_tracked")}}
    assert_close(stats["running_mean"], model[1].running_mean, rtol=0, atol=0)
    x = torch.randn(4, 2, 5, 5, dtype=DTYPE)
    compare(hnet, model, hand_cnn(stats), (x,), selected=selected, kind=kind, num_embeddings=num_embeddings)

    # The hypernetwork's running statistics moved exactly like the hand-computed update
    # (or stayed frozen in eval mode); the original model's did not move at all.
    assert_close(bn.running_mean, stats["running_mean"])
    assert_close(bn.running_var, stats["running_var"])
    assert int(bn.num_batches_tracked) == int(stats["num_batches_tracked"]) == int(original["1.num_batches_tracked"]) + training
    if not training:
        assert torch.equal(bn.running_mean, original["1.running_mean"]) and torch.equal(bn.running_var, original["1.running_var"])
    else:
        assert not torch.equal(bn.running_mean, original["1.running_mean"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_train_eval_reach_the_target_network():
    hnet = hypernetize(make_cnn(), init="default", embedding_dim=4, num_embeddings=3)
    hnet.eval()
    assert all(not m.training for m in hnet.modules())
    assert not hnet.target_network[1].training
    hnet.train()
    assert all(m.training for m in hnet.modules())
    assert hnet.target_network[1].training
    hnet.target_network.eval()  # the BN module alone decides how the target runs
    x = torch.randn(3, 2, 5, 5, dtype=DTYPE)
    before = hnet.target_network[1].running_mean.clone()
    hnet(x)
    assert torch.equal(hnet.target_network[1].running_mean, before)


# ---------------------------------------------------------------- 3. LSTM


LSTM_NAMES = ["weight_ih_l{}", "weight_hh_l{}", "bias_ih_l{}", "bias_hh_l{}"]


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize(
    "targets, kind, num_embeddings, with_state",
    [(None, "global", 6, False), (None, "per_tensor", 10, True), (r"weight_.*", "global", 3, True)],
    ids=["all-global", "all-per_tensor-h0c0", "weights-only-h0c0"],
)
def test_lstm(num_layers, batch_first, targets, kind, num_embeddings, with_state):
    input_size, hidden, T, B = 3, 4, 5, 2
    model = nn.LSTM(input_size, hidden, num_layers=num_layers, batch_first=batch_first).to(DTYPE)
    hnet = hypernetize(model, init="default", embedding_dim=3, num_embeddings=num_embeddings, targets=targets, layout=kind)
    names = [n.format(layer) for layer in range(num_layers) for n in LSTM_NAMES]
    selected = [n for n in names if targets is None or n.startswith("weight_")]
    x = torch.randn((B, T, input_size) if batch_first else (T, B, input_size), dtype=DTYPE)
    inputs = (x,)
    if with_state:
        inputs = (x, (torch.randn(num_layers, B, hidden, dtype=DTYPE), torch.randn(num_layers, B, hidden, dtype=DTYPE)))

    def hand(p, *args):
        return hand_lstm(p, *args, num_layers=num_layers, hidden_size=hidden, batch_first=batch_first)

    compare(hnet, model, hand, inputs, selected=selected, kind=kind, num_embeddings=num_embeddings)
    # A second call (new graph) still uses freshly generated weights.
    with torch.no_grad():
        hnet.weight_generator.bias.add_(0.1)
    compare(hnet, model, hand, inputs, selected=selected, kind=kind, num_embeddings=num_embeddings)


# ---------------------------------------------------------------- 4. attention


ATTN = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize(
    "targets, selected, kind, num_embeddings",
    [
        (None, ATTN, "global", 5),
        (nn.MultiheadAttention, ATTN, "per_tensor", 8),
        (["out_proj"], ["out_proj.weight", "out_proj.bias"], "global", 2),
        (["in_proj_weight"], ["in_proj_weight"], "per_tensor", 3),
    ],
)
def test_multihead_attention(training, batch_first, targets, selected, kind, num_embeddings):
    E, heads, L, S, N = 8, 2, 4, 6, 3
    model = nn.MultiheadAttention(E, heads, dropout=0.0, batch_first=batch_first).to(DTYPE)
    with torch.no_grad():
        model.in_proj_bias.uniform_(-0.5, 0.5)  # torch initialises the biases to zero
        model.out_proj.bias.uniform_(-0.5, 0.5)
    hnet = hypernetize(model, init="default", embedding_dim=4, num_embeddings=num_embeddings, targets=targets, layout=kind)
    hnet.train(training)
    assert hnet.target_network.training is training

    def shape(length):
        return (N, length, E) if batch_first else (length, N, E)

    query, key, value = torch.randn(shape(L), dtype=DTYPE), torch.randn(shape(S), dtype=DTYPE), torch.randn(shape(S), dtype=DTYPE)

    def hand(p, q, k, v):
        return hand_attention(q, k, v, p["in_proj_weight"], p["in_proj_bias"], p["out_proj.weight"], p["out_proj.bias"],
                              heads, batch_first)  # fmt: skip

    compare(hnet, model, hand, (query, key, value), selected=selected, kind=kind, num_embeddings=num_embeddings)
    # Self-attention (query is key is value): in eval mode without grad, torch's fast path.
    x = torch.randn(shape(L), dtype=DTYPE)
    with torch.no_grad():
        compare(hnet, model, hand, (x, x, x), selected=selected, kind=kind, num_embeddings=num_embeddings, check_grads=False)


TEL_ALL = ["self_attn." + n for n in ATTN] + [
    "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
    "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
]  # fmt: skip


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("norm_first, batch_first", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize(
    "targets, selected, kind, num_embeddings",
    [
        (nn.MultiheadAttention, TEL_ALL[:4], "global", 4),
        (["self_attn"], TEL_ALL[:4], "per_tensor", 6),
        (None, TEL_ALL, "global", 9),
        (None, TEL_ALL, "per_tensor", 24),
    ],
)
def test_transformer_encoder_layer(training, norm_first, batch_first, targets, selected, kind, num_embeddings):
    E, heads, T, N = 8, 2, 5, 3
    model = nn.TransformerEncoderLayer(E, heads, dim_feedforward=12, dropout=0.0, norm_first=norm_first,
                                       batch_first=batch_first).to(DTYPE)  # fmt: skip
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):  # move them off their 1 / 0 init
                param.add_(torch.empty_like(param).uniform_(-0.3, 0.3))
    hnet = hypernetize(model, init="default", embedding_dim=5, num_embeddings=num_embeddings, targets=targets, layout=kind)
    hnet.train(training)
    assert hnet.target_network.self_attn.training is training

    def hand(p, src):
        return hand_encoder_layer(p, src, num_heads=heads, norm_first=norm_first, batch_first=batch_first)

    src = torch.randn((N, T, E) if batch_first else (T, N, E), dtype=DTYPE)
    compare(hnet, model, hand, (src,), selected=selected, kind=kind, num_embeddings=num_embeddings)
    with torch.no_grad():  # eval + no grad + batch_first: torch's fused encoder fast path
        compare(hnet, model, hand, (src,), selected=selected, kind=kind, num_embeddings=num_embeddings, check_grads=False)


# ---------------------------------------------------------------- 5. emitting the original weights


class Tied(nn.Module):
    """Embedding / output tying: ``out.weight is emb.weight``."""

    def __init__(self, vocab=10, dim=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab)
        self.out.weight = self.emb.weight

    def forward(self, tokens):
        return self.out(torch.tanh(self.mid(self.emb(tokens))))


class TiedLinears(nn.Module):
    """Two square linear layers sharing one weight (different biases)."""

    def __init__(self, dim=5):
        super().__init__()
        self.first = nn.Linear(dim, dim)
        self.second = nn.Linear(dim, dim)
        self.second.weight = self.first.weight

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


ORIGINAL_CASES = {
    # name: (model factory, input factory, train mode, targets)
    "mlp": (make_mlp, lambda: (torch.randn(5, 4, dtype=DTYPE),), True, None),
    "mlp-partial": (make_mlp, lambda: (torch.randn(5, 4, dtype=DTYPE),), True, ["2"]),
    "cnn-bn-eval": (make_cnn, lambda: (torch.randn(3, 2, 5, 5, dtype=DTYPE),), False, None),
    "cnn-bn-train": (make_cnn, lambda: (torch.randn(3, 2, 5, 5, dtype=DTYPE),), True, None),
    "lstm": (lambda: nn.LSTM(3, 4, num_layers=2).to(DTYPE), lambda: (torch.randn(5, 2, 3, dtype=DTYPE),), True, None),
    "lstm-weights-only": (lambda: nn.LSTM(3, 4, num_layers=2, batch_first=True).to(DTYPE),
                          lambda: (torch.randn(2, 5, 3, dtype=DTYPE),), True, "weight_.*"),  # fmt: skip
    "encoder-layer-eval": (lambda: nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0).to(DTYPE),
                           lambda: (torch.randn(5, 3, 8, dtype=DTYPE),), False, None),  # fmt: skip
    "encoder-layer-eval-batch-first": (
        lambda: nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0, batch_first=True).to(DTYPE),
        lambda: (torch.randn(3, 5, 8, dtype=DTYPE),), False, ["self_attn"]),  # fmt: skip
    "tied": (lambda: Tied().to(DTYPE), lambda: (torch.randint(0, 10, (3, 6)),), True, None),
    "tied-linears": (lambda: TiedLinears().to(DTYPE), lambda: (torch.randn(4, 5, dtype=DTYPE),), True, None),
}


def _selected_names(model, targets) -> List[str]:
    """The generated tensors' names, in model order (tied ones once)."""
    names = set(select(model, targets=targets).names)
    return [n for n, _ in model.named_parameters() if n in names]


def _assert_identical(actual, expected):
    actual, expected = flatten_outputs(actual), flatten_outputs(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e), f"max abs difference {(a - e).abs().max().item()}"


def _inputs(make_inputs):
    torch.manual_seed(1234)
    return make_inputs()


def _padded_num_embeddings(sizes: Sequence[int]) -> int:
    """The smallest ``num_embeddings`` whose per_tensor layout has unused values."""
    for num_embeddings in range(len(sizes), 4 * sum(sizes)):
        offsets, chunk_dim, num_chunks = hand_layout(sizes, "per_tensor", num_embeddings)
        if num_chunks * chunk_dim > sum(sizes):
            return num_embeddings
    raise AssertionError("no padded per_tensor layout")


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("mode", ["compact", "full-with-nan-padding", "generator"])
@pytest.mark.parametrize("case", list(ORIGINAL_CASES))
def test_generator_emitting_original_weights_reproduces_model(case, mode, grad):
    make_model, make_inputs, training, targets = ORIGINAL_CASES[case]
    model = make_model()
    reference = make_model()  # the same weights, run untouched as the reference
    reference.load_state_dict(model.state_dict())
    reference.train(training)
    names = _selected_names(model, targets)
    values = [model.get_parameter(n).detach() for n in names]
    sizes = [v.numel() for v in values]
    compact = torch.cat([v.reshape(-1) for v in values])
    if not grad:
        # torch picks kernels by `requires_grad` even under no_grad (matmul folding in
        # the LSTM, attention fast paths), and generated tensors made under no_grad do not
        # require grad: match that flag on the reference so both take the same kernels.
        reference.requires_grad_(False)

    kind = "per_tensor" if mode == "full-with-nan-padding" else "global"
    num_embeddings = {"compact": 2 * len(values) + 1, "generator": 1}.get(mode) or _padded_num_embeddings(sizes)
    hnet = hypernetize(model, init="default", embedding_dim=3, num_embeddings=num_embeddings, targets=targets, layout=kind)
    hnet.train(training)
    kwargs, vector = {}, None
    if mode == "compact":
        vector = compact.clone().requires_grad_(grad)
    elif mode == "full-with-nan-padding":  # unused values are NaN: reading any would show
        offsets, chunk_dim, num_chunks = hand_layout(sizes, "per_tensor", num_embeddings)
        full = torch.full((num_chunks * chunk_dim,), float("nan"), dtype=DTYPE)
        for value, offset in zip(values, offsets):
            full[offset : offset + value.numel()] = value.reshape(-1)
        assert full.isnan().any()
        vector = full.requires_grad_(grad)
    else:  # E = 1, global layout: the single chunk is the whole vector; W = 0, b = it
        assert tuple(hnet.weight_generator.weight.shape) == (compact.numel(), 3)
        with torch.no_grad():
            hnet.weight_generator.weight.zero_()
            hnet.weight_generator.bias.copy_(compact)
    if vector is not None:
        kwargs["generated_params"] = vector

    with torch.set_grad_enabled(grad):
        expected = reference(*_inputs(make_inputs))
        actual = hnet(*_inputs(make_inputs), **kwargs)
    _assert_identical(actual, expected)
    # Stateful buffers (BatchNorm running statistics) evolve identically.
    hnet_buffers, reference_buffers = dict(hnet.target_network.named_buffers()), dict(reference.named_buffers())
    assert hnet_buffers.keys() == reference_buffers.keys()
    for name, value in reference_buffers.items():
        assert torch.equal(hnet_buffers[name], value), name
    if not grad:
        return

    # Gradients: the generated vector gets the model's parameter gradients laid end to end
    # (zero on padding); kept parameters get the model's own gradients.
    unselected = [n for n, _ in reference.named_parameters() if n not in names]
    cotangents = [torch.randn_like(t) for t in flatten_outputs(expected)]
    reference_grads = torch.autograd.grad(
        sum((t * c).sum() for t, c in zip(flatten_outputs(expected), cotangents)),
        [reference.get_parameter(n) for n in names + unselected],
    )
    source = vector if vector is not None else hnet.weight_generator.bias
    hnet_grads = torch.autograd.grad(
        sum((t * c).sum() for t, c in zip(flatten_outputs(actual), cotangents)),
        [source] + [hnet.target_network.get_parameter(n) for n in unselected],
    )
    if mode == "full-with-nan-padding":
        expected_vector_grad = torch.zeros_like(vector)
        for g, offset in zip(reference_grads, offsets):
            expected_vector_grad[offset : offset + g.numel()] = g.reshape(-1)
    else:
        expected_vector_grad = torch.cat([g.reshape(-1) for g in reference_grads[: len(names)]])
    assert_close(hnet_grads[0], expected_vector_grad)
    for name, a, e in zip(unselected, hnet_grads[1:], reference_grads[len(names) :]):
        assert_close(a, e, msg=lambda m, name=name: f"gradient of {name}: {m}")


# ---------------------------------------------------------------- 6. tied parameters


@pytest.mark.parametrize(
    "targets, selected, kind, num_embeddings",
    [
        (None, ["emb.weight", "mid.weight", "mid.bias", "out.bias"], "global", 4),
        (None, ["emb.weight", "mid.weight", "mid.bias", "out.bias"], "per_tensor", 9),
        (["out.weight"], ["emb.weight"], "global", 3),  # selected through its alias only
        (["out"], ["emb.weight", "out.bias"], "per_tensor", 5),
    ],
)
def test_tied_embedding_and_output(targets, selected, kind, num_embeddings):
    model = Tied().to(DTYPE)
    hnet = hypernetize(model, init="default", embedding_dim=3, num_embeddings=num_embeddings, targets=targets, layout=kind)
    assert [s.name for s in hnet.layout.slots].count("emb.weight") == 1
    assert hnet.layout.slots[0].aliases == ("out.weight",)

    def hand(p, tokens):
        shared = p["emb.weight"]  # one generated matrix, used twice
        hidden = torch.tanh(linear(shared[tokens], p["mid.weight"], p["mid.bias"]))
        return linear(hidden, shared, p["out.bias"])

    tokens = torch.randint(0, 10, (3, 6))
    compare(hnet, model, hand, (tokens,), selected=selected, kind=kind, num_embeddings=num_embeddings,
            tied={"out.weight": "emb.weight"})  # fmt: skip


@pytest.mark.parametrize("kind, num_embeddings", [("global", 3), ("per_tensor", 6)])
def test_tied_linears(kind, num_embeddings):
    model = TiedLinears().to(DTYPE)
    hnet = hypernetize(model, init="default", embedding_dim=3, num_embeddings=num_embeddings, layout=kind)
    assert hnet.layout.num_params == 25 + 5 + 5  # the shared 5x5 matrix once

    def hand(p, x):
        w = p["first.weight"]
        return linear(torch.tanh(linear(x, w, p["first.bias"])), w, p["second.bias"])

    x = torch.randn(4, 5, dtype=DTYPE)
    compare(hnet, model, hand, (x,), selected=["first.weight", "first.bias", "second.bias"], kind=kind,
            num_embeddings=num_embeddings, tied={"second.weight": "first.weight"})  # fmt: skip
