"""The hyper-nn 0.2 JAX API (``hypernn.jax``): hyper-nn's semantics on today's jax/flax,
checked against hand-written math, and its known defects fixed."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypernn.errors import (
    CheckpointMismatchError,
    ConfigurationError,
    GeneratedParamsError,
    GeneratedParamsTypeError,
    GeneratorOutputError,
    OptionTypeError,
    UnsupportedModelError,
)
from hypernn.jax import JaxHyperNetwork, JaxLinearHyperNetwork
from hypernn.jax.hypernet import create_param_tree
from hypernn.jax.utils import count_jax_params, get_weight_chunk_dims

X = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), dtype=jnp.float32)
LEAVES = [("layers_0", "bias", (8,)), ("layers_0", "kernel", (4, 8)), ("layers_2", "bias", (3,)), ("layers_2", "kernel", (8, 3))]


def mlp():
    return nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])


def build(cls=JaxHyperNetwork, seed=0, **kwargs):
    kwargs.setdefault("embedding_dim", 5)
    kwargs.setdefault("num_embeddings", 4)
    hnet = cls.from_target(mlp(), inputs=X[:1], **kwargs)
    return hnet, hnet.init(jax.random.key(seed), X[:1])


def hand_flat(params):
    """hyper-nn's generation written out: Dense(Embed(arange(E))), flattened."""
    generator = params["weight_generator"]
    return (params["embedding_module"]["embedding"] @ generator["kernel"] + generator["bias"]).reshape(-1)


def hand_tree(flat):
    tree, offset = {}, 0
    for layer, name, shape in LEAVES:
        size = int(np.prod(shape))
        tree.setdefault(layer, {})[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return tree


def hand_mlp(flat, x):
    p = hand_tree(flat)
    hidden = jax.nn.relu(x @ p["layers_0"]["kernel"] + p["layers_0"]["bias"])
    return hidden @ p["layers_2"]["kernel"] + p["layers_2"]["bias"]


def maybe_jit(function, jit):
    return jax.jit(function) if jit else function


# ------------------------------------------------------------------ hyper-nn's semantics


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_forward_and_gradients_match_hand_written_math(jit):
    hnet, variables = build()
    output = maybe_jit(hnet.apply, jit)(variables, X)
    np.testing.assert_allclose(output, hand_mlp(hand_flat(variables["params"]), X), rtol=1e-5, atol=1e-6)

    def loss(params):
        return jnp.sum(hnet.apply({"params": params}, X) ** 2)

    def hand_loss(params):
        return jnp.sum(hand_mlp(hand_flat(params), X) ** 2)

    got, want = maybe_jit(jax.grad(loss), jit)(variables["params"]), jax.grad(hand_loss)(variables["params"])
    jax.tree_util.tree_map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), got, want)


def test_sizes_structure_and_variables():
    hnet, variables = build()
    assert (hnet.num_target_parameters, hnet.weight_chunk_dim, get_weight_chunk_dims(67, 4)) == (67, 17, 17)
    assert list(hnet.target_weight_shapes) == [shape for _, _, shape in LEAVES]  # jax leaf order
    assert hnet.target_treedef == jax.tree_util.tree_structure({"params": hand_tree(jnp.zeros(67))})
    assert jax.tree_util.tree_map(jnp.shape, variables) == {"params": {
        "embedding_module": {"embedding": (4, 5)}, "weight_generator": {"kernel": (5, 17), "bias": (17,)}}}  # fmt: skip
    embedding = variables["params"]["embedding_module"]["embedding"]
    assert float(embedding.min()) >= 0 and float(embedding.max()) < 0.01  # hyper-nn's uniform() init
    flat, aux = hnet.apply(variables, X, method=hnet.generate_params)  # the README passes the input along
    assert flat.shape == (68,) and set(aux) == {"embedding"}
    np.testing.assert_allclose(flat, hand_flat(variables["params"]), rtol=1e-6)


