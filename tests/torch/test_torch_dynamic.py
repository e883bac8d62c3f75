"""Dynamic torch hypernetworks: per-sample weights generated from a condition.

The reference for every batched call ``hnet(x, condition=c)`` (``c`` of shape ``(B, C)``)
is a Python loop over samples: sample ``i`` runs through the *static* path of the same
hypernetwork, ``hnet(x[i:i+1], condition=c[i])`` (one weight set for a batch of one; for
sequence-first layers the slice is ``x[:, i:i+1]``), and the outputs are concatenated.
Outputs and the gradients of every hypernetwork parameter (and of the condition) are
compared, in float64.

The conditioning module (FiLM by default) starts condition-independent, so every test
perturbs it first: otherwise all samples would get the same weights and a per-sample bug
could not show.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.testing import assert_close

import hypernn
from hypernn import hypernetize
from hypernn.errors import ConditionError, ConditionTypeError, ReservedArgumentError
from hypernn.transform.torch.dynamic import DynamicHypernetizedModule

DTYPE = torch.float64
C = 3  # condition width


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- helpers


def make_hnet(model: nn.Module, *, embedding_dim: int = 4, num_embeddings: int = 6, perturb: bool = True, **options):
    options.setdefault("condition_dim", C)
    hnet = hypernetize(model.to(DTYPE), embedding_dim=embedding_dim, num_embeddings=num_embeddings, **options)
    assert isinstance(hnet, DynamicHypernetizedModule)
    if perturb:
        perturb_conditioning(hnet)
    return hnet


def perturb_conditioning(hnet: nn.Module, scale: float = 0.5) -> None:
    with torch.no_grad():
        for p in hnet.condition_module.parameters():
            p.normal_(0, scale)


def leaves(out: Any) -> List[Optional[torch.Tensor]]:
    if out is None or isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in leaves(item)]


def _slice(value: Any, dim: Optional[int], i: int) -> Any:
    return value if dim is None else value.narrow(dim, i, 1)


def loop_outputs(hnet, args, kwargs, in_dims, kw_dims, condition, out_dims, **call):
    """The reference: sample ``i`` through the static path with condition ``c[i]``."""
    per_sample = []
    for i in range(condition.shape[0]):
        a = [_slice(v, d, i) for v, d in zip(args, in_dims)]
        k = {n: _slice(v, kw_dims.get(n), i) for n, v in kwargs.items()}
        per_sample.append(leaves(hnet(*a, condition=condition[i], **k, **call)))
    merged = []
    for j, dim in enumerate(out_dims):
        if per_sample[0][j] is None:
            assert all(o[j] is None for o in per_sample)
            merged.append(None)
        else:
            merged.append(torch.cat([o[j] for o in per_sample], dim=dim))
    return merged


def check_per_sample(
    hnet: nn.Module,
    args: Sequence[Any],
    kwargs: Optional[Dict[str, Any]] = None,
    *,
    in_dims: Sequence[Optional[int]] = (0,),
    kw_dims: Optional[Dict[str, Optional[int]]] = None,
    out_dims: Sequence[int] = (0,),
    grads: bool = True,
    condition: Optional[torch.Tensor] = None,
) -> List[Optional[torch.Tensor]]:
    """Batched call == loop over samples, for outputs and gradients (of every trainable
    hypernetwork parameter and of a float condition). ``in_dims``/``kw_dims``/``out_dims``:
    where each argument's / output's sample dimension is (``None``: not per sample)."""
    kwargs, kw_dims = dict(kwargs or {}), dict(kw_dims or {})
    if condition is None:
        batch = next(a.shape[d] for a, d in zip(args, in_dims) if d is not None)
        condition = torch.randn(batch, C, dtype=DTYPE)
    condition = condition.detach().requires_grad_(condition.is_floating_point())

    actual = leaves(hnet(*args, condition=condition, **kwargs))
    expected = loop_outputs(hnet, args, kwargs, in_dims, kw_dims, condition, out_dims)
    assert len(actual) == len(expected) == len(out_dims)
    for a, e in zip(actual, expected):
        if e is None:
            assert a is None
        else:
            assert_close(a, e)

    # Not degenerate: the samples really get different weights.
    shared = leaves(hnet(*args, condition=condition[0], **kwargs))
    first = next(i for i, t in enumerate(actual) if t is not None)
    assert not torch.allclose(actual[first], shared[first]), "all samples got the same weights"

    if grads:
        params = [(n, p) for n, p in hnet.named_parameters() if p.requires_grad]
        wrt = [p for _, p in params] + ([condition] if condition.is_floating_point() else [])
        names = [n for n, _ in params] + ["condition"] * condition.is_floating_point()
        cotangents = [None if t is None else torch.randn_like(t) for t in actual]

        def loss(outs):
            return sum((t * c).sum() for t, c in zip(outs, cotangents) if t is not None)

        got = torch.autograd.grad(loss(leaves(hnet(*args, condition=condition, **kwargs))), wrt, allow_unused=True)
        want = torch.autograd.grad(loss(loop_outputs(hnet, args, kwargs, in_dims, kw_dims, condition, out_dims)), wrt,
                                   allow_unused=True)  # fmt: skip
        for name, g, w in zip(names, got, want):
            assert (g is None) == (w is None), name
            if w is not None:
                assert_close(g, w, msg=lambda m, name=name: f"gradient of {name}: {m}")
        for name, g in zip(names, got):
            if name.startswith(("weight_generator", "condition_module")) and name.endswith("weight"):
                assert g is not None and g.abs().sum() > 0, f"degenerate: zero gradient for {name}"
    return actual


def _no_instance_forward(module: nn.Module) -> None:
    """No module keeps the per-sample forward patched onto its instance."""
    patched = [name for name, m in module.named_modules() if "forward" in vars(m)]
    assert not patched, f"modules keep a patched forward: {patched}"


class _Callable:
    """Looks like the hypernetwork to :func:`check_per_sample`, with another call signature."""

    def __init__(self, hnet, call):
        self.hnet, self.call = hnet, call

    def __call__(self, *args, **kwargs):
        return self.call(*args, **kwargs)

    def named_parameters(self):
        return self.hnet.named_parameters()


# ---------------------------------------------------------------- 1. per-sample == loop


def mlp():
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def test_mlp_outputs_and_gradients_equal_the_loop():
    hnet = make_hnet(mlp())
    check_per_sample(hnet, (torch.randn(5, 4, dtype=DTYPE),))


def test_mlp_with_extra_dimensions_and_partial_targets():
    hnet = make_hnet(mlp(), targets=["0.weight", "2.bias"], layout="per_tensor")
    assert set(dict(hnet.named_parameters())) >= {"target_network.0.bias", "target_network.2.weight"}
    check_per_sample(hnet, (torch.randn(4, 2, 3, 4, dtype=DTYPE),))


def test_generated_params_batch_and_generate_params_shapes():
    hnet = make_hnet(mlp())
    x, c = torch.randn(4, 4, dtype=DTYPE), torch.randn(4, C, dtype=DTYPE)
    flat, aux = hnet.generate_params(condition=c)
    assert flat.shape == (4, hnet.layout.generated_size) and aux["embedding"].shape == (4, 6, 4)
    one, aux_one = hnet.generate_params(condition=c[1])
    assert one.shape == (hnet.layout.generated_size,) and aux_one["embedding"].shape == (6, 4)
    assert_close(one, flat[1])
    assert_close(hnet(x, generated_params=flat), hnet(x, condition=c))
    out, params, aux2 = hnet(x, condition=c, has_aux=True)
    assert_close(params, flat)
    assert_close(aux2["embedding"], aux["embedding"])
    # a (B, n) batch of generated vectors: row i for sample i
    for i in range(4):
        assert_close(out[i : i + 1], hnet(x[i : i + 1], generated_params=flat[i]))


class CNN(nn.Module):
    def __init__(self, padding_mode="zeros"):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode=padding_mode)
        self.conv1d = nn.Conv1d(3, 2, 2, stride=2)
        self.head = nn.Linear(2 * 12, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x))  # (B, 3, 5, 5)
        h = self.conv1d(h.flatten(2))  # (B, 2, 12)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_cnn_outputs_and_gradients_equal_the_loop(padding_mode):
    hnet = make_hnet(CNN(padding_mode), num_embeddings=8)
    check_per_sample(hnet, (torch.randn(3, 2, 5, 5, dtype=DTYPE),))


def test_grouped_conv3d_equals_the_loop():
    model = nn.Sequential(nn.Conv3d(4, 4, 2, groups=2), nn.Flatten(), nn.Linear(4 * 8, 2))
    hnet = make_hnet(model)
    check_per_sample(hnet, (torch.randn(3, 4, 3, 3, 3, dtype=DTYPE),))


@pytest.mark.parametrize(
    "kind, num_layers, bidirectional, batch_first, with_state",
    [
        ("LSTM", 1, False, True, False),
        ("LSTM", 2, True, False, True),
        ("LSTM", 2, False, True, True),
        ("LSTM", 1, True, True, False),
        ("GRU", 2, True, True, False),
        ("GRU", 1, False, False, True),
        ("RNN", 2, False, False, False),
    ],
)
def test_recurrent_layers_equal_the_loop(kind, num_layers, bidirectional, batch_first, with_state):
    extra = {"nonlinearity": "relu"} if kind == "RNN" else {}
    layer = getattr(nn, kind)(3, 4, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, **extra)
    hnet = make_hnet(layer, num_embeddings=10)
    B, L = 3, 4
    x = torch.randn(B, L, 3, dtype=DTYPE) if batch_first else torch.randn(L, B, 3, dtype=DTYPE)
    sample = 0 if batch_first else 1
    states = num_layers * (2 if bidirectional else 1)
    n_state = 2 if kind == "LSTM" else 1
    if with_state:  # initial states, sliced at dimension 1 in the loop
        parts = [torch.randn(states, B, 4, dtype=DTYPE) for _ in range(n_state)]

        def call(x, *ps, **kw):
            return hnet(x, tuple(ps) if kind == "LSTM" else ps[0], **kw)

        outs = check_per_sample(_Callable(hnet, call), [x, *parts], in_dims=[sample] + [1] * n_state,
                                out_dims=[sample] + [1] * n_state)  # fmt: skip
    else:
        outs = check_per_sample(hnet, [x], in_dims=[sample], out_dims=[sample] + [1] * n_state)
    assert outs[0].shape == ((B, L) if batch_first else (L, B)) + (4 * (2 if bidirectional else 1),)


class Unrolled(nn.Module):
    """LSTMCell and GRUCell unrolled over time by hand."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTMCell(3, 4)
        self.gru = nn.GRUCell(4, 5)
        self.rnn = nn.RNNCell(5, 2)
        self.head = nn.Linear(2, 2)

    def forward(self, x):  # (B, L, 3)
        state, h2, h3 = None, None, None
        for t in range(x.shape[1]):
            state = self.lstm(x[:, t], state)
            h2 = self.gru(state[0], h2)
            h3 = self.rnn(h2, h3)
        return self.head(h3), state[1]


