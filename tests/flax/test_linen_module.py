"""The linen hypernetwork as a drop-in module: variables, planning, keywords, errors,
decorator, jax transforms, rngs, and training with optax.

Expected values come from the hypernetwork's own arrays with plain jnp ops (see
:func:`hand_flat` / :func:`hand_mlp`), or from the original model's ``apply``.
"""

from __future__ import annotations

import functools

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.errors import InvalidRngError

import hypernn
from hypernn import hypernetize as _hypernetize

#: the hand-written math below is hyper-nn's (no start map; see test_linen_start.py)
hypernetize = functools.partial(_hypernetize, init="default")
from hypernn.errors import (
    GeneratedParamsError,
    GeneratedParamsTypeError,
    GeneratorOutputError,
    OptionTypeError,
    ReservedArgumentError,
    SelectionError,
)
from hypernn.transform.linen import LinenHypernetwork

KEY = jax.random.key(0)


class MLP(nn.Module):
    features: int = 6
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(self.features)(x))  # Dense_0
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(3)(x)  # Dense_1


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.8)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(3)(x)


def inputs(shape=(5, 4), seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def tree_shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


def assert_trees_equal(actual, expected):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def randomized(variables, seed=3):
    """A "pretrained" copy: every leaf moved off its initialiser, variances positive."""
    rng = np.random.default_rng(seed)

    def move(path, leaf):
        noise = rng.uniform(0.5, 2.0, leaf.shape) if str(path[-1].key) == "var" else 0.4 * rng.standard_normal(leaf.shape)
        return jnp.asarray(noise, leaf.dtype)

    return jax.tree_util.tree_map_with_path(move, variables)


def hand_flat(params):
    """The generator's output by hand: ``(embedding @ kernel + bias).reshape(-1)``."""
    embedding = params["embedding_module"]["embedding"]
    return (embedding @ params["weight_generator"]["kernel"] + params["weight_generator"]["bias"]).reshape(-1)


def hand_mlp(flat, x, features=6, kept=None):
    """The MLP from a flat vector laid out in jax's sorted order (global layout):
    Dense_0.bias, Dense_0.kernel[, Dense_1.bias, Dense_1.kernel] -- or Dense_1 from ``kept``."""
    fin = x.shape[-1]
    b0, k0 = flat[:features], flat[features : features + fin * features].reshape(fin, features)
    if kept is None:
        offset = features + fin * features
        b1, k1 = flat[offset : offset + 3], flat[offset + 3 : offset + 3 + features * 3].reshape(features, 3)
    else:
        b1, k1 = kept["Dense_1"]["bias"], kept["Dense_1"]["kernel"]
    return jnp.maximum(x @ k0 + b0, 0) @ k1 + b1


# ------------------------------------------------------------------ variables


def test_variables_hold_generator_unselected_params_and_model_collections():
    x = inputs((2, 6, 6, 2))
    hnet = hypernetize(CNN(), embedding_dim=5, num_embeddings=6, targets=nn.Conv, example_inputs=(x,),
                       init_kwargs={"train": False})  # fmt: skip
    variables = hnet.init(KEY, x, train=False)
    reference = CNN().init(KEY, x, train=False)
    generated = 3 * 3 * 2 * 4 + 4  # Conv_0: 76 values, 6 chunks of 13
    assert sorted(variables) == ["batch_stats", "params"]
    assert tree_shapes(variables["params"]) == {
        "embedding_module": {"embedding": (6, 5)},
        "weight_generator": {"kernel": (5, 13), "bias": (13,)},
        "target_network": tree_shapes({k: v for k, v in reference["params"].items() if k != "Conv_0"}),
    }
    # Collections sit at the top level in the model's exact structure (and initial values).
    assert_trees_equal(variables["batch_stats"], reference["batch_stats"])
    assert (hnet.num_embeddings, hnet.embedding_dim, hnet.weight_chunk_dim, hnet.num_target_parameters) == (6, 5, 13, generated)
    assert hnet.selection.names == ("Conv_0.bias", "Conv_0.kernel")

    # Everything selected: no target_network entry at all.
    mlp = hypernetize(MLP(), embedding_dim=3, num_embeddings=4, example_inputs=(inputs(),))
    assert sorted(mlp.init(KEY, inputs())["params"]) == ["embedding_module", "weight_generator"]


def test_generated_variables_and_batch_stats_round_trip_to_the_model():
    x = inputs((3, 6, 6, 2))
    model = CNN()
    hnet = hypernetize(model, embedding_dim=5, num_embeddings=6, targets=nn.Conv, example_inputs=(x,),
                       init_kwargs={"train": False})  # fmt: skip
    variables = randomized(hnet.init(KEY, x, train=False))
    out, updates = hnet.apply(variables, x, train=True, mutable=["batch_stats"])

    generated = hnet.apply(variables, method=hnet.generated_variables)
    assert tree_shapes(generated) == tree_shapes(model.init(KEY, x, train=False)["params"])
    flat = hand_flat(variables["params"])  # Conv_0.bias then Conv_0.kernel, by hand
    np.testing.assert_array_equal(generated["Conv_0"]["bias"], flat[:4])
    np.testing.assert_array_equal(generated["Conv_0"]["kernel"], flat[4:76].reshape(3, 3, 2, 4))
    assert_trees_equal({k: v for k, v in generated.items() if k != "Conv_0"}, variables["params"]["target_network"])

    # The model, given the generated params and the hypernetwork's batch_stats, behaves the same.
    ref_out, ref_updates = model.apply({"params": generated, "batch_stats": variables["batch_stats"]}, x, train=True,
                                       mutable=["batch_stats"])  # fmt: skip
    assert_trees_equal((out, updates), (ref_out, ref_updates))
    assert not np.allclose(updates["batch_stats"]["BatchNorm_0"]["mean"], variables["batch_stats"]["BatchNorm_0"]["mean"])
    evaluated = hnet.apply({**variables, **updates}, x, train=False)
    assert_trees_equal(evaluated, model.apply({"params": generated, **updates}, x, train=False))


def test_sown_intermediates_come_back_in_the_models_structure():
    class Sow(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(4)(x)
            self.sow("intermediates", "hidden", h)
            return nn.Dense(2)(h)

    x = inputs()
    hnet = hypernetize(Sow(), embedding_dim=2, num_embeddings=3, example_inputs=(x,))
    variables = hnet.init(KEY, x)
    assert sorted(variables) == ["params"]
    out, state = hnet.apply(variables, x, mutable=["intermediates"])
    generated = hnet.apply(variables, method=hnet.generated_variables)
    ref_out, ref_state = Sow().apply({"params": generated}, x, mutable=["intermediates"])
    assert_trees_equal((out, state), (ref_out, ref_state))
    assert tree_shapes(state) == {"intermediates": {"hidden": ((5, 4),)}}


# ------------------------------------------------------------------ eager and lazy planning


def test_eager_planning_from_example_inputs():
    x = inputs()
    hnet = hypernetize(MLP(), embedding_dim=3, num_embeddings=4, example_inputs=(x,))
    assert hnet.layout.num_params == 51 and hnet.layout.generated_size == 52  # known before init
    assert [s.name for s in hnet.layout.slots] == ["Dense_0.bias", "Dense_0.kernel", "Dense_1.bias", "Dense_1.kernel"]
    variables = hnet.init(KEY, x)
    np.testing.assert_allclose(hnet.apply(variables, x), hand_mlp(hand_flat(variables["params"]), x), rtol=1e-6, atol=1e-6)
    # Planned once; other batch sizes need no new plan.
    big = inputs((11, 4), seed=2)
    np.testing.assert_allclose(hnet.apply(variables, big), hand_mlp(hand_flat(variables["params"]), big), rtol=1e-6, atol=1e-6)


def test_eager_planning_from_pretrained_variables_initialises_from_them():
    x = inputs((3, 6, 6, 2))
    model = CNN()
    pretrained = randomized(model.init(KEY, x, train=False))
    # `variables=` alone gives the structure: names select (module classes need example_inputs).
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=5, targets=["Conv_0"], variables=pretrained)
    assert hnet.selection.names == ("Conv_0.bias", "Conv_0.kernel")
    variables = hnet.init(KEY, x, train=False)
    assert_trees_equal(variables["params"]["target_network"], {k: v for k, v in pretrained["params"].items() if k != "Conv_0"})
    assert_trees_equal(variables["batch_stats"], pretrained["batch_stats"])
    # Fed the pretrained conv weights, the hypernetwork is the pretrained model.
    conv = pretrained["params"]["Conv_0"]
    compact = jnp.concatenate([conv["bias"], conv["kernel"].reshape(-1)])
    assert_trees_equal(hnet.apply(variables, x, train=False, generated_params=compact), model.apply(pretrained, x, train=False))


def test_lazy_planning_traces_the_structure_at_first_init():
    hnet = hypernetize(MLP(), embedding_dim=3, num_embeddings=4)
    with pytest.raises(OptionTypeError, match=r"HypernetizedLinen does not know its model's variable structure yet: call "
                                              r"`init`/`apply` on it directly, or pass `example_inputs=`"):  # fmt: skip
        hnet.layout  # noqa: B018
    x = inputs()
    variables = hnet.init(KEY, x)
    assert tree_shapes(variables["params"]) == {"embedding_module": {"embedding": (4, 3)},
                                                "weight_generator": {"kernel": (3, 13), "bias": (13,)}}  # fmt: skip
    np.testing.assert_allclose(hnet.apply(variables, x), hand_mlp(hand_flat(variables["params"]), x), rtol=1e-6, atol=1e-6)
    # Another input width is another structure, traced from those inputs.
    wide = inputs((2, 7))
    wide_variables = hnet.init(KEY, wide)
    assert wide_variables["params"]["weight_generator"]["kernel"].shape == (3, math.ceil((6 + 42 + 3 + 18) / 4))
    np.testing.assert_allclose(hnet.apply(wide_variables, wide), hand_mlp(hand_flat(wide_variables["params"]), wide),
                               rtol=1e-6, atol=1e-6)  # fmt: skip


def test_lazy_planning_ignores_flax_keywords_and_passes_model_keywords():
    """``rngs=``/``mutable=`` belong to flax's apply, ``train=`` to the model (a regression:
    the lazy trace once passed ``rngs`` on to ``model.init``)."""
    x = inputs()
    hnet = hypernetize(MLP(dropout=0.5), embedding_dim=3, num_embeddings=4)
    variables = hnet.init({"params": KEY, "dropout": KEY}, x, train=True)
    out = hnet.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)}, mutable=False)
    assert out.shape == (5, 3)
    fresh = hypernetize(MLP(dropout=0.5), embedding_dim=3, num_embeddings=4)  # first trace from apply
    out = fresh.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)}, capture_intermediates=False)
    assert out.shape == (5, 3)


