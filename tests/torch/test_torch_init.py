"""Where generated torch weights start: ``init="hyperfan"`` (default), ``init="default"``, warm start.

The hyperfan targets are checked against torch itself, not against hypernn's rule table:
the reference std of a tensor is measured on the values that the layer's own
``reset_parameters()`` draws, pooled over many fresh draws (so a 10-value bias is measured
on thousands of values).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import hypernn
from hypernn import hypernetize, mlp_generator

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class Net(nn.Module):
    """Linear, Conv, Embedding (wide and narrow fans) plus norms with constant inits."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.conv = nn.Conv1d(16, 24, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(24)
        self.fc1 = nn.Linear(24, 64)
        self.bn = nn.BatchNorm1d(64)
        self.fc2 = nn.Linear(64, 5)

    def forward(self, ids):
        h = self.conv(self.embed(ids).transpose(1, 2)).transpose(1, 2)
        h = torch.relu(self.norm(h)).mean(1)
        return self.fc2(torch.relu(self.bn(self.fc1(h))))


def torch_reference_std(model: nn.Module, name: str, draws: int = 200) -> float:
    """Std of ``name``'s values over ``draws`` fresh ``reset_parameters()`` of its layer."""
    owner_name, _, attribute = name.rpartition(".")
    layer = copy.deepcopy(model.get_submodule(owner_name))
    values = []
    for _ in range(draws):
        layer.reset_parameters()
        values.append(getattr(layer, attribute).detach().flatten().clone())
    return torch.cat(values).std().item()


def generated(hnet: nn.Module) -> dict:
    with torch.no_grad():
        return hnet.generated_state_dict()