def test_unrolled_cells_equal_the_loop():
    hnet = make_hnet(Unrolled(), num_embeddings=10)
    check_per_sample(hnet, (torch.randn(3, 4, 3, dtype=DTYPE),), out_dims=(0, 0))


class Tokens(nn.Module):
    def __init__(self, padding_idx=None):
        super().__init__()
        self.embed = nn.Embedding(7, 4, padding_idx=padding_idx)
        self.norm = nn.LayerNorm(4)
        self.norm2 = nn.LayerNorm([3, 4])
        self.out = nn.Linear(4, 2)

    def forward(self, tokens):  # (B, 3)
        return self.out(self.norm2(self.norm(self.embed(tokens))))


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_and_layer_norm_equal_the_loop(padding_idx):
    hnet = make_hnet(Tokens(padding_idx), num_embeddings=8)
    tokens = torch.tensor([[0, 1, 2], [3, 0, 6], [5, 5, 1], [2, 4, 0]])
    check_per_sample(hnet, (tokens,))


def test_group_norm_equals_the_loop():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 9, 2))
    hnet = make_hnet(model)
    check_per_sample(hnet, (torch.randn(4, 2, 5, 5, dtype=DTYPE),))


@pytest.mark.parametrize(
    "batch_first, separate_kv, need_weights, padding, attn_mask, average",
    [
        (True, False, True, False, False, True),
        (False, False, False, True, False, True),
        (True, True, True, True, True, False),
        (False, True, False, False, True, True),
        (True, False, False, True, False, True),
        (False, False, True, True, False, True),
    ],
)
def test_multihead_attention_equals_the_loop(batch_first, separate_kv, need_weights, padding, attn_mask, average):
    E, H, B, L, S = 4, 2, 3, 2, 3
    kdim, vdim = (5, 3) if separate_kv else (E, E)
    mha = nn.MultiheadAttention(E, H, kdim=kdim, vdim=vdim, batch_first=batch_first)
    hnet = make_hnet(mha, num_embeddings=8)
    if separate_kv:
        assert "q_proj_weight" in hnet.selection.names
    shape = (lambda n, d: (B, n, d)) if batch_first else (lambda n, d: (n, B, d))
    q, k, v = (torch.randn(*shape(n, d), dtype=DTYPE) for n, d in ((L, E), (S, kdim), (S, vdim)))
    sample = 0 if batch_first else 1
    kwargs: Dict[str, Any] = {"need_weights": need_weights, "average_attn_weights": average}
    kw_dims: Dict[str, Optional[int]] = {}
    if padding:
        kwargs["key_padding_mask"] = torch.tensor([[False, False, True], [False, False, False], [False, True, True]])
        kw_dims["key_padding_mask"] = 0
    if attn_mask:
        if padding:  # the same mask type as key_padding_mask (torch warns on mixed types)
            kwargs["attn_mask"] = torch.tensor([[False, True, False], [False, False, True]])
        else:
            kwargs["attn_mask"] = torch.tensor([[0.0, -1.0, 0.5], [0.2, 0.0, -0.3]], dtype=DTYPE)
    outs = check_per_sample(hnet, (q, k, v), kwargs, in_dims=(sample,) * 3, kw_dims=kw_dims, out_dims=(sample, 0))
    assert (outs[1] is not None) == need_weights


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mode", ["train", "eval", "eval_no_grad"])
def test_transformer_encoder_layer_equals_the_loop(batch_first, mode):
    layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0, batch_first=batch_first)
    hnet = make_hnet(layer, num_embeddings=12)
    hnet.train(mode == "train")
    B, L = 3, 4
    x = torch.randn(B, L, 4, dtype=DTYPE) if batch_first else torch.randn(L, B, 4, dtype=DTYPE)
    sample = 0 if batch_first else 1
    if mode == "eval_no_grad":
        with torch.no_grad():
            check_per_sample(hnet, (x,), in_dims=(sample,), out_dims=(sample,), grads=False)
    else:
        check_per_sample(hnet, (x,), in_dims=(sample,), out_dims=(sample,))