def test_lazy_selection_errors_surface_at_init():
    hnet = hypernetize(MLP(), embedding_dim=3, num_embeddings=4, targets=["fc3"])  # nothing traced yet
    with pytest.raises(SelectionError, match=r"`targets` entries 'fc3' match nothing in MLP"):
        hnet.init(KEY, inputs())


def test_as_a_submodule_it_needs_eager_planning():
    class Outer(nn.Module):
        inner: nn.Module

        @nn.compact
        def __call__(self, x):
            return 2 * self.inner(x)

    x = inputs()
    eager = hypernetize(MLP(), embedding_dim=3, num_embeddings=4, example_inputs=(x,))
    variables = Outer(eager).init(KEY, x)
    assert sorted(variables["params"]["inner"]) == ["embedding_module", "weight_generator"]
    np.testing.assert_allclose(Outer(eager).apply(variables, x), 2 * hand_mlp(hand_flat(variables["params"]["inner"]), x),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    lazy = hypernetize(MLP(), embedding_dim=3, num_embeddings=4)
    with pytest.raises(OptionTypeError, match=r"needed when it is a submodule of another linen module"):
        Outer(lazy).init(KEY, x)


# ------------------------------------------------------------------ keywords of the call


def test_has_aux_returns_the_flat_vector_and_embedding():
    x = inputs()
    hnet = hypernetize(MLP(), embedding_dim=3, num_embeddings=4, example_inputs=(x,))
    variables = hnet.init(KEY, x)
    out, flat, aux = hnet.apply(variables, x, has_aux=True)
    np.testing.assert_allclose(flat, hand_flat(variables["params"]), rtol=1e-6, atol=1e-6)
    assert flat.shape == (hnet.layout.generated_size,) == (52,)
    np.testing.assert_array_equal(aux["embedding"], variables["params"]["embedding_module"]["embedding"])
    np.testing.assert_array_equal(out, hnet.apply(variables, x))
    out2, flat2, aux2 = hnet.apply(variables, x, generated_params=flat, has_aux=True)
    np.testing.assert_array_equal(out2, out)
    assert flat2 is flat and aux2 == {}


def test_generated_params_full_or_compact_vector():
    x = inputs()
    model = MLP()
    pretrained = randomized(model.init(KEY, x))
    hnet = hypernetize(model, embedding_dim=3, num_embeddings=4, example_inputs=(x,))
    variables = hnet.init(KEY, x)
    p = pretrained["params"]
    compact = jnp.concatenate([p["Dense_0"]["bias"], p["Dense_0"]["kernel"].reshape(-1), p["Dense_1"]["bias"],
                               p["Dense_1"]["kernel"].reshape(-1)])  # fmt: skip
    expected = model.apply(pretrained, x)
    assert_trees_equal(hnet.apply(variables, x, generated_params=compact), expected)
    padded = jnp.concatenate([compact, jnp.full((hnet.layout.unused,), jnp.nan)])  # the surplus is never read
    assert_trees_equal(hnet.apply(variables, x, generated_params=padded), expected)
    assert_trees_equal(hnet.apply(variables, x, generated_params=np.asarray(compact)), expected)  # numpy is fine


@pytest.mark.parametrize(
    "value, error, message",
    [
        (jnp.zeros(10), GeneratedParamsError,
         r"`generated_params` has 10 values; expected 52 \(the generator's output, 4 x 13\) or 51 \(the target's values, end to end\)"),
        (jnp.zeros((2, 51)), GeneratedParamsError, r"must be a 1-D vector; got shape \(2, 51\)\. Use jax\.vmap"),
        (jnp.zeros(51, jnp.int32), GeneratedParamsTypeError, r"must be a floating-point array; got dtype int32"),
        ([0.0] * 51, GeneratedParamsTypeError, r"`generated_params` must be a jax array; got list"),
    ],
)  # fmt: skip
def test_wrong_generated_params_are_rejected(value, error, message):
    x = inputs()
    hnet = hypernetize(MLP(), embedding_dim=3, num_embeddings=4, example_inputs=(x,))
    variables = hnet.init(KEY, x)
    with pytest.raises(error, match=message):
        hnet.apply(variables, x, generated_params=value)
    if isinstance(value, jax.Array):  # shapes and dtypes are checked while tracing, too
        with pytest.raises(error, match=message):
            jax.jit(lambda v, g: hnet.apply(v, x, generated_params=g))(variables, value)


def test_static_generate_params_takes_no_kwargs():
    x = inputs()
    hnet = hypernetize(MLP(), embedding_dim=3, num_embeddings=4, example_inputs=(x,))
    variables = hnet.init(KEY, x)
    with pytest.raises(OptionTypeError, match=r"generate_params takes no arguments .* got `generate_params_kwargs` \['x'\]"):
        hnet.apply(variables, x, generate_params_kwargs={"x": 1})


# ------------------------------------------------------------------ selection and errors


class WithCounter(nn.Module):
    @nn.compact
    def __call__(self, x):
        steps = self.param("steps", lambda key: jnp.zeros((), jnp.int32))
        return nn.Dense(2)(x) + steps


class NoParams(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(x)


def test_integer_params_are_skipped_by_default_and_kept():
    x = inputs()
    hnet = hypernetize(WithCounter(), embedding_dim=2, num_embeddings=2, example_inputs=(x,))
    assert hnet.selection.names == ("Dense_0.bias", "Dense_0.kernel")
    variables = hnet.init(KEY, x)
    assert tree_shapes(variables["params"]["target_network"]) == {"steps": ()}


@pytest.mark.parametrize(
    "model, example, kwargs, message",
    [
        (MLP(), (inputs(),), dict(targets=nn.Conv), r"`targets`=<class 'flax\.linen\.linear\.Conv'> with `exclude`=None selects no parameters of MLP"),
        (MLP(), (inputs(),), dict(targets=["fc3"]),
         r"`targets` entries 'fc3' match nothing in MLP\. Available parameters: 'Dense_0\.bias', 'Dense_0\.kernel', "
         r"'Dense_1\.bias', 'Dense_1\.kernel'\. Available modules: 'Dense_0', 'Dense_1'\."),
        (MLP(), (inputs(),), dict(exclude=["Dense_7"]), r"`exclude` entries 'Dense_7' match nothing in MLP"),
        (MLP(), (inputs(),), dict(targets=nn.Dense, exclude=nn.Dense), r"selects no parameters of MLP"),
        (CNN(), (inputs((1, 4, 4, 2)),), dict(targets=["batch_stats.BatchNorm_0.mean"]),
         r"names 'batch_stats\.BatchNorm_0\.mean', which are buffers of CNN, not parameters; buffers are never generated"),
        (CNN(), (inputs((1, 4, 4, 2)),), dict(targets=["BatchNorm_0.var"]), r"'BatchNorm_0\.var', which are buffers of CNN"),
        (CNN(), (inputs((1, 4, 4, 2)),), dict(targets=["Conv_0", "mean"]), r"'mean', which are buffers of CNN"),
        (WithCounter(), (inputs(),), dict(targets=["steps"]), r"selects 'steps \(int32\)' of WithCounter, which are not floating-point"),
        (NoParams(), (inputs(),), dict(), r"NoParams has no floating-point parameters to generate"),
    ],
)  # fmt: skip
def test_bad_selections_raise_at_hypernetize(model, example, kwargs, message):
    init_kwargs = {"train": False} if isinstance(model, CNN) else None
    with pytest.raises(SelectionError, match=message):
        hypernetize(model, embedding_dim=2, num_embeddings=2, example_inputs=example, init_kwargs=init_kwargs, **kwargs)


def test_dry_run_select_lists_names_shapes_sizes():
    x = inputs((1, 4, 4, 2))
    selection = hypernn.select(CNN(), targets=nn.Conv, example_inputs=(x,), init_kwargs={"train": False})
    assert selection.names == ("Conv_0.bias", "Conv_0.kernel")
    text = str(selection)
    assert "2 tensors selected from CNN, 76 values" in text and "Conv_0.kernel  (3, 3, 2, 4)  72" in text
    variables = CNN().init(KEY, x, train=False)
    assert hypernn.select(CNN(), targets=["Dense_0"], variables=variables).names == ("Dense_0.bias", "Dense_0.kernel")
    assert hypernn.select(CNN(), exclude=r".*bias", variables=variables).names == ("BatchNorm_0.scale", "Conv_0.kernel", "Dense_0.kernel")
    with pytest.raises(OptionTypeError, match=r"needs its variable structure: pass `example_inputs=\(x, \.\.\.\)`"):
        hypernn.select(CNN(), targets=nn.Conv)


class Clash(nn.Module):
    @nn.compact
    def __call__(self, x, has_aux=False):
        return nn.Dense(2)(x)


def test_model_keywords_that_collide_with_the_hypernetwork_are_refused():
    message = r"Clash\.__call__ takes \['has_aux'\], which the hypernetwork's call reserves"
    with pytest.raises(ReservedArgumentError, match=message):
        hypernetize(Clash(), embedding_dim=2, num_embeddings=2)
    with pytest.raises(ReservedArgumentError, match=message):  # the decorator form too
        hypernetize(embedding_dim=2, num_embeddings=2)(Clash)

    class TakesKwargs(nn.Module):  # **kwargs reserve nothing
        @nn.compact
        def __call__(self, x, **kwargs):
            return nn.Dense(2)(x)

    assert hypernetize(TakesKwargs(), embedding_dim=2, num_embeddings=2, example_inputs=(inputs(),)).layout.num_params == 10


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(generator_factory=lambda d, c: nn.Dense(c + 1)), GeneratorOutputError,
         r"must output shape \(num_embeddings, chunk_dim\)=\(4, 13\); it gave \(4, 14\)"),
        (dict(generator_factory=lambda d, c: "dense"), OptionTypeError, r"`generator_factory` must return a flax\.linen\.Module; it returned str"),
        (dict(embedding_factory=lambda n, d: nn.Embed(n + 1, d)), None, None),  # arange(4) of a larger table is fine
        (dict(rngs=0), OptionTypeError, r"`rngs` is only used for flax NNX models"),
    ],
)  # fmt: skip
def test_factories_and_their_errors(kwargs, error, message):
    x = inputs()
    if error is None:
        hnet = hypernetize(MLP(), embedding_dim=3, num_embeddings=4, example_inputs=(x,), **kwargs)
        assert hnet.init(KEY, x)["params"]["embedding_module"]["embedding"].shape == (5, 3)
        return
    with pytest.raises(error, match=message):  # eagerly planned: raised at hypernetize
        hypernetize(MLP(), embedding_dim=3, num_embeddings=4, example_inputs=(x,), **kwargs)


