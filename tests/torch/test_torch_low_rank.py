"""Low-rank deltas (``low_rank=r``) on torch: ``W0 + scale * A @ B`` with ``W0`` frozen.

The reference is the math written out: ``A``, ``B`` cut from the generated vector by hand
(offsets from the factor shapes), ``x @ (W0 + s A B).T + b`` for a Linear and
``F.conv2d(x, W0 + s (A B).reshape(W0.shape))`` for a convolution; outputs and gradients of
every trainable parameter are compared.
"""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import hypernn
from hypernn import hypernetize
from hypernn.errors import ConfigurationError, SelectionError
from hypernn.transform.torch.low_rank import LowRankDelta

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 16, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.tanh(self.fc1(h)))


def hand_convnet(model, factors, scale, x):
    def weight(name):
        w0 = model.get_parameter(name)
        a, b = factors[name]
        return w0 + scale * (a @ b).reshape(w0.shape)

    h = torch.relu(F.conv2d(x, weight("conv.weight"), model.conv.bias, padding=1)).flatten(1)
    h = torch.tanh(h @ weight("fc1.weight").T + model.fc1.bias)
    return h @ weight("fc2.weight").T + model.fc2.bias


def hand_factors(flat, model, names, rank):
    """Cut ``A (out, r)``, ``B (r, in)`` for each weight from the global-layout vector."""
    factors, offset = {}, 0
    for name in names:
        shape = model.get_parameter(name).shape
        out, fan = shape[0], math.prod(shape[1:])
        a = flat[offset : offset + out * rank].reshape(out, rank)
        offset += out * rank
        b = flat[offset : offset + rank * fan].reshape(rank, fan)
        offset += rank * fan
        factors[name] = (a, b)
    return factors


WEIGHTS = ["conv.weight", "fc1.weight", "fc2.weight"]


@pytest.mark.parametrize("warm_start", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_forward_and_gradients_equal_the_hand_written_low_rank_math(scale, warm_start):
    model = ConvNet().to(DTYPE)
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=9, low_rank=2, low_rank_scale=scale, warm_start=warm_start)
    assert hnet.selection.names == tuple(WEIGHTS)
    assert [s.name for s in hnet.layout.slots] == [f"{w}.{f}" for w in WEIGHTS for f in "AB"]
    x = torch.randn(5, 2, 4, 4, dtype=DTYPE)
    params = [p for p in hnet.parameters() if p.requires_grad]

    out, flat, _ = hnet(x, has_aux=True)
    target = hnet.target_network  # W0 (equal to the model's weights) and the trainable biases
    assert all(torch.equal(target.get_parameter(n), model.get_parameter(n)) for n in WEIGHTS)
    expected = hand_convnet(target, hand_factors(flat, target, WEIGHTS, 2), scale, x)
    assert_close(out, expected)
    cotangent = torch.randn_like(out)
    got = torch.autograd.grad((out * cotangent).sum(), params, retain_graph=True)
    want = torch.autograd.grad((expected * cotangent).sum(), params)
    for g, w in zip(got, want):
        assert_close(g, w)
    assert all(g.abs().sum() > 0 for g in got[:3]), "gradients reach the embedding and generator"


def test_factored_linear_never_builds_the_full_matrix():
    model = ConvNet()
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=9, low_rank=2)
    flat, _ = hnet.generate_params()
    tensors = hnet.target_tensors(flat)
    assert sorted(tensors) == ["conv.weight", "fc1.lora_A", "fc1.lora_B", "fc2.lora_A", "fc2.lora_B"]
    assert tensors["fc1.lora_A"].shape == (12, 2) and tensors["fc1.lora_B"].shape == (2, 96)
    hooks = [h for h in hnet.target_network.fc1._forward_hooks.values() if isinstance(h, LowRankDelta)]
    assert len(hooks) == 1
    assert hnet.target_network.conv._forward_hooks == {}  # convolutions get the merged weight