@pytest.mark.parametrize("targets", [None, ["self_attn.in_proj_weight", "linear1.weight"]])
def test_transformer_fast_path_is_off_during_per_sample_calls(targets):
    """In eval mode without grad, torch's fused encoder-layer kernel would read the layer's
    own weights (absent: generated); with the biases kept it would otherwise be taken."""
    layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0, batch_first=True)
    hnet = make_hnet(layer, num_embeddings=12, targets=targets).eval()
    assert torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad():
        check_per_sample(hnet, (torch.randn(3, 4, 4, dtype=DTYPE),), grads=False)
    assert torch.backends.mha.get_fastpath_enabled()


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_stack_with_padding_mask_equals_the_loop(batch_first):
    layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0, batch_first=batch_first, norm_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=2, norm=nn.LayerNorm(4), enable_nested_tensor=False)
    hnet = make_hnet(encoder, num_embeddings=12)
    hnet.eval()
    B, L = 3, 4
    x = torch.randn(B, L, 4, dtype=DTYPE) if batch_first else torch.randn(L, B, 4, dtype=DTYPE)
    sample = 0 if batch_first else 1
    mask = torch.tensor([[False] * 4, [False, False, True, True], [False, True, False, True]])
    check_per_sample(hnet, (x,), {"src_key_padding_mask": mask}, in_dims=(sample,), kw_dims={"src_key_padding_mask": 0},
                     out_dims=(sample,))  # fmt: skip