RANDOM_INIT = ["embed.weight", "conv.weight", "conv.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
GENERATORS = {
    "linear": None,
    "mlp": mlp_generator((32,), activation="tanh"),
    "custom": lambda d, c: nn.Sequential(nn.Linear(d, 16), nn.GELU(), nn.Linear(16, c)),
}


# ---------------------------------------------------------------- hyperfan: the std of each layer's own init


@pytest.mark.parametrize("generator", sorted(GENERATORS))
@pytest.mark.parametrize("layout, num_embeddings", [("global", 7), ("global", 64), ("per_tensor", 40)])
def test_generated_std_is_the_layers_own_init_std(layout, num_embeddings, generator):
    model = Net()
    hnet = hypernetize(model, embedding_dim=8, num_embeddings=num_embeddings, layout=layout,
                       generator_factory=GENERATORS[generator])  # fmt: skip
    tensors = generated(hnet)
    for name in RANDOM_INIT:
        reference = torch_reference_std(model, name)
        ratio = tensors[name].std(unbiased=False).item() / reference
        assert abs(ratio - 1) < 0.25, f"{name}: generated std / torch's init std = {ratio:.3f}"
        assert abs(tensors[name].mean().item()) < 0.25 * reference, name


def test_constant_inits_start_near_their_constant_and_still_vary():
    hnet = hypernetize(Net(), embedding_dim=8, num_embeddings=16)
    tensors = generated(hnet)
    for name, constant in [("norm.weight", 1.0), ("norm.bias", 0.0), ("bn.weight", 1.0), ("bn.bias", 0.0)]:
        assert abs(tensors[name].mean().item() - constant) < 1e-6, name
        assert 0.005 < tensors[name].std(unbiased=False).item() < 0.02, name  # CONSTANT_STD = 0.01: trainable


def test_default_init_keeps_hyper_nns_plain_output_far_from_torchs_init():
    model = Net()
    hnet = hypernetize(model, embedding_dim=8, num_embeddings=64, init="default")
    assert hnet.output_affine is None
    flat, _ = hnet.generate_params()
    raw = hnet.weight_generator(hnet.embedding_module.weight).reshape(-1)
    assert_close(flat, raw, rtol=0, atol=0)
    ratio = generated(hnet)["conv.weight"].std().item() / torch_reference_std(model, "conv.weight")
    assert ratio > 5, "the problem hyperfan fixes: hyper-nn's generated weights start far too large"


def test_the_map_is_shift_plus_scale_times_raw_per_tensor_and_gaps_pass_through():
    hnet = hypernetize(Net(), embedding_dim=8, num_embeddings=40, layout="per_tensor")
    assert hnet.layout.unused > 0
    raw = hnet.weight_generator(hnet.embedding_module.weight).reshape(-1)
    flat, _ = hnet.generate_params()
    affine = hnet.output_affine
    position = 0
    for index, slot in enumerate(hnet.layout.slots):
        gap = slice(position, slot.offset)
        assert_close(flat[gap], raw[gap], rtol=0, atol=0)
        window = slice(slot.offset, slot.offset + slot.size)
        assert_close(flat[window], affine.shift[index] + affine.scale[index] * raw[window])
        position = slot.offset + slot.size
    assert_close(flat[position:], raw[position:], rtol=0, atol=0)


def test_scale_and_shift_are_saved_and_reload_into_a_fresh_hypernetwork():
    model = Net().eval()
    source = hypernetize(model, embedding_dim=8, num_embeddings=16)
    assert {"output_affine.scale", "output_affine.shift"} <= set(source.state_dict())
    torch.manual_seed(123)  # a fresh generator measures other scales ...
    fresh = hypernetize(model, embedding_dim=8, num_embeddings=16).eval()
    assert not torch.equal(fresh.output_affine.scale, source.output_affine.scale)
    fresh.load_state_dict(source.state_dict())  # ... the checkpoint's win
    ids = torch.randint(0, 40, (3, 5))
    assert_close(fresh(ids), source.eval()(ids), rtol=0, atol=0)


def uncached_map(affine, raw):
    """The start map computed from the per-tensor buffers as they are now (no kept vectors)."""
    offset = affine.base if affine.base is not None else affine.per_element(affine.shift, 0.0)
    return offset + affine.per_element(affine.scale, 1.0) * raw


def test_the_per_element_vectors_are_kept_between_calls_and_remade_when_the_map_changes():
    hnet = hypernetize(Net(), embedding_dim=8, num_embeddings=16)
    affine = hnet.output_affine
    raw = torch.randn(hnet.layout.generated_size)
    first = affine._vectors()
    assert all(a is b for a, b in zip(affine._vectors(), first)), "spread again with nothing changed"
    assert_close(affine(raw), uncached_map(affine, raw), rtol=0, atol=0)

    def check(what):
        assert_close(affine(raw), uncached_map(affine, raw), rtol=0, atol=0, msg=what)

    with torch.no_grad():
        affine.scale.mul_(2.0)  # in place: a new version
    check("after an in-place edit")
    source = hypernetize(Net(), embedding_dim=8, num_embeddings=16)
    hnet.load_state_dict(source.state_dict())
    check("after load_state_dict")
    hnet.load_state_dict(source.state_dict(), assign=True)
    check("after load_state_dict(assign=True)")
    hnet.double()
    check("after .double()")
    assert affine._vectors()[0].dtype == torch.float64
    affine.shift.data.add_(1.0)  # bypasses the version counter ...
    hnet.clear_generated_cache()  # ... so it is cleared by hand
    check("after a .data edit and clear_generated_cache()")


def test_kept_vectors_serve_autograd_inference_mode_copies_and_functional_call():
    hnet = hypernetize(Net(), embedding_dim=8, num_embeddings=16)
    affine = hnet.output_affine
    with torch.inference_mode():
        hnet.generate_params()  # inference tensors are not kept ...
    flat, _ = hnet.generate_params()
    flat.sum().backward()  # ... so a training call after it can still save its vectors for backward
    assert hnet.weight_generator.weight.grad is not None
    for other in (copy.deepcopy(hnet), pickle.loads(pickle.dumps(hnet))):
        assert not other.output_affine.__dict__["_per_element_cache"].vectors, "copies share the kept vectors"
        assert_close(other.generate_params()[0], flat)
    raw = torch.randn(hnet.layout.generated_size)
    doubled = {"scale": affine.scale * 2, "shift": affine.shift}
    swapped = torch.func.functional_call(affine, doubled, (raw,))
    assert_close(swapped, affine.per_element(doubled["shift"], 0.0) + affine.per_element(doubled["scale"], 1.0) * raw)
    assert_close(affine(raw), uncached_map(affine, raw), rtol=0, atol=0)
    learned = affine.scale.clone().requires_grad_(True)  # a trained scale gets gradients
    out = torch.func.functional_call(affine, {"scale": learned, "shift": affine.shift}, (raw,))
    out.sum().backward()
    assert learned.grad is not None


def test_dynamic_hypernetwork_starts_at_the_init_std_for_any_film_condition():
    model = nn.Sequential(nn.Linear(30, 50), nn.ReLU(), nn.Linear(50, 4))
    hnet = hypernetize(model, embedding_dim=6, num_embeddings=20, condition_dim=3)
    with torch.no_grad():
        flat, _ = hnet.generate_params(condition=torch.randn(3))
    weight = hnet.unflatten(flat)["0.weight"]
    assert abs(weight.std().item() / torch_reference_std(model, "0.weight") - 1) < 0.25


def recording(make):
    """A generator factory that remembers the module it built and its initial parameters."""
    record = {}

    def factory(embedding_dim, chunk_dim):
        record["module"] = module = make(embedding_dim, chunk_dim)
        record["initial"] = [p.detach().clone() for p in module.parameters()]
        return module

    return factory, record


def test_the_common_scale_is_folded_into_the_generators_last_linear_layer():
    factory, record = recording(lambda d, c: nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, c)))
    hnet = hypernetize(Net(), embedding_dim=8, num_embeddings=40, layout="per_tensor", generator_factory=factory)
    first_w, first_b, last_w, last_b = record["initial"]
    module = record["module"]
    assert torch.equal(module[0].weight, first_w) and torch.equal(module[0].bias, first_b)
    factor = (module[2].weight / last_w).mean()
    assert_close(module[2].weight, factor * last_w) and assert_close(module[2].bias, factor * last_b)
    sizes = torch.tensor([slot.size for slot in hnet.layout.slots], dtype=torch.float64)
    log_scales = hnet.output_affine.scale.double().log()
    assert abs((sizes * log_scales).sum() / sizes.sum()) < 1e-4, "what is left per tensor averages to 1"
    assert factor < 0.9  # the raw outputs are larger than these layers' inits