def test_has_aux_given_params_and_longer_vectors():
    hnet, variables = build()
    output, flat, aux = hnet.apply(variables, X, has_aux=True)
    assert set(aux) == {"embedding"} and flat.shape == (68,)
    again, _, empty = hnet.apply(variables, X, generated_params=2 * flat, has_aux=True)
    assert empty == {}
    np.testing.assert_allclose(again, hand_mlp(2 * flat, X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hnet.apply(variables, X, generated_params=flat[:67]), output, rtol=1e-6)
    longer = jnp.concatenate([flat, jnp.ones(30)])
    np.testing.assert_allclose(hnet.apply(variables, X, generated_params=longer), output, rtol=1e-6)


def test_num_target_parameters_is_honoured():
    hnet, variables = build(num_target_parameters=80)
    assert (hnet.num_target_parameters, hnet.weight_chunk_dim) == (80, 20)
    assert hnet.apply(variables, X, method=hnet.generate_params)[0].shape == (80,)
    np.testing.assert_allclose(hnet.apply(variables, X), hand_mlp(hand_flat(variables["params"]), X), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigurationError, match=r"`num_target_parameters`=50 is less than the 67 parameter values"):
        build(num_target_parameters=50)
    with pytest.raises(ConfigurationError, match=r"4 chunks of `weight_chunk_dim`=10 hold 40 values, fewer than the 67"):
        build(weight_chunk_dim=10)


def test_linear_hypernetwork_is_the_same_network():
    (linear, lv), (base, bv) = build(JaxLinearHyperNetwork), build(JaxHyperNetwork)
    assert isinstance(linear, JaxHyperNetwork)
    np.testing.assert_allclose(linear.apply(lv, X), base.apply(bv, X), rtol=1e-6)


@pytest.mark.parametrize(
    "vector, error, message",
    [
        (jnp.zeros(10), GeneratedParamsError, r"`generated_params` has 10 values; the target network needs at least 67"),
        (jnp.zeros((2, 68)), GeneratedParamsError, r"must be a vector; use jax.vmap .* got shape \(2, 68\)"),
        (jnp.zeros(68, dtype=jnp.int32), GeneratedParamsTypeError, r"must be a floating-point array; got dtype int32"),
        ([0.0] * 68, GeneratedParamsTypeError, r"must be a jax array; got list"),
    ],
)
def test_bad_generated_params_raise_clear_errors(vector, error, message):
    hnet, variables = build()
    with pytest.raises(error, match=message):
        hnet.apply(variables, X, generated_params=vector)


def test_construction_errors():
    with pytest.raises(ConfigurationError, match=r"Input shape or inputs must be specified"):
        JaxHyperNetwork.from_target(mlp(), embedding_dim=2, num_embeddings=2)
    with pytest.raises(OptionTypeError, match=r"takes the constructor's arguments by keyword; got 1 more positional"):
        JaxHyperNetwork.from_target(mlp(), None, None, X, 4, 4, None, "extra")
    with pytest.raises(UnsupportedModelError, match=r"`model` must be a flax.linen.Module; got str"):
        JaxHyperNetwork.from_target("mlp", inputs=X)
    with pytest.raises(GeneratorOutputError, match=r"\(num_embeddings, weight_chunk_dim\)=\(4, 17\); it gave \(4, 9\)"):
        build(custom_weight_generator=nn.Dense(9))


# ------------------------------------------------------------------ customising


def test_custom_weight_generator_and_embedding_work():
    generator = nn.Sequential([nn.Dense(16), nn.tanh, nn.Dense(17)])
    hnet, variables = build(custom_weight_generator=generator, custom_embedding_module=nn.Embed(4, 5))
    params = variables["params"]
    assert sorted(params) == ["embedding_module", "weight_generator"]
    assert sorted(params["weight_generator"]) == ["layers_0", "layers_2"]
    flat = generator.apply({"params": params["weight_generator"]}, params["embedding_module"]["embedding"]).reshape(-1)
    np.testing.assert_allclose(hnet.apply(variables, X), hand_mlp(flat, X), rtol=1e-5, atol=1e-6)


class TaskHypernetwork(JaxHyperNetwork):
    """The README's multi-task pattern, in flax: generate_params with its own inputs."""

    num_tasks: int = 2

    def make_weight_generator(self):
        return nn.Dense(self.weight_chunk_dim)

    def generate_params(self, inp, task):
        embedding = self.embedding_module(jnp.arange(self.num_embeddings))
        tiled = jnp.repeat(task[None, :], self.num_embeddings, axis=0)
        return self.weight_generator(jnp.concatenate([embedding, tiled], axis=-1)).reshape(-1), {"embedding": embedding}


def test_subclass_with_extra_generate_params_inputs():
    hnet = TaskHypernetwork.from_target(mlp(), inputs=X[:1], embedding_dim=5, num_embeddings=4, num_tasks=2)
    task = jnp.array([0.0, 1.0])
    variables = hnet.init(jax.random.key(0), X[:1], generate_params_kwargs={"task": task})
    params = variables["params"]
    assert params["weight_generator"]["kernel"].shape == (7, 17)
    inputs = jnp.concatenate([params["embedding_module"]["embedding"], jnp.tile(task, (4, 1))], axis=-1)
    flat = (inputs @ params["weight_generator"]["kernel"] + params["weight_generator"]["bias"]).reshape(-1)
    np.testing.assert_allclose(hnet.apply(variables, X, generate_params_kwargs={"task": task}), hand_mlp(flat, X),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


# ------------------------------------------------------------------ batch statistics stay out of the layout


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        return nn.BatchNorm(use_running_average=not train, momentum=0.5)(nn.Dense(6)(x))


def test_batch_stats_stay_out_of_the_generated_layout():
    target = BNNet()
    hnet = JaxHyperNetwork.from_target(target, inputs=X[:1], embedding_dim=3, num_embeddings=4, init_kwargs={"train": False})
    assert hnet.num_target_parameters == 4 * 6 + 6 + 6 + 6  # params only: hyper-nn also laid out batch_stats
    assert list(hnet.target_weight_shapes) == [(6,), (6,), (6,), (4, 6)]
    variables = hnet.init(jax.random.key(0), X[:1], train=False)
    assert jax.tree_util.tree_map(jnp.shape, variables["batch_stats"]) == {"BatchNorm_0": {"mean": (6,), "var": (6,)}}
    output, updates = hnet.apply(variables, X, train=True, mutable=["batch_stats"])
    flat = hand_flat(variables["params"])
    params = {"BatchNorm_0": {"bias": flat[:6], "scale": flat[6:12]}, "Dense_0": {"bias": flat[12:18], "kernel": flat[18:42].reshape(4, 6)}}
    expected, expected_updates = target.apply({"params": params, "batch_stats": variables["batch_stats"]}, X, train=True,
                                              mutable=["batch_stats"])  # fmt: skip
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), updates, expected_updates)
    inference = hnet.apply({**variables, **updates}, X, train=False)
    np.testing.assert_allclose(inference, target.apply({"params": params, **updates}, X, train=False), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ utilities, saving, transforms


def test_count_jax_params_takes_one_array_a_list_or_shapes():
    target = mlp()
    assert count_jax_params(target, inputs=jnp.zeros((2, 4))) == 67  # hyper-nn: TypeError for a batch of 2
    assert count_jax_params(target, inputs=[jnp.zeros((1, 4))]) == count_jax_params(target, input_shape=[(5, 4)]) == 67
    assert count_jax_params(target, input_shape=(1, 4)) == JaxHyperNetwork.count_params(target, [(1, 4)]) == 67
    count, variables = count_jax_params(target, inputs=X, return_variables=True)
    assert count == 67 and variables["params"]["layers_0"]["kernel"].shape == (4, 8)
    assert count_jax_params(BNNet(), inputs=X, train=False) == 42  # params only; kwargs reach init
    with pytest.raises(ValueError, match=r"Input shape or inputs must be specified"):
        count_jax_params(target)


def test_create_param_tree_rebuilds_the_targets_params():
    hnet, variables = build()
    flat = hnet.apply(variables, X, method=hnet.generate_params)[0]
    tree = create_param_tree(flat, hnet.target_weight_shapes, hnet.target_treedef)
    np.testing.assert_allclose(mlp().apply(tree, X), hnet.apply(variables, X), rtol=1e-6)
    with pytest.raises(GeneratedParamsError, match=r"has 60 values; the target network needs at least 67"):
        create_param_tree(flat[:60], hnet.target_weight_shapes, hnet.target_treedef)


def test_save_load_round_trip(tmp_path):
    hnet, variables = build(seed=0)
    _, other = build(seed=1)
    hnet.save(variables, tmp_path / "hnet.msgpack")
    restored = hnet.load(other, tmp_path / "hnet.msgpack")
    np.testing.assert_array_equal(hnet.apply(restored, X), hnet.apply(variables, X))
    bigger, bigger_variables = build(num_embeddings=8)
    with pytest.raises(CheckpointMismatchError, match=r"'params.embedding_module.embedding' is \(4, 5\) in the checkpoint, \(8, 5\) here"):
        bigger.load(bigger_variables, tmp_path / "hnet.msgpack")


def test_vmap_over_vectors_and_direct_construction():
    hnet, variables = build()
    vectors = jnp.asarray(np.random.default_rng(1).normal(size=(5, 68)), dtype=jnp.float32)
    batched = jax.vmap(lambda v: hnet.apply(variables, X, generated_params=v))(vectors)
    np.testing.assert_allclose(batched, jnp.stack([hand_mlp(v, X) for v in vectors]), rtol=1e-5, atol=1e-6)
    direct = JaxHyperNetwork(target_network=mlp(), embedding_dim=5, num_embeddings=4)  # traced at the first init
    direct_variables = direct.init(jax.random.key(0), X[:1])
    apply = functools.partial(direct.apply, direct_variables)
    np.testing.assert_allclose(apply(X), hand_mlp(hand_flat(direct_variables["params"]), X), rtol=1e-5, atol=1e-6)


def test_generated_variables_and_layout():
    hnet, variables = build()
    params = hnet.apply(variables, method=hnet.generated_variables)
    expected = hand_tree(hand_flat(variables["params"]))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), params, expected)
    np.testing.assert_allclose(mlp().apply({"params": params}, X), hnet.apply(variables, X), rtol=1e-6)
    assert "4 chunks x 17 = 68 generated values for 67 target values (1 unused)" in hnet.layout.describe()


def test_direct_construction_of_a_subclass_with_its_own_generate_params():
    hnet = TaskHypernetwork(target_network=mlp(), embedding_dim=5, num_embeddings=4, weight_chunk_dim=17)
    task = jnp.array([1.0, 0.0])
    variables = hnet.init(jax.random.key(0), X[:1], generate_params_kwargs={"task": task})  # traced here, not probed
    assert hnet.apply(variables, X, generate_params_kwargs={"task": task}).shape == (6, 3)
