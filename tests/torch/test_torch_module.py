"""The torch hypernetwork as a drop-in module: parameters, buffers, state, errors, transforms."""

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hypernn
from hypernn import hypernetize
from hypernn.transform.torch import MLPGenerator
from hypernn.errors import (
    GeneratedParamsError,
    GeneratedParamsTypeError,
    GeneratorOutputError,
    OptionTypeError,
    ReservedArgumentError,
    SelectionError,
    UnsupportedModelError,
)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


class Scaled(nn.Module):
    """A model whose forward takes keyword arguments and returns a dict."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.register_buffer("offset", torch.ones(2))
        self.note = "kept"

    def forward(self, x, *, scale=1.0, fail=False):
        if fail:
            raise RuntimeError("boom inside forward")
        return {"out": self.fc(x) * scale + self.offset}


def hand_mlp(hnet, x):
    """The hypernetwork's math written out: generate, slice, the per-tensor hyperfan map
    ``shift + scale * raw`` (absent with ``init="default"``), F.linear."""
    chunks = hnet.weight_generator.weight @ hnet.embedding_module.weight.T
    flat = (chunks.T + hnet.weight_generator.bias).reshape(-1)
    pieces = [flat[:32].reshape(8, 4), flat[32:40], flat[40:64].reshape(3, 8), flat[64:67]]
    if hnet.output_affine is not None:
        affine = hnet.output_affine
        pieces = [affine.shift[i] + affine.scale[i] * piece for i, piece in enumerate(pieces)]
    w1, b1, w2, b2 = pieces
    return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)


# ------------------------------------------------------------------ drop-in behaviour


def test_forward_matches_hand_written_math_and_model_signature():
    hnet = hypernetize(mlp(), embedding_dim=5, num_embeddings=4)
    x = torch.randn(6, 4)
    torch.testing.assert_close(hnet(x), hand_mlp(hnet, x))
    plain = hypernetize(mlp(), embedding_dim=5, num_embeddings=4, init="default")
    assert plain.output_affine is None
    torch.testing.assert_close(plain(x), hand_mlp(plain, x))
    scaled = hypernetize(Scaled(), embedding_dim=3, num_embeddings=2)
    out = scaled(torch.ones(1, 4), scale=0.0)
    assert set(out) == {"out"}
    torch.testing.assert_close(out["out"], torch.ones(1, 2))  # the buffer reached the forward


def test_parameters_hold_generator_and_unselected_only():
    hnet = hypernetize(mlp(), embedding_dim=5, num_embeddings=4, targets=["0"])
    names = [name for name, _ in hnet.named_parameters()]
    assert names == ["embedding_module.weight", "weight_generator.weight", "weight_generator.bias",
                     "target_network.2.weight", "target_network.2.bias"]  # fmt: skip
    assert hnet.target_network[0].weight is None and hnet.target_network[0].bias is None
    assert all(p.requires_grad for p in hnet.parameters())


def test_every_parameter_gets_a_gradient_so_plain_ddp_works():
    hnet = hypernetize(mlp(), embedding_dim=5, num_embeddings=4, targets=["2.weight"])
    hnet(torch.randn(3, 4)).sum().backward()
    unused = [name for name, p in hnet.named_parameters() if p.grad is None]
    assert unused == []


def test_the_users_model_is_left_unchanged():
    model = mlp()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = [id(p) for p in model.parameters()]
    x = torch.randn(5, 4)
    expected = model(x)
    hnet = hypernetize(model, embedding_dim=5, num_embeddings=4)
    optimizer = torch.optim.SGD(hnet.parameters(), lr=0.5)
    hnet(x).sum().backward()
    optimizer.step()
    assert [id(p) for p in model.parameters()] == ids
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=0)
        assert p.grad is None
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_inplace_uses_the_model_object_itself():
    model = mlp()
    hnet = hypernetize(model, embedding_dim=5, num_embeddings=4, targets=["0.weight"], inplace=True)
    assert hnet.target_network is model
    assert model[0].weight is None and [n for n, _ in model.named_parameters()] == ["0.bias", "2.weight", "2.bias"]


def test_buffers_state_dict_and_modes_reach_the_model():
    hnet = hypernetize(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), embedding_dim=2, num_embeddings=3)
    keys = set(hnet.state_dict())
    assert {"target_network.1.running_mean", "target_network.1.running_var", "target_network.1.num_batches_tracked"} <= keys
    assert not any(k.startswith("target_network.0.") for k in keys)
    assert "_embedding_index" not in keys  # rebuilt from num_embeddings, never saved
    hnet.eval()
    assert hnet.target_network[1].training is False
    hnet.double()
    assert hnet.target_network[1].running_mean.dtype == torch.float64
    assert hnet(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64


def test_state_dict_round_trip_into_a_fresh_hypernetwork():
    transform = hypernetize(embedding_dim=5, num_embeddings=4, targets=["0"])
    trained, fresh = transform(mlp()), transform(mlp())
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(4, 4)
    torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)


def test_attribute_lookup_falls_back_to_the_model():
    hnet = hypernetize(Scaled(), embedding_dim=2, num_embeddings=2)
    assert hnet.note == "kept" and hnet.fc is hnet.target_network.fc
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        hnet.missing  # noqa: B018


# ------------------------------------------------------------------ generated_params and friends


def test_generated_params_full_or_compact_vector():
    model = mlp()
    hnet = hypernetize(model, embedding_dim=5, num_embeddings=4)
    original = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x = torch.randn(3, 4)
    torch.testing.assert_close(hnet(x, generated_params=original), model(x), rtol=0, atol=0)
    padded = torch.cat([original, torch.full((hnet.layout.unused,), float("nan"))])
    torch.testing.assert_close(hnet(x, generated_params=padded), model(x), rtol=0, atol=0)  # the surplus is unused


def test_has_aux_returns_params_and_embedding():
    hnet = hypernetize(mlp(), embedding_dim=5, num_embeddings=4)
    x = torch.randn(2, 4)
    out, flat, aux = hnet(x, has_aux=True)
    assert flat.shape == (hnet.layout.generated_size,) == (4 * 17,)
    torch.testing.assert_close(aux["embedding"], hnet.embedding_module.weight)
    out2, flat2, aux2 = hnet(x, generated_params=flat, has_aux=True)
    torch.testing.assert_close(out2, out)
    assert flat2 is flat and aux2 == {}


@pytest.mark.parametrize(
    "value, error, message",
    [
        (torch.zeros(10), GeneratedParamsError, r"`generated_params` has 10 values; expected 68 \(the generator's output, 4 x 17\) or 67"),
        (torch.zeros(2, 67), GeneratedParamsError, r"must be a 1-D vector; got shape \(2, 67\)"),
        (torch.zeros(67, dtype=torch.int64), GeneratedParamsTypeError, r"must be a floating-point tensor; got dtype torch\.int64"),
        ([0.0] * 67, GeneratedParamsTypeError, r"must be a torch\.Tensor; got list"),
    ],
)
def test_wrong_generated_params_are_rejected(value, error, message):
    hnet = hypernetize(mlp(), embedding_dim=5, num_embeddings=4)
    with pytest.raises(error, match=message):
        hnet(torch.randn(2, 4), generated_params=value)


def test_static_generate_params_takes_no_kwargs():
    hnet = hypernetize(mlp(), embedding_dim=5, num_embeddings=4)
    with pytest.raises(OptionTypeError, match=r"generate_params takes no arguments .* got `generate_params_kwargs` \['x'\]"):
        hnet(torch.randn(2, 4), generate_params_kwargs={"x": 1})


def test_generated_state_dict_loads_into_the_model_and_materialize_inverts():
    model = mlp()
    hnet = hypernetize(model, embedding_dim=5, num_embeddings=4, targets=["0"])
    x = torch.randn(3, 4)
    generated = hnet.generated_state_dict()
    assert sorted(generated) == ["0.bias", "0.weight"] and not generated["0.weight"].requires_grad
    copy_ = copy.deepcopy(model)
    copy_.load_state_dict(generated, strict=False)
    torch.testing.assert_close(copy_(x), hnet(x))
    plain = hnet.materialize()
    assert type(plain) is nn.Sequential
    assert [n for n, _ in plain.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    torch.testing.assert_close(plain(x), hnet(x))
    assert hnet.target_network[0].weight is None  # the hypernetwork itself is untouched


def test_exception_inside_forward_leaves_everything_unchanged():
    hnet = hypernetize(Scaled(), embedding_dim=3, num_embeddings=2)
    state = {k: v.clone() for k, v in hnet.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom inside forward"):
        hnet(torch.randn(1, 4), fail=True)
    assert hnet.target_network.fc.weight is None and hnet.target_network.fc._parameters["weight"] is None
    assert state.keys() == hnet.state_dict().keys()
    for key, value in hnet.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    copy.deepcopy(hnet)  # no generated (non-leaf) tensor was left behind
    hnet(torch.randn(1, 4))


# ------------------------------------------------------------------ selection through hypernetize


def test_dry_run_select_lists_names_shapes_sizes():
    selection = hypernn.select(mlp(), targets=nn.Linear, exclude=["bias"])
    assert selection.names == ("0.weight", "2.weight")
    assert "2 tensors selected from Sequential, 56 values" in str(selection)


def test_frozen_parameters_are_selected_like_others_and_stay_frozen_when_not():
    model = mlp()
    model[2].weight.requires_grad_(False)
    hnet = hypernetize(model, embedding_dim=5, num_embeddings=4)
    assert "2.weight" in hnet.selection.names  # generated: trains through the generator
    hnet = hypernetize(model, embedding_dim=5, num_embeddings=4, exclude=lambda name, p: not p.requires_grad)
    assert hnet.selection.names == ("0.weight", "0.bias", "2.bias")
    assert hnet.target_network[2].weight.requires_grad is False


class WithCounter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.steps = nn.Parameter(torch.zeros((), dtype=torch.int64), requires_grad=False)

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize(
    "model, kwargs, message",
    [
        (nn.ReLU(), {}, r"ReLU has no floating-point parameters to generate"),
        (mlp(), dict(targets=["fc3"]), r"`targets` entries 'fc3' match nothing in Sequential\. Available parameters: '0\.bias', '0\.weight', '2\.bias', '2\.weight'"),
        (nn.BatchNorm1d(3), dict(targets=["running_mean"]), r"'running_mean', which are buffers of BatchNorm1d, not parameters"),
        (WithCounter(), dict(targets=["steps"]), r"selects 'steps \(int64\)' of WithCounter, which are not floating-point"),
        (mlp(), dict(targets=nn.Conv2d), r"selects no parameters of Sequential"),
    ],
)
def test_bad_selections_raise_before_anything_changes(model, kwargs, message):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SelectionError, match=message):
        hypernetize(model, embedding_dim=2, num_embeddings=2, **kwargs)
    assert model.state_dict().keys() == before.keys()


def test_integer_parameters_are_skipped_by_default():
    hnet = hypernetize(WithCounter(), embedding_dim=2, num_embeddings=2)
    assert hnet.selection.names == ("fc.weight", "fc.bias")
    assert [n for n, _ in hnet.target_network.named_parameters()] == ["steps"]


# ------------------------------------------------------------------ factories and their errors


def test_factories_and_subclass_overrides():
    hnet = hypernetize(mlp(), embedding_dim=5, num_embeddings=4, generator_factory=hypernn.mlp_generator((7,)))
    assert isinstance(hnet.weight_generator, MLPGenerator)
    assert hnet.weight_generator.layers[0].in_features == 5 and hnet.weight_generator.layers[-1].out_features == 17

    class Scaled01(hypernn.HypernetizedModule):
        def make_weight_generator(self):
            return nn.Sequential(nn.Linear(self.embedding_dim, self.weight_chunk_dim), nn.Tanh())

    hnet = Scaled01(mlp(), embedding_dim=5, num_embeddings=4)
    assert isinstance(hnet.weight_generator[1], nn.Tanh)
    flat, _ = hnet.generate_params()
    assert flat.abs().max() <= 1


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(generator_factory=lambda d, c: nn.Linear(d, c + 1)), GeneratorOutputError, r"must output shape \(num_embeddings, chunk_dim\)=\(4, 17\); it gave \(4, 18\)"),
        (dict(generator_factory=lambda d, c: nn.Linear(d + 1, c)), GeneratorOutputError, r"running the embedding module and weight generator on arange\(4\) failed: RuntimeError"),
        (dict(generator_factory=lambda d, c: "linear"), OptionTypeError, r"`generator_factory` must return a torch\.nn\.Module; it returned str"),
        (dict(embedding_factory=lambda n, d: None), OptionTypeError, r"`embedding_factory` must return a torch\.nn\.Module; it returned NoneType"),
    ],
)
def test_bad_factories_raise_before_the_model_changes(kwargs, error, message):
    model = mlp()
    with pytest.raises(error, match=message):
        hypernetize(model, embedding_dim=5, num_embeddings=4, inplace=True, **kwargs)
    assert model[0].weight is not None  # even in place, nothing was removed


def test_forward_arguments_that_collide_with_the_hypernetwork_are_refused():
    class Clash(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x, has_aux=False):
            return self.fc(x)

    with pytest.raises(ReservedArgumentError, match=r"Clash\.forward takes \['has_aux'\], which the hypernetwork's call reserves"):
        hypernetize(Clash(), embedding_dim=2, num_embeddings=2)


def test_a_model_that_is_not_a_module_is_refused_by_the_class():
    with pytest.raises(UnsupportedModelError, match=r"`model` must be a torch\.nn\.Module; got function"):
        hypernn.HypernetizedModule(lambda x: x, embedding_dim=2, num_embeddings=2)


# ------------------------------------------------------------------ the decorator form


@hypernetize(embedding_dim=3, num_embeddings=4, targets=["fc1"])
class DecoratedNet(nn.Module):
    """A small net, hypernetized by decoration."""

    def __init__(self, width, out=2):
        super().__init__()
        self.fc1 = nn.Linear(width, 6)
        self.fc2 = nn.Linear(6, out)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_decorated_class_instances_are_hypernetworks():
    net = DecoratedNet(5, out=3)
    assert isinstance(net, DecoratedNet) and isinstance(net, hypernn.HypernetizedModule)
    assert type(net.target_network) is DecoratedNet.__wrapped__
    assert repr(net).startswith("DecoratedNet(") and DecoratedNet.__doc__.startswith("A small net")
    assert net.selection.names == ("fc1.weight", "fc1.bias")
    assert net(torch.randn(2, 5)).shape == (2, 3)


def test_decorated_and_plain_hypernetworks_pickle_and_deepcopy():
    x = torch.randn(2, 5)
    for hnet in (DecoratedNet(5), hypernetize(mlp(), embedding_dim=5, num_embeddings=4)):
        x = torch.randn(2, hnet.target_network[0].in_features) if isinstance(hnet.target_network, nn.Sequential) else x
        for clone in (pickle.loads(pickle.dumps(hnet)), copy.deepcopy(hnet)):
            assert type(clone) is type(hnet)
            torch.testing.assert_close(clone(x), hnet(x), rtol=0, atol=0)


def test_plain_call_on_a_class_keeps_the_original_importable():
    class_transform = hypernetize(embedding_dim=3, num_embeddings=4)
    hyper_scaled = class_transform(Scaled)
    assert Scaled.__qualname__ == "Scaled"  # not renamed: the module still binds the name to it
    net = hyper_scaled()
    clone = pickle.loads(pickle.dumps(net))
    x = torch.randn(1, 4)
    torch.testing.assert_close(clone(x)["out"], net(x)["out"])
    assert class_transform(Scaled) is hyper_scaled  # one class per (class, options)


# ------------------------------------------------------------------ torch.func and compile


def test_vmap_over_the_hypernetwork_equals_the_batch_call():
    hnet = hypernetize(mlp(), embedding_dim=5, num_embeddings=4)
    x = torch.randn(6, 4)
    torch.testing.assert_close(torch.func.vmap(hnet)(x), hnet(x))
    flats = torch.randn(3, hnet.layout.generated_size)  # hyper-nn's README pattern: a batch of weight sets
    per_sample = torch.func.vmap(lambda g, xi: hnet(xi, generated_params=g))(flats, x[:3])
    loop = torch.stack([hnet(x[i], generated_params=flats[i]) for i in range(3)])
    torch.testing.assert_close(per_sample, loop)


def test_func_grad_matches_autograd():
    hnet = hypernetize(mlp(), embedding_dim=5, num_embeddings=4, targets=["0"])
    x = torch.randn(6, 4)
    params = {k: v.detach() for k, v in hnet.named_parameters()}

    def loss(p):
        return torch.func.functional_call(hnet, p, (x,)).pow(2).mean()

    grads = torch.func.grad(loss)(params)
    hnet(x).pow(2).mean().backward()
    for name, p in hnet.named_parameters():
        torch.testing.assert_close(grads[name], p.grad)


@pytest.mark.slow
def test_compile_fullgraph_has_no_graph_break_and_matches_eager():
    torch._dynamo.reset()
    hnet = hypernetize(mlp(), embedding_dim=5, num_embeddings=4, targets=["0"])
    x = torch.randn(6, 4)
    explanation = torch._dynamo.explain(hnet)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(hnet, fullgraph=True)
    torch.testing.assert_close(compiled(x), hnet(x))
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in hnet.parameters())


def test_flax_only_options_are_refused_for_torch_models():
    with pytest.raises(OptionTypeError, match=r"`example_inputs` is only used for flax linen models so far; remove it for a torch model"):
        hypernetize(mlp(), embedding_dim=2, num_embeddings=2, example_inputs=(torch.zeros(1, 4),))
    with pytest.raises(OptionTypeError, match=r"`rngs` is only used for flax NNX models"):
        hypernetize(embedding_dim=2, num_embeddings=2, rngs=0)(Scaled)