class OwnParameter(nn.Module):
    """A custom module using its own parameter: runs under torch.func.vmap."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(4))
        self.inner = nn.Linear(4, 4)

    def forward(self, x, shift=None):
        h = self.inner(x) * self.scale
        return h if shift is None else h + shift


class WithCustom(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.custom = OwnParameter()
        self.last = nn.Linear(4, 2)

    def forward(self, x, shift):
        return self.last(torch.tanh(self.custom(self.first(x), shift=shift)))


def test_custom_module_with_own_parameter_runs_under_vmap_and_equals_the_loop():
    hnet = make_hnet(WithCustom())
    owners = {o.path: o.native for o in hnet._runner.owners}
    assert owners == {"first": True, "custom": False, "last": True}
    x, shift = torch.randn(4, 3, dtype=DTYPE), torch.randn(4, 4, dtype=DTYPE)
    check_per_sample(hnet, (x, shift), in_dims=(0, 0))


def test_custom_module_only_partly_generated():
    hnet = make_hnet(WithCustom(), targets=["custom.scale", "last"])
    assert "target_network.custom.inner.weight" in dict(hnet.named_parameters())
    check_per_sample(hnet, (torch.randn(4, 3, dtype=DTYPE), torch.randn(4, 4, dtype=DTYPE)), in_dims=(0, 0))


class GatedLayer(nn.TransformerEncoderLayer):
    """A subclass with its own parameter: the whole layer runs under vmap (sequence-first)."""

    def __init__(self, batch_first):
        super().__init__(4, 2, dim_feedforward=6, dropout=0.0, batch_first=batch_first)
        self.gate = nn.Parameter(torch.randn(4))

    def forward(self, src, *args, **kwargs):
        return super().forward(src, *args, **kwargs) * self.gate


@pytest.mark.filterwarnings("ignore:There is a performance drop because we have not yet implemented the batching rule")
@pytest.mark.parametrize("batch_first, length", [(False, 5), (False, 3), (True, 3)])
def test_vmap_fallback_inside_a_sequence_first_layer_equals_the_loop(batch_first, length):
    hnet = make_hnet(GatedLayer(batch_first), num_embeddings=12).eval()
    assert [(o.path, o.native) for o in hnet._runner.owners] == [("", False)]
    B = 3  # length 3: the sequence and sample dimensions have the same size
    x = torch.randn(B, length, 4, dtype=DTYPE) if batch_first else torch.randn(length, B, 4, dtype=DTYPE)
    sample = 0 if batch_first else 1
    check_per_sample(hnet, (x,), in_dims=(sample,), out_dims=(sample,))


class TiedTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.out = nn.Linear(4, 5)
        self.out.weight = self.embed.weight

    def forward(self, tokens):
        return self.out(torch.tanh(self.embed(tokens)))


def test_tied_weights_equal_the_loop():
    hnet = make_hnet(TiedTokens())
    assert hnet.layout.slots[0].aliases == ("out.weight",)
    check_per_sample(hnet, (torch.tensor([[0, 1], [2, 3], [4, 0]]),))


class SequenceFirstClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4)  # (L, B, I)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        return self.head(h[-1])  # (B, 4): batch first again


def test_sequence_first_lstm_then_head_equals_the_loop():
    hnet = make_hnet(SequenceFirstClassifier(), num_embeddings=10)
    check_per_sample(hnet, (torch.randn(5, 3, 3, dtype=DTYPE),), in_dims=(1,), out_dims=(0,))


# ---------------------------------------------------------------- 1b. under torch.func transforms


@pytest.mark.parametrize("model", [mlp, WithCustom, lambda: nn.LSTM(4, 3, batch_first=True)], ids=["mlp", "vmap_fallback", "lstm"])
def test_func_grad_of_functional_call_equals_autograd(model):
    hnet = make_hnet(model())
    if isinstance(hnet.target_network, WithCustom):
        x, extra = torch.randn(3, 3, dtype=DTYPE), (torch.randn(3, 4, dtype=DTYPE),)
    elif isinstance(hnet.target_network, nn.LSTM):
        x, extra = torch.randn(3, 2, 4, dtype=DTYPE), ()
    else:
        x, extra = torch.randn(3, 4, dtype=DTYPE), ()
    c = torch.randn(3, C, dtype=DTYPE)
    params = {n: p.detach() for n, p in hnet.named_parameters()}

    def loss(p):
        out = functional_call(hnet, p, (x, *extra), {"condition": c})
        return sum(t.square().sum() for t in leaves(out))

    got = torch.func.grad(loss)(params)
    expected = dict(zip(params, torch.autograd.grad(loss(dict(hnet.named_parameters())), list(hnet.parameters()))))
    assert set(got) == set(expected)
    for name in expected:
        assert_close(got[name], expected[name], msg=lambda m, name=name: f"{name}: {m}")
    assert got["weight_generator.weight"].abs().sum() > 0


@pytest.mark.parametrize("model", [mlp, WithCustom], ids=["native", "vmap_fallback"])
def test_vmap_over_the_batched_call_equals_separate_calls(model):
    hnet = make_hnet(model())
    width = 3 if isinstance(hnet.target_network, WithCustom) else 4
    xs, cs = torch.randn(2, 3, width, dtype=DTYPE), torch.randn(2, 3, C, dtype=DTYPE)
    extra = (torch.randn(2, 3, 4, dtype=DTYPE),) if isinstance(hnet.target_network, WithCustom) else ()
    mapped = torch.func.vmap(lambda x, c, *e: hnet(x, *e, condition=c))(xs, cs, *extra)
    for k in range(2):
        assert_close(mapped[k], hnet(xs[k], *[e[k] for e in extra], condition=cs[k]))
    _no_instance_forward(hnet.target_network)


def test_jacrev_wrt_the_condition_equals_autograd():
    hnet = make_hnet(mlp())
    x, c = torch.randn(3, 4, dtype=DTYPE), torch.randn(3, C, dtype=DTYPE)
    jac = torch.func.jacrev(lambda c: hnet(x, condition=c))(c)  # (3, 3, 3, C)
    cr = c.clone().requires_grad_()
    out = hnet(x, condition=cr)
    rows = [torch.autograd.grad(out.reshape(-1)[j], cr, retain_graph=True)[0] for j in range(out.numel())]
    assert_close(jac, torch.stack(rows).reshape(*out.shape, *c.shape))
    # per-sample: output i depends on condition i only
    assert jac[0, :, 1].abs().sum() == 0 and jac[0, :, 0].abs().sum() > 0


# ---------------------------------------------------------------- 2. conditional batch norm


class ConvBN(nn.Module):
    def __init__(self, momentum=0.3):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3, momentum=momentum)
        self.head = nn.Linear(3 * 9, 2)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.mark.parametrize("momentum", [0.3, None])
def test_conditional_batch_norm_train_matches_hand_computation(momentum):
    hnet = make_hnet(ConvBN(momentum), num_embeddings=8)
    bn = hnet.target_network.bn
    with torch.no_grad():  # non-trivial running stats to start from
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(3)
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    B = 4
    x, c = torch.randn(B, 2, 5, 5, dtype=DTYPE), torch.randn(B, C, dtype=DTYPE)
    out = hnet(x, condition=c)

    flat, _ = hnet.generate_params(condition=c)
    p = hnet.unflatten(flat)
    conv = torch.cat([F.conv2d(x[i : i + 1], p["conv.weight"][i], p["conv.bias"][i]) for i in range(B)])
    mean = conv.mean(dim=(0, 2, 3))  # statistics over the whole batch
    var = conv.var(dim=(0, 2, 3), unbiased=False)
    normalized = (conv - mean[:, None, None]) / torch.sqrt(var[:, None, None] + bn.eps)
    expected = []
    for i in range(B):
        h = normalized[i] * p["bn.weight"][i][:, None, None] + p["bn.bias"][i][:, None, None]
        expected.append(torch.relu(h).flatten() @ p["head.weight"][i].T + p["head.bias"][i])
    assert_close(out, torch.stack(expected))

    n = conv.numel() / conv.shape[1]
    factor = 1 / 4 if momentum is None else momentum  # cumulative average: 1 / num_batches_tracked
    assert int(bn.num_batches_tracked) == 4
    assert_close(bn.running_mean, (1 - factor) * mean0 + factor * mean.detach())
    assert_close(bn.running_var, (1 - factor) * var0 + factor * var.detach() * n / (n - 1))

    # gradients (through the batch statistics too) equal the hand computation's
    params = dict(hnet.named_parameters())
    cotangent = torch.randn_like(out)
    got = dict(zip(params, torch.autograd.grad((out * cotangent).sum(), list(params.values()))))
    want = torch.autograd.grad((torch.stack(expected) * cotangent).sum(), list(params.values()))
    for (name, g), w in zip(got.items(), want):
        assert_close(g, w, msg=lambda m, name=name: f"gradient of {name}: {m}")
    assert got["condition_module.to_scale_shift.weight"].abs().sum() > 0


def test_conditional_batch_norm_eval_equals_the_loop_and_leaves_stats():
    hnet = make_hnet(ConvBN(), num_embeddings=8)
    bn = hnet.target_network.bn
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    stats = {k: v.clone() for k, v in bn.state_dict().items()}
    hnet.eval()
    check_per_sample(hnet, (torch.randn(4, 2, 5, 5, dtype=DTYPE),))
    for k, v in bn.state_dict().items():
        assert torch.equal(v, stats[k]), k


def test_batch_norm_without_running_stats_uses_batch_statistics_in_eval():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    hnet = make_hnet(model).eval()
    x, c = torch.randn(5, 3, dtype=DTYPE), torch.randn(5, C, dtype=DTYPE)
    p = hnet.unflatten(hnet.generate_params(condition=c)[0])
    h = torch.einsum("bi,boi->bo", x, p["0.weight"]) + p["0.bias"]
    normalized = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)
    assert_close(hnet(x, condition=c), normalized * p["1.weight"] + p["1.bias"])


# ---------------------------------------------------------------- 3. dropout


class DropoutCustom(nn.Module):
    """Dropout inside a module that runs under vmap (own parameter)."""

    def __init__(self, p):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3))
        self.p = p

    def forward(self, x):
        return F.dropout(x @ self.weight.T, self.p, self.training)


@pytest.mark.parametrize("model", [lambda p: nn.Sequential(nn.Linear(3, 8), nn.Dropout(p)), DropoutCustom],
                         ids=["nn.Dropout", "vmap_fallback"])  # fmt: skip
def test_dropout_masks_differ_per_sample_in_train_and_eval_equals_the_loop(model):
    hnet = make_hnet(model(0.5))
    B = 6
    x = torch.randn(1, 3, dtype=DTYPE).expand(B, 3)
    c = torch.randn(1, C, dtype=DTYPE).expand(B, C)
    out = hnet(x, condition=c)  # train mode: same input and condition for every sample
    zeros = out == 0
    assert zeros.any() and not zeros.all()
    assert any(not torch.equal(zeros[0], zeros[i]) for i in range(1, B)), "the same dropout mask for every sample"
    kept = ~zeros
    reference = hnet.eval()(x[:1], condition=c[0])[0]
    assert_close(out[kept], (2 * reference.expand(B, -1))[kept])  # kept values scaled by 1 / (1 - p)
    check_per_sample(hnet, (torch.randn(B, 3, dtype=DTYPE),))


def test_recurrent_layer_dropout_between_layers_in_train_mode_runs():
    lstm = nn.LSTM(3, 4, num_layers=2, dropout=0.5, batch_first=True)
    hnet = make_hnet(lstm, num_embeddings=10)
    x, c = torch.randn(3, 5, 3, dtype=DTYPE), torch.randn(3, C, dtype=DTYPE)
    a, b = hnet(x, condition=c)[0], hnet(x, condition=c)[0]
    assert not torch.allclose(a, b)  # dropout active
    hnet.eval()
    assert_close(hnet(x, condition=c)[0], hnet(x, condition=c)[0])


# ---------------------------------------------------------------- 4. task ids


def test_task_ids_equal_the_loop_with_scalar_ids():
    hnet = make_hnet(mlp(), num_conditions=5, condition_dim=None, embedding_dim=4)
    assert hnet.condition_dim == 4 and hnet.condition_embedding.weight.shape == (5, 4)
    x, ids = torch.randn(4, 4, dtype=DTYPE), torch.tensor([3, 0, 3, 4])
    x[2] = x[0]  # same input, same id: same output
    out = hnet(x, condition=ids)
    for i in range(4):
        assert_close(out[i : i + 1], hnet(x[i : i + 1], condition=ids[i]))
        assert_close(out[i : i + 1], hnet(x[i : i + 1], condition=int(ids[i])))
    assert_close(out[0], out[2])
    assert not torch.allclose(out[:1], hnet(x[:1], condition=ids[1]))
    # gradients reach the condition embeddings of the used ids only
    out.square().sum().backward()
    grads = hnet.condition_embedding.weight.grad
    assert grads[[0, 3, 4]].abs().sum(1).gt(0).all() and grads[[1, 2]].abs().sum() == 0
    check_per_sample(hnet, (x,), condition=ids)


def test_task_ids_with_explicit_condition_dim():
    hnet = make_hnet(mlp(), num_conditions=3, condition_dim=7)
    assert hnet.condition_embedding.weight.shape == (3, 7)
    flat, aux = hnet.generate_params(condition=torch.tensor([2, 1]))
    assert flat.shape == (2, hnet.layout.generated_size)


@pytest.mark.parametrize("ids, error, message", [
    (torch.tensor([0, 5]), ConditionError, r"must lie in \[0, 5\); got values from 0 to 5"),
    (torch.tensor([-1, 2]), ConditionError, r"must lie in \[0, 5\)"),
    (7, ConditionError, r"must lie in \[0, 5\)"),
    (torch.tensor([0.0, 1.0]), ConditionTypeError, "must hold integer ids"),
    (torch.tensor([True, False]), ConditionTypeError, "must hold integer ids"),
    (torch.tensor([[0, 1]]), ConditionError, r"shape \(\) or \(B,\)"),
])  # fmt: skip
def test_bad_task_ids_are_refused(ids, error, message):
    hnet = make_hnet(mlp(), num_conditions=5)
    with pytest.raises(error, match=message):
        hnet(torch.randn(2, 4, dtype=DTYPE), condition=ids)


# ---------------------------------------------------------------- 5. conditioning variants


def test_film_starts_condition_independent_and_learns_dependence():
    hnet = make_hnet(mlp(), perturb=False)
    assert type(hnet.condition_module).__name__ == "FiLM"
    x = torch.randn(4, 4, dtype=DTYPE)
    c1, c2 = torch.randn(4, C, dtype=DTYPE), torch.randn(4, C, dtype=DTYPE)
    assert_close(hnet(x, condition=c1), hnet(x, condition=c2), rtol=0, atol=0)
    assert_close(hnet(x, condition=c1), hnet(x, condition=c2[0]))  # batched vs one weight set: to rounding
    # ... but it is trainable: the gradient reaches FiLM's weights from the start
    hnet(x, condition=c1).square().sum().backward()
    assert hnet.condition_module.to_scale_shift.weight.grad.abs().sum() > 0
    perturb_conditioning(hnet)
    assert not torch.allclose(hnet(x, condition=c1), hnet(x, condition=c2))
    check_per_sample(hnet, (x,), condition=c1)


def test_concat_conditioning_widens_the_generator_input():
    hnet = make_hnet(mlp(), embedding_dim=4, condition_factory=hypernn.conditioning.concat(projection_dim=3))
    assert hnet.condition_module.output_dim == 7 == hnet.weight_generator.in_features
    flat, aux = hnet.generate_params(condition=torch.randn(2, C, dtype=DTYPE))
    assert aux["embedding"].shape == (2, 6, 7)
    assert_close(aux["embedding"][:, :, :4], hnet.embedding_module.weight.expand(2, 6, 4))
    check_per_sample(hnet, (torch.randn(4, 4, dtype=DTYPE),))
    default = make_hnet(mlp(), embedding_dim=4, condition_factory=hypernn.conditioning.concat())
    assert default.weight_generator.in_features == 8


def test_recurrent_conditioning_threads_its_state():
    hnet = make_hnet(mlp(), num_embeddings=6, condition_factory=hypernn.conditioning.recurrent())
    cell = hnet.condition_module.rnn_cell
    B = 4
    x, c1, c2 = torch.randn(B, 4, dtype=DTYPE), torch.randn(B, C, dtype=DTYPE), torch.randn(B, C, dtype=DTYPE)
    flat1, aux1 = hnet.generate_params(condition=c1)
    h1 = aux1["hidden_state"]
    assert h1.shape == (B, 6)
    assert_close(h1, cell(c1, torch.zeros(B, 6, dtype=DTYPE)))
    assert_close(aux1["embedding"], hnet.embedding_module.weight * h1.unsqueeze(-1))
    out2, flat2, aux2 = hnet(x, condition=c2, generate_params_kwargs={"hidden_state": h1}, has_aux=True)
    assert_close(aux2["hidden_state"], cell(c2, h1))
    assert not torch.allclose(flat2, hnet.generate_params(condition=c2)[0])  # the state matters
    # batched == loop, with each sample's own state
    for i in range(B):
        o, _, a = hnet(x[i : i + 1], condition=c2[i], generate_params_kwargs={"hidden_state": h1[i]}, has_aux=True)
        assert a["hidden_state"].shape == (6,)
        assert_close(o, out2[i : i + 1])
        assert_close(a["hidden_state"], aux2["hidden_state"][i])
    # gradients through two steps reach the cell
    out2.square().sum().backward()
    assert cell.weight_ih.grad.abs().sum() > 0 and cell.weight_hh.grad.abs().sum() > 0
    check_per_sample(hnet, (x,), condition=c1)


class AddProjection(nn.Module):
    def __init__(self, condition_dim, num_embeddings, embedding_dim):
        super().__init__()
        self.proj = nn.Linear(condition_dim, embedding_dim)
        self.output_dim = embedding_dim

    def forward(self, embedding, condition, temperature: float = 1.0):
        shift = self.proj(condition).unsqueeze(-2) / temperature
        return embedding + shift, {"shift": shift}


def test_custom_condition_factory_callable():
    calls = []

    def factory(condition_dim, num_embeddings, embedding_dim):
        calls.append((condition_dim, num_embeddings, embedding_dim))
        return AddProjection(condition_dim, num_embeddings, embedding_dim)

    hnet = make_hnet(mlp(), embedding_dim=4, num_embeddings=6, condition_factory=factory)
    assert calls == [(C, 6, 4)] and isinstance(hnet.condition_module, AddProjection)
    c = torch.randn(3, C, dtype=DTYPE)
    flat, aux = hnet.generate_params(condition=c, temperature=2.0)
    assert set(aux) == {"embedding", "shift"} and aux["shift"].shape == (3, 1, 4)
    assert not torch.allclose(flat, hnet.generate_params(condition=c)[0])
    with pytest.raises(TypeError, match=r"\['hidden_state'\] are not taken by AddProjection; it takes condition, temperature"):
        hnet.generate_params(condition=c, hidden_state=None)
    check_per_sample(hnet, (torch.randn(3, 4, dtype=DTYPE),), condition=c)


# ---------------------------------------------------------------- 6. errors


def test_condition_errors():
    hnet = make_hnet(mlp())
    x = torch.randn(3, 4, dtype=DTYPE)
    with pytest.raises(ConditionError, match="needs a condition"):
        hnet(x)
    with pytest.raises(ConditionError, match=r"must have shape \(3,\) .* or \(B, 3\) .*got \(3, 4\)"):
        hnet(x, condition=torch.randn(3, 4, dtype=DTYPE))
    with pytest.raises(ConditionError, match=r"got \(1, 3, 3\)"):
        hnet(x, condition=torch.randn(1, 3, C, dtype=DTYPE))
    with pytest.raises(ConditionError, match=r"got \(\)"):
        hnet(x, condition=torch.tensor(1.0, dtype=DTYPE))
    with pytest.raises(ConditionTypeError, match="floating-point tensor of width condition_dim=3; got torch.int64"):
        hnet(x, condition=torch.tensor([1, 2, 3]))
    with pytest.raises(ConditionTypeError, match="got list"):
        hnet(x, condition=[1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="pass the condition once"):
        hnet(x, condition=torch.randn(C, dtype=DTYPE), generate_params_kwargs={"condition": torch.randn(C, dtype=DTYPE)})


def _randn(*shape):
    return lambda: torch.randn(*shape, dtype=DTYPE)


@pytest.mark.parametrize("model, make_x, layer, options", [
    (mlp, _randn(4, 4), "nn.Linear", {}),
    (mlp, _randn(1, 4), "nn.Linear", {}),  # no silent broadcasting of one input row
    (CNN, _randn(4, 2, 5, 5), "Conv2d", {}),
    (lambda: nn.LSTM(4, 3), _randn(2, 4, 4), "nn.LSTM", {}),  # sequence-first: (L, B, I)
    (WithCustom, _randn(4, 3), "nn.Linear", {}),
    (lambda: nn.Sequential(OwnParameter()), _randn(4, 4), r"OwnParameter \(run under torch.func.vmap\)", {}),
    (lambda: nn.Sequential(nn.BatchNorm1d(4)), _randn(4, 4), "BatchNorm1d", {}),
    (lambda: nn.Sequential(nn.GroupNorm(2, 4)), _randn(4, 4, 2), "nn.GroupNorm", {}),
    (lambda: nn.Sequential(nn.LayerNorm(4)), _randn(4, 4), "nn.LayerNorm", {}),
    (lambda: nn.Sequential(nn.Embedding(5, 2)), lambda: torch.tensor([[1], [2], [3], [4]]), "nn.Embedding", {}),
    (lambda: nn.MultiheadAttention(4, 2, batch_first=True), _randn(4, 2, 4), "nn.MultiheadAttention", {}),
    # only the biases generated (the layer's weight shared): still checked
    (lambda: nn.Sequential(nn.Linear(4, 2)), _randn(4, 4), "nn.Linear", {"targets": ["0.bias"]}),
    (lambda: nn.Sequential(nn.Conv1d(4, 2, 1)), _randn(4, 4, 3), "Conv1d", {"targets": ["0.bias"]}),
])  # fmt: skip
def test_condition_batch_must_match_the_input_batch(model, make_x, layer, options):
    hnet = make_hnet(model(), **options)
    x = make_x()
    extra = (torch.randn(x.shape[0], 4, dtype=DTYPE),) if isinstance(hnet.target_network, WithCustom) else ()
    if isinstance(hnet.target_network, nn.MultiheadAttention):
        extra = (x, x)
    with pytest.raises(ConditionError, match=f"per-sample weights for 3 samples, but {layer} received an input of shape"):
        hnet(x, *extra, condition=torch.randn(3, C, dtype=DTYPE))
    _no_instance_forward(hnet.target_network)


class TakesCondition(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x, condition):
        return self.lin(x) * condition


def test_model_taking_condition_needs_condition_keyword_false():
    with pytest.raises(ReservedArgumentError, match=r"already takes `condition`.*condition_keyword=False"):
        hypernetize(TakesCondition(), embedding_dim=3, num_embeddings=4, condition_dim=C)
    hnet = make_hnet(TakesCondition(), condition_keyword=False)
    x, m, c = torch.randn(3, 4, dtype=DTYPE), torch.randn(3, 2, dtype=DTYPE), torch.randn(3, C, dtype=DTYPE)
    with pytest.raises(ConditionError, match="needs a condition"):
        hnet(x, condition=m)  # `condition` went to the model; the hypernetwork got none
    out = hnet(x, condition=m, generate_params_kwargs={"condition": c})
    flat, _ = hnet.generate_params(condition=c)
    assert_close(out, hnet(x, m, generated_params=flat))
    for i in range(3):
        expected = hnet(x[i : i + 1], condition=m[i : i + 1], generate_params_kwargs={"condition": c[i]})
        assert_close(out[i : i + 1], expected)
    assert not torch.allclose(out, hnet(x, condition=2 * m, generate_params_kwargs={"condition": c}))


class CountsInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 4))
        self.register_buffer("running", torch.zeros(2))

    def forward(self, x):
        out = x @ self.weight.T
        self.running.mul_(0.9).add_(0.1 * out.mean(0))
        return out


def test_layer_unsupported_under_vmap_raises_condition_error():
    hnet = make_hnet(CountsInPlace())
    x = torch.randn(3, 4, dtype=DTYPE)
    with pytest.raises(ConditionError, match=r"CountsInPlace run under torch.func.vmap, which failed: .*not supported in dynamic mode"):
        hnet(x, condition=torch.randn(3, C, dtype=DTYPE))
    assert "forward" not in vars(hnet.target_network)
    hnet(x, condition=torch.randn(C, dtype=DTYPE))  # one weight set: the static path works


def test_packed_sequence_into_per_sample_lstm_is_refused():
    hnet = make_hnet(nn.LSTM(3, 4, batch_first=True), num_embeddings=8)
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(2, 5, 3, dtype=DTYPE), [5, 3], batch_first=True)
    with pytest.raises(ConditionError, match="PackedSequence"):
        hnet(packed, condition=torch.randn(2, C, dtype=DTYPE))
    out, _ = hnet(packed, condition=torch.randn(C, dtype=DTYPE))  # static path: fine
    assert isinstance(out, nn.utils.rnn.PackedSequence)


@pytest.mark.parametrize("model, options, message", [
    (lambda: nn.LSTM(3, 4, proj_size=2), {}, "proj_size"),
    (lambda: nn.MultiheadAttention(4, 2, add_bias_kv=True), {}, "add_bias_kv"),  # bias_k generated too
    (lambda: nn.MultiheadAttention(4, 2, add_bias_kv=True), {"exclude": ["bias_k", "bias_v"]}, "add_bias_kv"),
    (lambda: nn.MultiheadAttention(4, 2, add_zero_attn=True), {}, "add_zero_attn"),
    (lambda: nn.Embedding(5, 3, max_norm=1.0), {}, "max_norm"),
])  # fmt: skip
def test_unsupported_layer_options_raise_condition_error(model, options, message):
    hnet = make_hnet(model(), **options)
    module = hnet.target_network
    if isinstance(module, nn.Embedding):
        args = (torch.tensor([[0, 1], [2, 3]]),)
    elif isinstance(module, nn.MultiheadAttention):
        args = (torch.randn(2, 2, 4, dtype=DTYPE),) * 3
    else:
        args = (torch.randn(2, 2, 3, dtype=DTYPE),)
    with pytest.raises(ConditionError, match=message):
        hnet(*args, condition=torch.randn(2, C, dtype=DTYPE))
    _no_instance_forward(module)
    if not isinstance(module, nn.Embedding):  # (max_norm renormalises a generated view in place: fails statically too)
        hnet(*args, condition=torch.randn(C, dtype=DTYPE))  # one weight set for the batch: the static path


def test_materialize_needs_one_condition():
    hnet = make_hnet(CNN())
    x = torch.randn(3, 2, 5, 5, dtype=DTYPE)
    with pytest.raises(ConditionError, match="materialize needs one condition"):
        hnet.materialize(condition=torch.randn(2, C, dtype=DTYPE))
    c = torch.randn(C, dtype=DTYPE)
    plain = hnet.materialize(condition=c)
    assert type(plain) is CNN and not isinstance(plain, DynamicHypernetizedModule)
    assert_close(plain(x), hnet(x, condition=c))
    ids_hnet = make_hnet(mlp(), num_conditions=4)
    y = torch.randn(2, 4, dtype=DTYPE)
    assert_close(ids_hnet.materialize(condition=2)(y), ids_hnet(y, condition=torch.tensor([2, 2])))
    with pytest.raises(ConditionError, match="materialize needs one condition"):
        ids_hnet.materialize(condition=torch.tensor([1, 2]))


def test_materialize_lstm_with_one_condition():
    hnet = make_hnet(nn.LSTM(3, 4, num_layers=2), num_embeddings=8)
    x, c = torch.randn(5, 2, 3, dtype=DTYPE), torch.randn(C, dtype=DTYPE)
    plain = hnet.materialize(condition=c)
    assert_close(plain(x)[0], hnet(x, condition=c)[0])
    assert_close(plain(x)[0], hnet(x, condition=c.expand(2, C))[0])


# ---------------------------------------------------------------- 7. no Python loop over samples


class CountOps(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: Dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _model_and_input(kind: str, batch: int):
    if kind == "mlp":
        return mlp(), (torch.randn(batch, 4, dtype=DTYPE),)
    if kind == "cnn_bn":
        return ConvBN(), (torch.randn(batch, 2, 5, 5, dtype=DTYPE),)
    if kind == "lstm":
        return nn.LSTM(3, 4, num_layers=2, bidirectional=True), (torch.randn(3, batch, 3, dtype=DTYPE),)
    if kind == "transformer":
        layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0)
        return layer, (torch.randn(3, batch, 4, dtype=DTYPE),)
    if kind == "cells":
        return Unrolled(), (torch.randn(batch, 3, 3, dtype=DTYPE),)
    assert kind == "vmap_fallback"
    return WithCustom(), (torch.randn(batch, 3, dtype=DTYPE), torch.randn(batch, 4, dtype=DTYPE))


@pytest.mark.parametrize("kind", ["mlp", "cnn_bn", "lstm", "transformer", "cells", "vmap_fallback"])
def test_no_python_loop_over_samples(kind):
    """The torch ops run, and the owner modules' calls, do not grow with the batch size."""
    counts = []
    for batch in (2, 7):
        torch.manual_seed(0)
        model, args = _model_and_input(kind, batch)
        hnet = make_hnet(model, num_embeddings=10)
        calls: Dict[str, int] = {}
        for name, module in hnet.target_network.named_modules():
            module.register_forward_hook(lambda m, a, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
        with CountOps() as ops:
            hnet(*args, condition=torch.randn(batch, C, dtype=DTYPE))
        counts.append((calls, ops.calls))
    (calls2, ops2), (calls7, ops7) = counts
    assert calls2 == calls7 and ops2 == ops7
    native = {o.path for o in hnet._runner.owners if o.native}
    assert native
    for path in native:  # once per call (the unrolled cells: once per time step)
        assert calls7[path] == (3 if kind == "cells" and path != "head" else 1), path
    if kind == "mlp":  # one batched matmul per Linear
        assert ops7.get("bmm", 0) + ops7.get("baddbmm", 0) == 2


# ---------------------------------------------------------------- 8. the user's model and global state


class Fails(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.custom = OwnParameter()

    def forward(self, x, fail=False):
        h = self.custom(self.first(x))
        if fail:
            raise RuntimeError("boom inside the model")
        return h


@pytest.mark.parametrize("fast_path", [True, False])
def test_users_model_unchanged_and_state_restored_even_after_errors(fast_path):
    model = nn.ModuleDict({"f": Fails(), "t": nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0)}).to(DTYPE)
    before = copy.deepcopy(model.state_dict())
    names = [n for n, _ in model.named_parameters()]

    class Both(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, fail=False):
            h = self.inner["f"](x, fail=fail)
            return self.inner["t"](h.unsqueeze(0))

    wrapper = Both(model)
    hnet = make_hnet(wrapper, num_embeddings=12)
    x, c = torch.randn(3, 4, dtype=DTYPE), torch.randn(3, C, dtype=DTYPE)
    previous = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(fast_path)
        hnet(x, condition=c).sum().backward()
        assert torch.backends.mha.get_fastpath_enabled() is fast_path
        _no_instance_forward(hnet.target_network)
        with pytest.raises(RuntimeError, match="boom inside the model"):
            hnet(x, fail=True, condition=c)
        assert torch.backends.mha.get_fastpath_enabled() is fast_path
        _no_instance_forward(hnet.target_network)
        with pytest.raises(ConditionError):  # raised by hypernn inside the model (batch mismatch)
            hnet(x[:2], condition=c)
        assert torch.backends.mha.get_fastpath_enabled() is fast_path
        _no_instance_forward(hnet.target_network)
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
    # the user's model: same parameters, same values, no patched forwards, no gradients
    assert [n for n, _ in model.named_parameters()] == names
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    _no_instance_forward(wrapper)
    # and it still runs as before
    wrapper(x)
    # the hypernetwork still works after the errors
    out = hnet(x, condition=c)
    assert out.shape == (1, 3, 4)


# ---------------------------------------------------------------- 9. decorator form


def test_decorator_form_with_condition_dim():
    @hypernetize(embedding_dim=4, num_embeddings=6, condition_dim=C)
    class Net(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc = nn.Linear(width, 2)
            self.norm = nn.LayerNorm(2)

        def forward(self, x):
            return self.norm(self.fc(x))

    net = Net(4).to(DTYPE)
    assert isinstance(net, Net) and isinstance(net, DynamicHypernetizedModule)
    assert type(net.target_network) is Net.__wrapped__
    perturb_conditioning(net)
    check_per_sample(net, (torch.randn(3, 4, dtype=DTYPE),))
    with pytest.raises(ConditionError, match="needs a condition"):
        net(torch.randn(3, 4, dtype=DTYPE))

    @hypernetize(embedding_dim=4, num_embeddings=6, num_conditions=3)
    class Tasks(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    tasks = Tasks()
    assert tasks(torch.randn(2, 4), condition=torch.tensor([0, 2])).shape == (2, 2)


class _SequenceFirstThenHead(nn.Module):
    """A sequence-first LSTM whose (L, B, H) output goes to a plain Linear head."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.lstm(x)[0])


def test_ambiguous_sample_dimension_is_refused_not_guessed():
    torch.manual_seed(0)
    hnet = hypernetize(_SequenceFirstThenHead(), embedding_dim=4, num_embeddings=8, condition_dim=2, targets=["head"])
    with pytest.raises(ConditionError, match=r"Linear: the model has sequence-first layers .* shape \(4, 4, 4\), whose first two dimensions are equal"):
        hnet(torch.randn(4, 4, 3), condition=torch.randn(4, 2))
    with pytest.raises(ConditionError, match=r"batch dimension 0 must be 4"):  # (L=5, B=4): a clear mismatch
        hnet(torch.randn(5, 4, 3), condition=torch.randn(4, 2))


# ---------------------------------------------------------------- torch.compile


def _compiled_matches_eager(hnet: nn.Module, *args: Any, condition: torch.Tensor) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(hnet, fullgraph=True)
    out = compiled(*args, condition=condition)
    assert_close(out, hnet(*args, condition=condition))
    params = [p for p in hnet.parameters()]
    got = torch.autograd.grad(out.square().sum(), params)
    want = torch.autograd.grad(hnet(*args, condition=condition).square().sum(), params)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.slow
def test_per_sample_cnn_with_batch_norm_compiles_fullgraph_and_matches_eager():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    hnet = make_hnet(model)
    _compiled_matches_eager(hnet, torch.randn(6, 3, 8, 8, dtype=DTYPE), condition=torch.randn(6, C, dtype=DTYPE))


@pytest.mark.slow
def test_per_sample_transformer_compiles_in_training_and_in_inference():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    hnet = make_hnet(layer)
    x, c = torch.randn(4, 5, 8, dtype=DTYPE), torch.randn(4, C, dtype=DTYPE)
    _compiled_matches_eager(hnet, x, condition=c)
    hnet.eval()
    torch._dynamo.reset()
    with torch.no_grad():
        loop = torch.cat([hnet(x[i : i + 1], condition=c[i]) for i in range(4)])
        assert_close(torch.compile(hnet)(x, condition=c), loop)