def test_mlp_generator_spec():
    x = inputs()
    hnet = hypernetize(MLP(), embedding_dim=3, num_embeddings=4, example_inputs=(x,), generator_factory=hypernn.mlp_generator((7,)))
    variables = hnet.init(KEY, x)
    generator = variables["params"]["weight_generator"]
    assert tree_shapes(generator) == {"Dense_0": {"kernel": (3, 7), "bias": (7,)}, "Dense_1": {"kernel": (7, 13), "bias": (13,)}}
    embedding = variables["params"]["embedding_module"]["embedding"]
    hidden = jax.nn.relu(embedding @ generator["Dense_0"]["kernel"] + generator["Dense_0"]["bias"])
    flat = (hidden @ generator["Dense_1"]["kernel"] + generator["Dense_1"]["bias"]).reshape(-1)
    np.testing.assert_allclose(hnet.apply(variables, x), hand_mlp(flat, x), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ the decorator form


@hypernetize(embedding_dim=3, num_embeddings=4, targets=["Dense_0"])
class DecoratedNet(nn.Module):
    """A small net, hypernetized by decoration."""

    features: int = 6

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.features)(x))
        return nn.Dense(3)(x)


def test_decorated_class_instances_are_hypernetworks():
    net = DecoratedNet(features=5)
    assert isinstance(net, DecoratedNet) and isinstance(net, LinenHypernetwork)
    assert net.features == 5 and DecoratedNet().features == 6  # fields (and defaults) pass through
    assert DecoratedNet.__name__ == "DecoratedNet" and DecoratedNet.__doc__.startswith("A small net")
    target = net.hypernn_target()
    assert type(target) is DecoratedNet.__wrapped__ and target.features == 5
    with pytest.raises(OptionTypeError, match="does not know its model's variable structure yet"):
        net.layout  # noqa: B018
    x = inputs()
    variables = net.init(KEY, x)  # traced now
    assert tree_shapes(variables["params"]["target_network"]) == {"Dense_1": {"kernel": (5, 3), "bias": (3,)}}
    assert variables["params"]["weight_generator"]["kernel"].shape == (3, math.ceil((5 + 4 * 5) / 4))
    expected = hand_mlp(hand_flat(variables["params"]), x, features=5, kept=variables["params"]["target_network"])
    np.testing.assert_allclose(net.apply(variables, x), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(net.apply)(variables, x), expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ jax transforms


def test_jit_grad_and_vmap_over_apply():
    x = inputs((6, 4))
    hnet = hypernetize(MLP(), embedding_dim=3, num_embeddings=4, example_inputs=(x,))
    variables = hnet.init(KEY, x)
    expected = hand_mlp(hand_flat(variables["params"]), x)
    np.testing.assert_allclose(jax.jit(hnet.apply)(variables, x), expected, rtol=1e-6, atol=1e-6)

    def loss(params):
        return jnp.mean(hnet.apply({"params": params}, x) ** 2)

    def hand_loss(params):
        return jnp.mean(hand_mlp(hand_flat(params), x) ** 2)

    grads, jit_grads = jax.grad(loss)(variables["params"]), jax.jit(jax.grad(loss))(variables["params"])
    hand_grads = jax.grad(hand_loss)(variables["params"])
    for g in (grads, jit_grads):
        assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(variables["params"])
        for a, e in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(hand_grads)):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    assert all(jnp.abs(g).sum() > 0 for g in jax.tree_util.tree_leaves(grads))

    # vmap over the inputs, one example at a time.
    per_example = jax.vmap(lambda xi: hnet.apply(variables, xi))(x)
    np.testing.assert_allclose(per_example, expected, rtol=1e-6, atol=1e-6)
    # vmap over a batch of generated weight vectors (hyper-nn's pattern).
    flats = jax.random.normal(jax.random.key(5), (3, hnet.layout.generated_size))
    batched = jax.vmap(lambda g, xi: hnet.apply(variables, xi, generated_params=g))(flats, x[:3])
    np.testing.assert_allclose(batched, jnp.stack([hand_mlp(flats[i], x[i]) for i in range(3)]), rtol=1e-6, atol=1e-6)
    # vmap over variables: an ensemble of hypernetworks.
    ensemble = jax.vmap(lambda key: hnet.init(key, x))(jax.random.split(KEY, 3))
    assert ensemble["params"]["weight_generator"]["kernel"].shape == (3, 3, 13)
    outputs = jax.vmap(hnet.apply, in_axes=(0, None))(ensemble, x)
    for i in range(3):
        member = jax.tree_util.tree_map(lambda a: a[i], ensemble)
        np.testing.assert_allclose(outputs[i], hand_mlp(hand_flat(member["params"]), x), rtol=1e-6, atol=1e-6)
    assert not np.allclose(outputs[0], outputs[1])