def test_a_generator_whose_output_is_not_linear_in_its_last_layer_keeps_its_parameters():
    factory, record = recording(lambda d, c: nn.Sequential(nn.Linear(d, c), nn.Tanh()))
    model = Net()
    hnet = hypernetize(model, embedding_dim=8, num_embeddings=40, layout="per_tensor", generator_factory=factory)
    for p, initial in zip(record["module"].parameters(), record["initial"]):
        assert torch.equal(p, initial)
    ratio = generated(hnet)["fc1.weight"].std(unbiased=False).item() / torch_reference_std(model, "fc1.weight")
    assert abs(ratio - 1) < 0.25, "the per-tensor map alone still starts at the init std"


def test_hyperfan_trains():
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 2))
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=8)
    x = torch.randn(64, 6)
    y = (x[:, 0] * x[:, 1] > 0).long()
    optimizer = torch.optim.Adam(hnet.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = F.cross_entropy(hnet(x), y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.8 * first


# ---------------------------------------------------------------- warm start


def cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).to(DTYPE)


@pytest.mark.parametrize("init", ["hyperfan", "default"])
@pytest.mark.parametrize("layout", ["global", "per_tensor"])
def test_warm_start_equals_the_model_at_step_zero_then_moves_away(layout, init):
    model = cnn()
    with torch.no_grad():  # a "pretrained" model: not its fresh init
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    original = copy.deepcopy(model.state_dict())
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=10, layout=layout, init=init, warm_start=True)
    reference = copy.deepcopy(model)  # runs the model's forwards (BN statistics), leaving `model` as it was
    x, y = torch.randn(8, 1, 4, 4, dtype=DTYPE), torch.randint(0, 3, (8,))
    reference.eval(), hnet.eval()
    assert_close(hnet(x), reference(x))
    for name, tensor in generated(hnet).items():
        assert_close(tensor, original[name])

    reference.train(), hnet.train()
    assert_close(hnet(x), reference(x))  # train mode too (batch statistics)
    optimizer = torch.optim.Adam([p for p in hnet.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(hnet(x), y)
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in hnet.weight_generator.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), "gradients reach the generator"
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.allclose(hnet.eval()(x), reference.eval()(x)), "training moved away from the model"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, original[name]), f"the user's model changed: {name}"


def test_warm_start_base_is_a_frozen_saved_parameter():
    hnet = hypernetize(cnn(), embedding_dim=4, num_embeddings=10, warm_start=True)
    base = hnet.output_affine.base
    assert isinstance(base, nn.Parameter) and not base.requires_grad
    assert base.shape == (hnet.layout.generated_size,)
    assert "output_affine.base" in hnet.state_dict()
    assert all(p is not base for p in hnet.parameters() if p.requires_grad)


