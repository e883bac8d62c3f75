"""The NNX hypernetwork as a drop-in nnx.Module: state, training, errors, transforms, decorator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hypernn
from hypernn import hypernetize
from hypernn.errors import (
    GeneratedParamsError,
    GeneratedParamsTypeError,
    GeneratorOutputError,
    OptionTypeError,
    ReservedArgumentError,
    SelectionError,
    UnsupportedModelError,
)
from hypernn.transform.nnx import GeneratedSlot, HypernetizedNNX, MLPGenerator

GENERATOR_PARAMS = {"embedding_module.embedding", "weight_generator.bias", "weight_generator.kernel"}


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def flat_values(tree, *filters):
    """``{dotted path: array}`` of a module's (filtered) state, or of an ``nnx.State``."""
    state = tree if isinstance(tree, nnx.State) else nnx.state(tree, *filters)
    return {".".join(map(str, p)): (v.get_value() if isinstance(v, nnx.Variable) else v) for p, v in nnx.to_flat_state(state)}


def paths(state):
    return sorted(".".join(map(str, p)) for p, _ in nnx.to_flat_state(state))


class MLP(nnx.Module):
    """4 -> 8 -> 3: 67 parameters, in an nnx.List."""

    def __init__(self, *, rngs):
        self.layers = nnx.List([nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)])

    def __call__(self, x):
        return self.layers[1](jax.nn.relu(self.layers[0](x)))


def mlp():
    return MLP(rngs=nnx.Rngs(0))


def hand_mlp(flat, x):
    """The MLP from a flat vector in slot order (layers.0.bias, .kernel, layers.1.bias, .kernel)."""
    b0, k0, b1, k1 = flat[:8], flat[8:40].reshape(4, 8), flat[40:43], flat[43:67].reshape(8, 3)
    return jax.nn.relu(x @ k0 + b0) @ k1 + b1


def hand_chunks(hnet):
    """``embedding(arange(E)) @ K + b`` from the hypernetwork's arrays, flattened."""
    embedding = hnet.embedding_module.embedding[...]
    return (embedding @ hnet.weight_generator.kernel[...] + hnet.weight_generator.bias[...]).reshape(-1)


class CNN(nnx.Module):
    def __init__(self, *, rngs):
        self.conv = nnx.Conv(2, 3, (3, 3), padding="SAME", rngs=rngs)
        self.bn = nnx.BatchNorm(3, momentum=0.5, rngs=rngs)
        self.fc = nnx.Linear(3 * 4 * 4, 2, rngs=rngs)

    def __call__(self, x):
        y = jax.nn.relu(self.bn(self.conv(x)))
        return self.fc(y.reshape(y.shape[0], -1))


class Buffer(nnx.Variable):
    """A non-parameter variable."""


class Scaled(nnx.Module):
    """A model whose call takes keyword arguments, returns a dict and reads a buffer."""

    def __init__(self, *, rngs):
        self.fc = nnx.Linear(4, 2, rngs=rngs)
        self.bn = nnx.BatchNorm(2, rngs=rngs)
        self.offset = Buffer(jnp.ones(2))
        self.note = "kept"

    def __call__(self, x, *, scale=1.0, fail=False):
        y = self.bn(self.fc(x))  # updates the running statistics (train mode) ...
        if fail:
            raise RuntimeError("boom inside call")  # ... before failing
        return {"out": y * scale + self.offset[...]}


def hyper(model, **options):
    options.setdefault("rngs", nnx.Rngs(1))
    options.setdefault("init", "default")  # the hand-written math below is hyper-nn's (no start map)
    return hypernetize(model, **options)


# ------------------------------------------------------------------ drop-in behaviour


def test_call_matches_hand_written_math_and_model_signature():
    hnet = hyper(mlp(), embedding_dim=5, num_embeddings=4)
    assert hnet.layout.num_params == 67 and hnet.layout.generated_size == 68
    x = normal(0, (6, 4))
    np.testing.assert_allclose(hnet(x), hand_mlp(hand_chunks(hnet), x), rtol=1e-5, atol=1e-5)
    scaled = hyper(Scaled(rngs=nnx.Rngs(0)), embedding_dim=3, num_embeddings=2, targets=["fc"])
    out = scaled(jnp.ones((3, 4)), scale=0.0)
    assert set(out) == {"out"}
    np.testing.assert_array_equal(out["out"], jnp.ones((3, 2)))  # the buffer reached the call