def test_dropout_rngs_pass_through():
    x = inputs((8, 4))
    hnet = hypernetize(MLP(features=16, dropout=0.5), embedding_dim=3, num_embeddings=4, example_inputs=(x,))
    variables = hnet.init(KEY, x)

    def train(key):
        return hnet.apply(variables, x, train=True, rngs={"dropout": key})

    first, again, other = train(jax.random.key(1)), train(jax.random.key(1)), train(jax.random.key(2))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    np.testing.assert_array_equal(jax.jit(train)(jax.random.key(1)), first)
    evaluation = hnet.apply(variables, x)  # deterministic: no rng needed
    np.testing.assert_allclose(evaluation, hand_mlp(hand_flat(variables["params"]), x, features=16), rtol=1e-6, atol=1e-6)
    assert not np.allclose(first, evaluation)
    with pytest.raises(InvalidRngError, match=r"needs PRNG for \"dropout\""):
        hnet.apply(variables, x, train=True)


def test_the_users_module_and_variables_are_left_unchanged():
    x = inputs((3, 6, 6, 2))
    model = CNN()
    pretrained = randomized(model.init(KEY, x, train=False))
    snapshot = jax.tree_util.tree_map(np.array, pretrained)
    expected = model.apply(pretrained, x, train=False)
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=5, targets=nn.Conv, example_inputs=(x,),
                       init_kwargs={"train": False}, variables=pretrained)  # fmt: skip
    variables = hnet.init(KEY, x, train=False)
    _, updates = hnet.apply(variables, x, train=True, mutable=["batch_stats"])
    grads = jax.grad(lambda p: hnet.apply({**variables, "params": p}, x, train=False).sum())(variables["params"])
    hnet.apply(variables, method=hnet.generated_variables)
    assert not np.allclose(updates["batch_stats"]["BatchNorm_0"]["mean"], snapshot["batch_stats"]["BatchNorm_0"]["mean"])
    assert jnp.abs(grads["target_network"]["Dense_0"]["kernel"]).sum() > 0
    assert_trees_equal(pretrained, snapshot)
    assert model.scope is None and model == CNN()  # still unbound, fields unchanged
    assert_trees_equal(model.apply(pretrained, x, train=False), expected)