@pytest.mark.parametrize("conditioning", [hypernn.conditioning.film(), hypernn.conditioning.concat(3)], ids=["film", "concat"])
def test_warm_start_holds_for_every_condition_and_training_makes_them_differ(conditioning):
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).to(DTYPE)
    hnet = hypernetize(model, embedding_dim=3, num_embeddings=6, num_conditions=4, warm_start=True,
                       condition_factory=conditioning)  # fmt: skip
    x = torch.randn(4, 5, dtype=DTYPE)
    ids = torch.tensor([0, 1, 2, 3])
    assert_close(hnet(x, condition=ids), model(x))
    assert_close(hnet.materialize(condition=2)(x), model(x))
    vectors = hypernetize(model, embedding_dim=3, num_embeddings=6, condition_dim=2, warm_start=True,
                          condition_factory=conditioning)  # fmt: skip
    assert_close(vectors(x, condition=torch.randn(4, 2, dtype=DTYPE)), model(x))
    # the conditioning starts at zero but is trainable: after one step the tasks differ
    optimizer = torch.optim.SGD(hnet.parameters(), lr=0.5)
    (hnet(x, condition=ids) - torch.randn(4, 2, dtype=DTYPE)).pow(2).sum().backward()
    optimizer.step()
    with torch.no_grad():
        first, second = hnet(x[:1], condition=torch.tensor(0)), hnet(x[:1], condition=torch.tensor(1))
    assert not torch.allclose(first, second)


def test_warm_start_through_the_class_decorator():
    @hypernetize(embedding_dim=3, num_embeddings=5, warm_start=True)
    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(7)
    reference = Small.__wrapped__()  # the decorated class builds the model first, from the same draws
    torch.manual_seed(7)
    net = Small()
    x = torch.randn(3, 4)
    assert_close(net(x), reference(x))


# ---------------------------------------------------------------- the rule table against torch's own draws

LAYERS = {
    "linear": lambda: nn.Linear(7, 5),
    "conv3d-groups": lambda: nn.Conv3d(4, 6, (2, 3, 3), groups=2),
    "conv-transpose": lambda: nn.ConvTranspose2d(4, 6, 3),
    "embedding-bag": lambda: nn.EmbeddingBag(10, 4),
    "attention": lambda: nn.MultiheadAttention(12, 3, add_bias_kv=True),
    "attention-kdim": lambda: nn.MultiheadAttention(12, 3, kdim=5, vdim=7),
    "lstm-proj": lambda: nn.LSTM(6, 10, proj_size=4, num_layers=2),
    "gru": lambda: nn.GRU(6, 10),
    "rnn-cell": lambda: nn.RNNCell(5, 7),
    "bilinear": lambda: nn.Bilinear(5, 6, 4),
    "prelu": lambda: nn.PReLU(3),
    "group-norm": lambda: nn.GroupNorm(2, 4),
    "batch-norm": lambda: nn.BatchNorm1d(3),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_target_init_rules_match_torchs_own_draws(layer):
    from hypernn.default_inits import target_init
    from hypernn.transform.torch.introspect import param_specs

    specs = [s for s in param_specs(LAYERS[layer]()) if s.kind == "parameter"]
    shapes = {s.name: s.shape for s in specs}
    draws = {s.name: [] for s in specs}
    for _ in range(300):
        fresh = dict(LAYERS[layer]().named_parameters())
        for name in draws:
            draws[name].append(fresh[name].detach().flatten())
    for spec in specs:
        init = target_init(spec, convention="torch", shapes=shapes)
        values = torch.cat(draws[spec.name]).double()
        if init.is_constant:
            assert torch.all(values == init.mean), f"{spec.name}: {init.rule}"
        else:
            assert abs(values.std().item() / init.std - 1) < 0.05, f"{spec.name}: {init.rule}"
            assert abs(values.mean().item()) < 0.05 * init.std, spec.name


@pytest.mark.parametrize("options", [{}, {"warm_start": True}, {"low_rank": 2}])
def test_on_the_meta_device_the_map_is_a_placeholder_of_the_right_shapes(options):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 2))
    hnet = hypernetize(model, embedding_dim=3, num_embeddings=4, **options)
    real = hypernetize(nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 2)), embedding_dim=3,
                       num_embeddings=4, **options)  # fmt: skip
    assert hnet.output_affine.scale.is_meta
    assert {k: v.shape for k, v in hnet.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["hyperfan", "warm_start"])
def test_compiled_start_map_equals_eager(warm):
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    hnet = hypernetize(model, embedding_dim=3, num_embeddings=5, warm_start=warm)  # 5 chunks: the last one has a gap
    assert hnet.layout.unused > 0
    x = torch.randn(4, 5)
    compiled = torch.compile(hnet, fullgraph=True)
    torch.testing.assert_close(compiled(x), hnet(x))
    compiled(x).sum().backward()
    expected = {name: p.grad.clone() for name, p in hnet.named_parameters() if p.grad is not None}
    hnet.zero_grad()
    hnet(x).sum().backward()
    for name, grad in expected.items():
        torch.testing.assert_close(grad, hnet.get_parameter(name).grad, msg=name)