def test_param_state_holds_generator_and_unselected_only():
    hnet = hyper(mlp(), embedding_dim=5, num_embeddings=4, targets=["layers.0"])
    assert paths(nnx.state(hnet, nnx.Param)) == sorted(GENERATOR_PARAMS | {"target_network.layers.1.bias",
                                                                           "target_network.layers.1.kernel"})  # fmt: skip
    slots = flat_values(hnet, GeneratedSlot)
    assert sorted(slots) == ["target_network.layers.0.bias", "target_network.layers.0.kernel"]
    assert all(value.shape == () for value in slots.values())  # a placeholder between calls
    assert isinstance(hnet.target_network.layers[0].kernel, GeneratedSlot)
    assert isinstance(hnet.target_network.layers[1].kernel, nnx.Param)
    hnet(jnp.ones((2, 4)))
    assert all(value.shape == () for value in flat_values(hnet, GeneratedSlot).values())  # and after


def test_the_users_model_is_left_unchanged():
    model = CNN(rngs=nnx.Rngs(0))
    variables = {p: v for p, v in nnx.to_flat_state(nnx.state(model))}
    before = flat_values(model)
    x, y = normal(0, (4, 4, 4, 2)), normal(1, (4, 2))
    expected = nnx.clone(model)(x)
    hnet = hyper(model, embedding_dim=4, num_embeddings=6, targets=["conv"])
    optimizer = nnx.Optimizer(hnet, optax.sgd(0.5), wrt=nnx.Param)

    @nnx.jit
    def step(hnet, optimizer):
        loss, grads = nnx.value_and_grad(lambda h: jnp.mean((h(x) - y) ** 2))(hnet)
        optimizer.update(hnet, grads)

    step(hnet, optimizer)
    # The same Variable objects, holding the same values (Params and BatchNorm statistics).
    assert {p: v for p, v in nnx.to_flat_state(nnx.state(model))}.keys() == variables.keys()
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        assert variable is variables[path]
    for name, value in flat_values(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    assert hnet.target_network.fc.kernel is not model.fc.kernel and hnet.target_network.bn.mean is not model.bn.mean
    assert not np.array_equal(hnet.target_network.fc.kernel[...], model.fc.kernel[...])  # the copy trained
    assert not np.array_equal(hnet.target_network.bn.mean[...], model.bn.mean[...])  # and tracked statistics
    np.testing.assert_array_equal(model(x), expected)


def test_inplace_uses_the_model_object_itself():
    model = mlp()
    hnet = hyper(model, embedding_dim=5, num_embeddings=4, targets=["layers.0.kernel"], inplace=True)
    assert hnet.target_network is model
    assert isinstance(model.layers[0].kernel, GeneratedSlot)
    assert paths(nnx.state(model, nnx.Param)) == ["layers.0.bias", "layers.1.bias", "layers.1.kernel"]


def test_modes_reach_the_model():
    model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Dropout(0.5, rngs=nnx.Rngs(1)),
                           nnx.BatchNorm(4, rngs=nnx.Rngs(2)))  # fmt: skip
    hnet = hyper(model, embedding_dim=2, num_embeddings=3)
    hnet.eval()
    assert hnet.target_network.layers[1].deterministic is True
    assert hnet.target_network.layers[2].use_running_average is True
    assert model.layers[2].use_running_average is False  # not the user's model
    x = normal(0, (5, 3))
    np.testing.assert_array_equal(hnet(x), hnet(x))
    hnet.train()
    assert hnet.target_network.layers[1].deterministic is False
    assert hnet.target_network.layers[2].use_running_average is False


# ------------------------------------------------------------------ training