# ------------------------------------------------------------------ training with optax


def test_training_an_mlp_with_optax_under_jit():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 4)), jnp.float32)
    y = jnp.asarray(np.sin(np.asarray(x) @ rng.standard_normal((4, 3))), jnp.float32)  # a fixed regression batch
    hnet = hypernetize(MLP(features=16), embedding_dim=8, num_embeddings=8, targets=["Dense_0"], example_inputs=(x,))
    variables = hnet.init(KEY, x)
    optimizer = optax.adam(1e-2)
    state = optimizer.init(variables["params"])

    def loss_fn(params):
        return jnp.mean((hnet.apply({"params": params}, x) - y) ** 2)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    params, losses = variables["params"], []
    for _ in range(60):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    for part in ("embedding_module", "weight_generator", "target_network"):  # all three trained
        before, after = jax.tree_util.tree_leaves(variables["params"][part]), jax.tree_util.tree_leaves(params[part])
        assert all(not np.allclose(a, b) for a, b in zip(after, before)), part


def test_training_a_cnn_with_batchnorm_with_optax_under_jit():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((32, 6, 6, 2)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, 32))
    hnet = hypernetize(CNN(), embedding_dim=8, num_embeddings=8, example_inputs=(x,), init_kwargs={"train": False})
    variables = hnet.init(KEY, x, train=False)
    optimizer = optax.adam(3e-2)
    state = optimizer.init(variables["params"])

    def loss_fn(params, batch_stats):
        logits, updates = hnet.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

    @jax.jit
    def step(params, batch_stats, state):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), batch_stats, state, loss

    params, batch_stats, losses = variables["params"], variables["batch_stats"], []
    for _ in range(40):
        params, batch_stats, state, loss = step(params, batch_stats, state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses[::10]
    assert jax.tree_util.tree_structure(batch_stats) == jax.tree_util.tree_structure(variables["batch_stats"])
    assert not np.allclose(batch_stats["BatchNorm_0"]["mean"], variables["batch_stats"]["BatchNorm_0"]["mean"])
    # The trained running statistics serve evaluation, here and in the original model.
    trained = {"params": params, "batch_stats": batch_stats}
    evaluated = hnet.apply(trained, x, train=False)
    generated = hnet.apply(trained, method=hnet.generated_variables)
    np.testing.assert_allclose(evaluated, CNN().apply({"params": generated, "batch_stats": batch_stats}, x, train=False),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