def test_w0_is_frozen_saved_moved_and_untouched_by_training():
    model = ConvNet()
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=9, low_rank=2)
    state = hnet.state_dict()
    for name in WEIGHTS:
        w0 = hnet.target_network.get_parameter(name)
        assert not w0.requires_grad and torch.equal(w0, model.get_parameter(name))
        assert w0 is not model.get_parameter(name)
        assert torch.equal(state["target_network." + name], w0)
    assert model.fc1.weight.requires_grad, "the user's model keeps its trainable weights"
    before = {n: hnet.target_network.get_parameter(n).clone() for n in WEIGHTS}
    optimizer = torch.optim.SGD([p for p in hnet.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(4, 2, 4, 4)
    for _ in range(3):
        loss = hnet(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name in WEIGHTS:
        assert torch.equal(hnet.target_network.get_parameter(name), before[name])
        assert hnet.target_network.get_parameter(name).grad is None
    hnet.to(DTYPE)
    assert hnet.target_network.fc1.weight.dtype == DTYPE and not hnet.target_network.fc1.weight.requires_grad
    assert hnet(x.to(DTYPE)).dtype == DTYPE


def test_warm_start_is_the_default_with_low_rank_and_training_moves_away():
    model = ConvNet()
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=9, low_rank=3)
    assert hnet.warm_start
    x, y = torch.randn(8, 2, 4, 4), torch.randint(0, 3, (8,))
    assert_close(hnet(x), model(x))
    factors = hnet.unflatten(hnet.generate_params()[0])
    for name in WEIGHTS:
        assert factors[name + ".A"].abs().max() < 1e-6  # zero up to float32 rounding: the delta starts at 0
        assert factors[name + ".B"].std() > 0
    optimizer = torch.optim.Adam([p for p in hnet.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(hnet(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_without_warm_start_the_delta_starts_at_the_layers_own_init_scale():
    model = nn.Sequential(nn.Linear(256, 128))
    hnet = hypernetize(model, embedding_dim=8, num_embeddings=32, low_rank=4, warm_start=False)
    merged = hnet.generated_state_dict()["0.weight"]
    delta = merged - model[0].weight
    init_std = 1 / math.sqrt(3 * 256)
    assert abs(delta.std().item() / init_std - 1) < 0.25


def test_generated_parameter_counts():
    model = ConvNet()
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=9, low_rank=2)
    counts = {w.name: w.factor_size for w in hnet.low_rank_weights}
    assert counts == {"conv.weight": 2 * (6 + 18), "fc1.weight": 2 * (12 + 96), "fc2.weight": 2 * (3 + 12)}
    assert hnet.layout.num_params == sum(counts.values())
    summary = hnet.summary()
    assert summary.generated_values == sum(counts.values())
    assert summary.replaced_values == 6 * 18 + 12 * 96 + 3 * 12
    assert summary.target_params == sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in hnet.parameters() if p.requires_grad)
    assert summary.hypernetwork_params == trainable
    assert summary.frozen_params == summary.replaced_values + hnet.layout.generated_size  # W0 + warm-start base
    assert "low_rank=2" in str(summary) and "replacing 1,296 weight values" in str(summary)


def test_materialize_merges_the_deltas_into_a_plain_model():
    model = ConvNet()
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=9, low_rank=2, warm_start=False)
    plain = hypernn.materialize(hnet)
    x = torch.randn(3, 2, 4, 4)
    assert type(plain) is ConvNet
    assert_close(plain(x), hnet(x))
    assert sorted(plain.state_dict()) == sorted(model.state_dict())
    assert all(p.requires_grad for p in plain.parameters())
    for layer in plain.modules():
        assert not any(isinstance(h, LowRankDelta) for h in layer._forward_hooks.values())
        assert "lora_A" not in layer._parameters and "lora_B" not in layer._parameters
    with torch.no_grad():
        plain.fc1.weight.zero_()
    assert not torch.allclose(plain(x), hnet(x)), "independent of the hypernetwork"


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_tied_and_attention_weights_get_the_merged_weight():
    tied = Tied().to(DTYPE)
    hnet = hypernetize(tied, embedding_dim=3, num_embeddings=4, low_rank=2, warm_start=False)
    assert [a.factored for a in hnet._adapted] == [False]
    x = torch.randn(4, 5, dtype=DTYPE)
    flat, _ = hnet.generate_params()
    (a, b), = hand_factors(flat, tied, ["a.weight"], 2).values()
    w = tied.a.weight + a @ b
    assert_close(hnet(x), F.linear(torch.tanh(F.linear(x, w, tied.a.bias)), w, tied.b.bias))

    attention = nn.MultiheadAttention(8, 2, batch_first=True)
    hnet = hypernetize(attention, embedding_dim=3, num_embeddings=4, low_rank=2, warm_start=False,
                       targets=["out_proj.weight"])  # fmt: skip
    assert [a.factored for a in hnet._adapted] == [False]  # MultiheadAttention reads out_proj.weight itself
    q = torch.randn(2, 3, 8)
    merged = hnet.generated_state_dict()["out_proj.weight"]
    reference = copy.deepcopy(attention)
    with torch.no_grad():
        reference.out_proj.weight.copy_(merged)
    assert_close(hnet(q, q, q)[0], reference(q, q, q)[0])


@pytest.mark.parametrize("model, kwargs, message", [
    (ConvNet(), {"targets": ["fc1"]}, r"`low_rank`=2 generates low-rank deltas for the weights of torch nn\.Linear, "
                                      r"nn\.Conv1d, nn\.Conv2d, nn\.Conv3d .* also holds 'fc1\.bias' \(Linear\)\. Narrow `targets`"),
    (nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 2)), {"targets": ["0.weight"]}, r"also holds '0\.weight' \(Embedding\)"),
    (nn.Sequential(nn.ConvTranspose2d(2, 3, 3)), {"targets": ["0.weight"]}, r"also holds '0\.weight' \(ConvTranspose2d\)"),
    (nn.Sequential(nn.LayerNorm(4)), {}, r"Sequential has no weights of torch nn\.Linear, .* to adapt"),
])  # fmt: skip
def test_unsupported_tensors_are_refused_naming_what_is_supported(model, kwargs, message):
    with pytest.raises(SelectionError, match=message):
        hypernetize(model, embedding_dim=3, num_embeddings=4, low_rank=2, **kwargs)


def test_default_selection_adapts_only_supported_weights_and_keeps_the_rest_trainable():
    model = nn.Sequential(nn.Embedding(10, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    hnet = hypernetize(model, embedding_dim=3, num_embeddings=4, low_rank=2)
    assert hnet.selection.names == ("2.weight",)
    trainable = sorted(n for n, p in hnet.named_parameters() if p.requires_grad)
    assert "target_network.0.weight" in trainable and "target_network.2.bias" in trainable
    assert "target_network.2.weight" not in trainable


@pytest.mark.parametrize("kwargs, message", [
    ({"low_rank": 0}, r"`low_rank` must be a positive int; got 0\."),
    ({"low_rank_scale": 2.0}, r"`low_rank_scale`=2\.0 needs `low_rank=`"),
    ({"low_rank": 2, "low_rank_scale": -1.0}, r"`low_rank_scale` must be a positive finite number; got -1\.0\."),
])  # fmt: skip
def test_bad_low_rank_options(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        hypernetize(ConvNet(), embedding_dim=3, num_embeddings=4, **kwargs)


# ---------------------------------------------------------------- dynamic: per-sample adapters


def loop(hnet, x, condition):
    return torch.cat([hnet(x[i : i + 1], condition=condition[i]) for i in range(len(x))])


@pytest.mark.parametrize("warm_start", [False, True])
def test_per_sample_adapters_equal_the_loop(warm_start):
    model = ConvNet().to(DTYPE)
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=9, low_rank=2, condition_dim=3, warm_start=warm_start)
    with torch.no_grad():
        for p in hnet.condition_module.parameters():
            p.normal_(0, 0.5)
    x, c = torch.randn(4, 2, 4, 4, dtype=DTYPE), torch.randn(4, 3, dtype=DTYPE)
    params = [p for p in hnet.parameters() if p.requires_grad]
    out, expected = hnet(x, condition=c), loop(hnet, x, c)
    assert_close(out, expected)
    assert not torch.allclose(out, hnet(x, condition=c[0])), "samples get different adapters"
    got = torch.autograd.grad(out.square().sum(), params, retain_graph=True)
    want = torch.autograd.grad(expected.square().sum(), params)
    for g, w in zip(got, want):
        assert_close(g, w)
    flat, _ = hnet.generate_params(condition=c)
    factors = hnet.unflatten(flat)
    assert factors["fc1.weight.A"].shape == (4, 12, 2)  # one adapter per sample, never (4, 12, 96)
    plain = hypernn.materialize(hnet, condition=c[1])
    assert_close(plain(x[1:2]), out[1:2])


def test_low_rank_hypernetwork_pickles_deepcopies_and_vmaps():
    hnet = hypernetize(ConvNet(), embedding_dim=4, num_embeddings=9, low_rank=2, warm_start=False)
    x = torch.randn(3, 2, 4, 4)
    buffer = io.BytesIO()
    torch.save(hnet, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(hnet), pickle.loads(pickle.dumps(hnet)), torch.load(buffer, weights_only=False)):
        assert_close(clone(x), hnet(x))
    batched = torch.func.vmap(lambda xi: hnet(xi.unsqueeze(0)).squeeze(0))(x)
    assert_close(batched, hnet(x))


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    hnet = hypernetize(ConvNet(), embedding_dim=4, num_embeddings=9, low_rank=2, warm_start=False)
    x = torch.randn(3, 2, 4, 4)
    compiled = torch.compile(hnet, fullgraph=True, backend="eager")
    assert_close(compiled(x), hnet(x))


def test_eval_reuse_keeps_merged_weights_until_w0_or_the_generator_changes():
    hnet = hypernetize(ConvNet(), embedding_dim=4, num_embeddings=9, low_rank=2, warm_start=False).eval()
    x = torch.randn(3, 2, 4, 4)
    with torch.no_grad():
        first = hnet(x)
        assert_close(hnet(x), first, rtol=0, atol=0)
        hnet.target_network.conv.weight.add_(1.0)  # W0 of the merged convolution
        moved = hnet(x)
        assert not torch.allclose(moved, first)
    assert_close(moved, hnet.train()(x).detach())  # a fresh generation agrees