def _train(hnet, x, y, steps):
    optimizer = nnx.Optimizer(hnet, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(hnet, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda h: jnp.mean((h(x) - y) ** 2))(hnet)
        optimizer.update(hnet, grads)
        return loss

    return optimizer, [float(step(hnet, optimizer, x, y)) for _ in range(steps)]


def test_optimizer_training_mlp_loss_falls():
    hnet = hyper(mlp(), embedding_dim=5, num_embeddings=4, targets=["layers.0"])
    x = normal(0, (32, 4))
    y = jnp.sin(x[:, :3] * 2.0)
    generated_before = flat_values(hnet.generated_state())
    optimizer, losses = _train(hnet, x, y, steps=40)
    assert losses[-1] < 0.5 * losses[0], losses
    # The optimizer holds state for the hypernetwork's Params only (no generated slots).
    moments = [leaf for leaf in jax.tree.leaves(optimizer.opt_state) if getattr(leaf, "ndim", 0) > 0]
    assert sorted(m.size for m in moments) == sorted(2 * [v.size for v in flat_values(hnet, nnx.Param).values()])
    # Both the generated and the kept layer moved.
    generated_after = flat_values(hnet.generated_state())
    for name in generated_before:
        assert not np.allclose(generated_after[name], generated_before[name]), name
    assert all(value.shape == () for value in flat_values(hnet, GeneratedSlot).values())


def test_optimizer_training_cnn_batchnorm_statistics_keep_updating():
    hnet = hyper(CNN(rngs=nnx.Rngs(0)), embedding_dim=4, num_embeddings=8)
    x, y = normal(0, (8, 4, 4, 2)), normal(1, (8, 2))
    optimizer = nnx.Optimizer(hnet, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(hnet, optimizer):
        loss, grads = nnx.value_and_grad(lambda h: jnp.mean((h(x) - y) ** 2))(hnet)
        optimizer.update(hnet, grads)
        return loss

    losses, means = [], [np.asarray(hnet.target_network.bn.mean[...])]
    for _ in range(25):
        losses.append(float(step(hnet, optimizer)))
        means.append(np.asarray(hnet.target_network.bn.mean[...]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(not np.array_equal(a, b) for a, b in zip(means, means[1:]))  # every step tracked the batch
    assert paths(nnx.state(hnet, nnx.BatchStat)) == ["target_network.bn.mean", "target_network.bn.var"]
    hnet.eval()  # running statistics now: frozen, deterministic
    out = hnet(x)
    np.testing.assert_array_equal(hnet(x), out)
    np.testing.assert_array_equal(hnet.target_network.bn.mean[...], means[-1])


# ------------------------------------------------------------------ generated state and materialize


def test_generated_state_has_the_models_param_paths_and_loads_into_it():
    model = CNN(rngs=nnx.Rngs(0))
    hnet = hyper(model, embedding_dim=4, num_embeddings=5, targets=["conv", "fc.kernel"])
    state = hnet.generated_state()
    assert paths(state) == paths(nnx.state(model, nnx.Param))
    assert all(isinstance(v, nnx.Param) for _, v in nnx.to_flat_state(state))
    values = flat_values(state)
    flat = hand_chunks(hnet)
    np.testing.assert_allclose(values["conv.bias"], flat[:3], rtol=1e-6)  # slot order: conv.bias, conv.kernel, fc.kernel
    np.testing.assert_allclose(values["conv.kernel"], flat[3:57].reshape(3, 3, 2, 3), rtol=1e-6)
    np.testing.assert_array_equal(values["bn.scale"], model.bn.scale[...])  # unselected: the kept values
    copy = nnx.clone(model)
    nnx.update(copy, state)
    x = normal(0, (3, 4, 4, 2))
    np.testing.assert_allclose(copy(x), hnet(x), rtol=1e-5, atol=1e-6)
    # Both ran in train mode from the same statistics: they tracked the same batch.
    np.testing.assert_allclose(copy.bn.mean[...], hnet.target_network.bn.mean[...], rtol=1e-6)


def test_materialize_round_trip():
    model = CNN(rngs=nnx.Rngs(0))
    hnet = hyper(model, embedding_dim=4, num_embeddings=5, targets=[nnx.Conv, "fc"])
    x = normal(0, (3, 4, 4, 2))
    hnet(x)  # move the hypernetwork's running statistics off the model's
    plain = hnet.materialize()
    assert type(plain) is CNN and not flat_values(plain, GeneratedSlot)
    assert paths(nnx.state(plain, nnx.Param)) == paths(nnx.state(model, nnx.Param))
    np.testing.assert_array_equal(plain.bn.mean[...], hnet.target_network.bn.mean[...])
    plain.eval(), hnet.eval()
    np.testing.assert_allclose(plain(x), hnet(x), rtol=1e-5, atol=1e-6)
    # Independent of the hypernetwork: training the plain copy changes nothing there.
    snapshot = flat_values(hnet)
    plain.train()
    plain(x)
    plain.fc.kernel[...] = plain.fc.kernel[...] + 1.0
    assert not np.array_equal(plain.bn.mean[...], snapshot["target_network.bn.mean"])
    for name, value in flat_values(hnet).items():
        np.testing.assert_array_equal(value, snapshot[name], err_msg=name)
    assert isinstance(hnet.target_network.conv.kernel, GeneratedSlot)
    # ... and back: its Params as a compact vector reproduce it in a new hypernetwork.
    again = hyper(plain, embedding_dim=2, num_embeddings=3, targets=[nnx.Conv, "fc"])
    compact = jnp.concatenate([flat_values(plain, nnx.Param)[n].reshape(-1) for n in again.selection.names])
    again.eval(), plain.eval()
    np.testing.assert_array_equal(again(x, generated_params=compact), plain(x))


def test_tied_parameters_stay_tied_through_state_and_materialize():
    class Tied(nnx.Module):
        def __init__(self, *, rngs):
            self.first = nnx.Linear(5, 5, rngs=rngs)
            self.second = nnx.Linear(5, 5, rngs=rngs)
            self.second.kernel = self.first.kernel

        def __call__(self, x):
            return self.second(jnp.tanh(self.first(x)))

    model = Tied(rngs=nnx.Rngs(0))
    hnet = hyper(model, embedding_dim=3, num_embeddings=4)
    assert hnet.layout.num_params == 35 and hnet.layout.slots[1].aliases == ("second.kernel",)
    assert hnet.target_network.second.kernel is hnet.target_network.first.kernel
    assert paths(hnet.generated_state()) == paths(nnx.state(model, nnx.Param))
    plain = hnet.materialize()
    assert plain.second.kernel is plain.first.kernel
    _, losses = _train(hnet, normal(0, (16, 5)), normal(1, (16, 5)), steps=3)
    assert hnet.target_network.second.kernel is hnet.target_network.first.kernel


# ------------------------------------------------------------------ generated_params and friends


def test_generated_params_full_or_compact_vector():
    model = mlp()
    hnet = hyper(model, embedding_dim=5, num_embeddings=4)
    params = flat_values(model, nnx.Param)
    original = jnp.concatenate([params[n].reshape(-1) for n in ("layers.0.bias", "layers.0.kernel",
                                                                "layers.1.bias", "layers.1.kernel")])  # fmt: skip
    x = normal(0, (3, 4))
    np.testing.assert_array_equal(hnet(x, generated_params=original), model(x))
    padded = jnp.concatenate([original, jnp.full((hnet.layout.unused,), jnp.nan)])
    np.testing.assert_array_equal(hnet(x, generated_params=padded), model(x))  # the surplus is unused


def test_has_aux_returns_params_and_embedding():
    hnet = hyper(mlp(), embedding_dim=5, num_embeddings=4)
    x = normal(0, (2, 4))
    out, flat, aux = hnet(x, has_aux=True)
    assert flat.shape == (hnet.layout.generated_size,) == (4 * 17,)
    np.testing.assert_allclose(flat, hand_chunks(hnet), rtol=1e-6)
    np.testing.assert_array_equal(aux["embedding"], hnet.embedding_module.embedding[...])
    out2, flat2, aux2 = hnet(x, generated_params=flat, has_aux=True)
    np.testing.assert_array_equal(out2, out)
    assert flat2 is flat and aux2 == {}


@pytest.mark.parametrize(
    "value, error, message",
    [
        (jnp.zeros(10), GeneratedParamsError, r"`generated_params` has 10 values; expected 68 \(the generator's output, 4 x 17\) or 67"),
        (jnp.zeros((2, 67)), GeneratedParamsError, r"must be a 1-D vector; got shape \(2, 67\)"),
        (jnp.zeros(67, dtype=jnp.int32), GeneratedParamsTypeError, r"must be a floating-point array; got dtype int32"),
        ([0.0] * 67, GeneratedParamsTypeError, r"must be a jax array; got list"),
    ],
)
def test_wrong_generated_params_are_rejected(value, error, message):
    hnet = hyper(mlp(), embedding_dim=5, num_embeddings=4)
    with pytest.raises(error, match=message):
        hnet(normal(0, (2, 4)), generated_params=value)


def test_static_generate_params_takes_no_kwargs():
    hnet = hyper(mlp(), embedding_dim=5, num_embeddings=4)
    with pytest.raises(OptionTypeError, match=r"generate_params takes no arguments .* got `generate_params_kwargs` \['x'\]"):
        hnet(normal(0, (2, 4)), generate_params_kwargs={"x": 1})


def test_exception_inside_the_call_leaves_everything_unchanged():
    hnet = hyper(Scaled(rngs=nnx.Rngs(0)), embedding_dim=3, num_embeddings=2, targets=["fc"])
    before = flat_values(hnet)
    x = normal(0, (4, 4))
    with pytest.raises(RuntimeError, match="boom inside call"):
        hnet(x, fail=True)
    assert flat_values(hnet).keys() == before.keys()
    for name, value in flat_values(hnet).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)  # running statistics too
    assert isinstance(hnet.target_network.fc.kernel, GeneratedSlot)
    hnet(x)  # still usable, and now the statistics move
    assert not np.array_equal(hnet.target_network.bn.mean[...], before["target_network.bn.mean"])


# ------------------------------------------------------------------ selection through hypernetize


def test_dry_run_select_lists_names_shapes_sizes():
    selection = hypernn.select(mlp(), targets=nnx.Linear, exclude=["bias"])
    assert selection.names == ("layers.0.kernel", "layers.1.kernel")
    assert "2 tensors selected from MLP, 56 values" in str(selection)


def test_selection_by_module_class_and_dotted_paths():
    hnet = hyper(CNN(rngs=nnx.Rngs(0)), embedding_dim=3, num_embeddings=4, targets=nnx.BatchNorm)
    assert hnet.selection.names == ("bn.bias", "bn.scale")
    hnet = hyper(mlp(), embedding_dim=3, num_embeddings=4, targets=["layers.0.kernel", "layers.1"])
    assert hnet.selection.names == ("layers.0.kernel", "layers.1.bias", "layers.1.kernel")
    assert isinstance(hnet.target_network.layers[0].kernel, GeneratedSlot)
    assert isinstance(hnet.target_network.layers[0].bias, nnx.Param)
    hnet = hyper(mlp(), embedding_dim=3, num_embeddings=4, targets=r"layers\.1\..*", exclude=["layers.1.bias"])
    assert hnet.selection.names == ("layers.1.kernel",)


class WithCounter(nnx.Module):
    def __init__(self, *, rngs):
        self.fc = nnx.Linear(2, 2, rngs=rngs)
        self.steps = nnx.Param(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        return self.fc(x)


class OnlyBuffers(nnx.Module):
    def __init__(self):
        self.offset = Buffer(jnp.ones(2))

    def __call__(self, x):
        return x + self.offset[...]


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (OnlyBuffers, {}, r"OnlyBuffers has no floating-point parameters to generate"),
        (mlp, dict(targets=["fc3"]), r"`targets` entries 'fc3' match nothing in MLP\. Available parameters: 'layers\.0\.bias', "
                                     r"'layers\.0\.kernel', 'layers\.1\.bias', 'layers\.1\.kernel'\. Available modules: 'layers', "
                                     r"'layers\.0', 'layers\.1'"),  # fmt: skip
        (lambda: CNN(rngs=nnx.Rngs(0)), dict(targets=["bn.mean"]), r"'bn\.mean', which are buffers of CNN, not parameters"),
        (lambda: WithCounter(rngs=nnx.Rngs(0)), dict(targets=["steps"]), r"selects 'steps \(int32\)' of WithCounter, which are not floating-point"),
        (mlp, dict(targets=nnx.Conv), r"selects no parameters of MLP"),
    ],
)
def test_bad_selections_raise_before_anything_changes(make, kwargs, message):
    model = make()
    before = flat_values(model)
    with pytest.raises(SelectionError, match=message):
        hyper(model, embedding_dim=2, num_embeddings=2, inplace=True, **kwargs)
    assert flat_values(model).keys() == before.keys() and not flat_values(model, GeneratedSlot)


def test_integer_parameters_are_skipped_by_default():
    hnet = hyper(WithCounter(rngs=nnx.Rngs(0)), embedding_dim=2, num_embeddings=2)
    assert hnet.selection.names == ("fc.bias", "fc.kernel")
    assert paths(nnx.state(hnet.target_network, nnx.Param)) == ["steps"]


def test_rngs_are_required_and_other_backends_options_refused():
    with pytest.raises(OptionTypeError, match=r"an NNX hypernetwork needs `rngs=nnx\.Rngs\(\.\.\.\)` for its own modules; got None"):
        hypernetize(mlp(), embedding_dim=2, num_embeddings=2)
    with pytest.raises(OptionTypeError, match=r"needs `rngs=nnx\.Rngs\(\.\.\.\)` .* got 0"):
        hypernetize(mlp(), embedding_dim=2, num_embeddings=2, rngs=0)
    with pytest.raises(OptionTypeError, match=r"`example_inputs` is only used for flax linen models"):
        hyper(mlp(), embedding_dim=2, num_embeddings=2, example_inputs=(jnp.ones((1, 4)),))
    with pytest.raises(UnsupportedModelError, match=r"`model` must be an flax\.nnx\.Module; got function"):
        HypernetizedNNX(lambda x: x, embedding_dim=2, num_embeddings=2, rngs=nnx.Rngs(0))


# ------------------------------------------------------------------ factories and their errors


def test_factories_and_subclass_overrides():
    hnet = hyper(mlp(), embedding_dim=5, num_embeddings=4, generator_factory=hypernn.mlp_generator((7,)))
    assert isinstance(hnet.weight_generator, MLPGenerator)
    assert hnet.weight_generator.layers[0].in_features == 5 and hnet.weight_generator.layers[-1].out_features == 17
    assert hnet(jnp.ones((2, 4))).shape == (2, 3)

    class Squashed(HypernetizedNNX):
        def make_weight_generator(self, rngs):
            return nnx.Sequential(nnx.Linear(self.embedding_dim, self.weight_chunk_dim, rngs=rngs), jnp.tanh)

    hnet = Squashed(mlp(), embedding_dim=5, num_embeddings=4, rngs=nnx.Rngs(1))
    flat, _ = hnet.generate_params()
    assert float(jnp.abs(flat).max()) <= 1


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(generator_factory=lambda d, c, rngs: nnx.Linear(d, c + 1, rngs=rngs)), GeneratorOutputError,
         r"must output shape \(num_embeddings, chunk_dim\)=\(4, 17\); it gave \(4, 18\)"),
        (dict(generator_factory=lambda d, c, rngs: nnx.Linear(d + 1, c, rngs=rngs)), GeneratorOutputError,
         r"running the embedding module and weight generator on arange\(4\) failed: TypeError"),
        (dict(generator_factory=lambda d, c, rngs: "linear"), OptionTypeError,
         r"`generator_factory` must return an nnx\.Module; it returned str"),
        (dict(embedding_factory=lambda n, d, rngs: None), OptionTypeError,
         r"`embedding_factory` must return an nnx\.Module; it returned NoneType"),
    ],
)  # fmt: skip
def test_bad_factories_raise_before_the_model_changes(kwargs, error, message):
    model = mlp()
    with pytest.raises(error, match=message):
        hyper(model, embedding_dim=5, num_embeddings=4, inplace=True, **kwargs)
    assert isinstance(model.layers[0].kernel, nnx.Param)  # even in place, nothing was replaced


def test_call_arguments_that_collide_with_the_hypernetwork_are_refused():
    class Clash(nnx.Module):
        def __init__(self):
            self.fc = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

        def __call__(self, x, has_aux=False):
            return self.fc(x)

    with pytest.raises(ReservedArgumentError, match=r"Clash\.__call__ takes \['has_aux'\], which the hypernetwork's call reserves"):
        hyper(Clash(), embedding_dim=2, num_embeddings=2)


# ------------------------------------------------------------------ the decorator form


@hypernetize(embedding_dim=3, num_embeddings=4, targets=["fc1"])
class DecoratedNet(nnx.Module):
    """A small net, hypernetized by decoration."""

    def __init__(self, width, out=2, *, rngs):
        self.fc1 = nnx.Linear(width, 6, rngs=rngs)
        self.fc2 = nnx.Linear(6, out, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


def test_decorated_class_instances_are_hypernetworks():
    net = DecoratedNet(5, out=3, rngs=nnx.Rngs(0))
    assert isinstance(net, DecoratedNet) and isinstance(net, HypernetizedNNX) and isinstance(net, nnx.Module)
    assert type(net.target_network) is DecoratedNet.__wrapped__
    assert DecoratedNet.__name__ == "DecoratedNet" and DecoratedNet.__doc__.startswith("A small net")
    assert net.selection.names == ("fc1.bias", "fc1.kernel")
    assert net.target_network.fc2.kernel.shape == (6, 3)  # constructor arguments passed through
    assert net(normal(0, (2, 5))).shape == (2, 3)
    # The model and then the hypernetwork's own modules drew from the constructor's rngs.
    rngs = nnx.Rngs(0)
    plain = DecoratedNet.__wrapped__(5, out=3, rngs=rngs)
    np.testing.assert_array_equal(net.target_network.fc2.kernel[...], plain.fc2.kernel[...])
    np.testing.assert_array_equal(net.embedding_module.embedding[...], nnx.Embed(4, 3, rngs=rngs).embedding[...])
    assert not np.array_equal(DecoratedNet(5, rngs=nnx.Rngs(1)).embedding_module.embedding[...],
                              net.embedding_module.embedding[...])  # fmt: skip
    with pytest.raises(OptionTypeError, match=r"DecoratedNet is hypernetized: pass `rngs=nnx\.Rngs\(\.\.\.\)` to its constructor"):
        DecoratedNet(5)


def test_decorator_rngs_option_feeds_the_hypernetworks_modules():
    class Net(nnx.Module):
        def __init__(self, *, rngs):
            self.fc = nnx.Linear(3, 2, rngs=rngs)

        def __call__(self, x):
            return self.fc(x)

    HyperNet = hypernetize(embedding_dim=2, num_embeddings=3, rngs=nnx.Rngs(7))(Net)
    net = HyperNet(rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(net.embedding_module.embedding[...], nnx.Embed(3, 2, rngs=nnx.Rngs(7)).embedding[...])
    assert net(jnp.ones((1, 3))).shape == (1, 2)


# ------------------------------------------------------------------ jax transforms, randomness


def test_vmap_over_per_sample_generated_params_equals_a_loop():
    hnet = hyper(mlp(), embedding_dim=5, num_embeddings=4)
    flats, xs = normal(0, (3, hnet.layout.generated_size)), normal(1, (3, 5, 4))
    loop = jnp.stack([hand_mlp(flats[i], xs[i]) for i in range(3)])

    # hyper-nn's pattern: split once, vmap a pure function over the weight sets.
    graphdef, state = nnx.split(hnet)

    def pure(flat, x):
        return nnx.merge(graphdef, state)(x, generated_params=flat)

    np.testing.assert_allclose(jax.vmap(pure)(flats, xs), loop, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.vmap(pure))(flats, xs), loop, rtol=1e-5, atol=1e-5)
    # nnx.vmap with the module broadcast.
    per_sample = nnx.vmap(lambda h, g, x: h(x, generated_params=g), in_axes=(None, 0, 0))(hnet, flats, xs)
    np.testing.assert_allclose(per_sample, loop, rtol=1e-5, atol=1e-5)
    # vmap over the inputs alone equals the batched call.
    x = normal(2, (6, 4))
    np.testing.assert_allclose(nnx.vmap(lambda h, xi: h(xi), in_axes=(None, 0))(hnet, x), hnet(x), rtol=1e-5, atol=1e-6)


class Noisy(nnx.Module):
    def __init__(self, *, rngs):
        self.fc = nnx.Linear(4, 6, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.fc(x))


def test_dropout_draws_from_the_targets_rngs_which_advance():
    model = Noisy(rngs=nnx.Rngs(0, dropout=5))
    hnet = hyper(model, embedding_dim=3, num_embeddings=4)
    stream = hnet.target_network.drop.rngs
    key = stream.key[...]
    x = normal(0, (3, 4))
    flat = hand_chunks(hnet)
    dense = x @ flat[6:30].reshape(4, 6) + flat[:6]  # slots: fc.bias, fc.kernel

    def expected(count):  # nnx.Dropout: keep with probability 0.5, from fold_in(key, count)
        keep = jax.random.bernoulli(jax.random.fold_in(key, count), 0.5, dense.shape)
        return jnp.where(keep, dense / 0.5, 0.0)

    first = hnet(x)
    np.testing.assert_allclose(first, expected(0), rtol=1e-5, atol=1e-6)
    assert int(stream.count[...]) == 1
    np.testing.assert_allclose(hnet(x), expected(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nnx.jit(lambda h: h(x))(hnet), expected(2), rtol=1e-5, atol=1e-6)
    assert int(hnet.target_network.drop.rngs.count[...]) == 3
    assert int(model.drop.rngs.count[...]) == 0  # the user's model's stream did not move
    hnet.eval()
    np.testing.assert_allclose(hnet(x), dense, rtol=1e-5, atol=1e-6)
    assert int(hnet.target_network.drop.rngs.count[...]) == 3
