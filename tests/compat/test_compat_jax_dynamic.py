"""hyper-nn's dynamic JAX hypernetwork (``hypernn.jax.dynamic_hypernet``): its RNN-gated
embeddings checked by hand, and batches (hyper-nn: one sample per call) equal to the loop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypernn.errors import ConditionError, ConditionTypeError, GeneratedParamsError, OptionTypeError
from hypernn.jax import JaxDynamicEmbeddingModule, JaxDynamicHyperNetwork, JaxHyperNetwork
from hypernn.transform.linen.dynamic import LinenDynamicHypernetwork

IN, E, D = 6, 8, 3
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(5, IN)), dtype=jnp.float32)


def mlp():
    return nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(4)])


def build(seed=0, **kwargs):
    hnet = JaxDynamicHyperNetwork.from_target(mlp(), input_dim=IN, embedding_dim=D, num_embeddings=E, inputs=X[:1], **kwargs)
    return hnet, hnet.init(jax.random.key(seed), X[:1])


def hand_params(params, x, hidden):
    """hyper-nn's dynamic generation for one sample ``x`` (1, IN)."""
    cell = params["embedding_module"]["rnn_cell"]["Dense_0"]
    h = jnp.tanh(jnp.concatenate([x, hidden], axis=-1) @ cell["kernel"] + cell["bias"])
    embedding = params["embedding_module"]["embedding"]["embedding"] * h.reshape(E, 1)
    generator = params["weight_generator"]
    return (embedding @ generator["kernel"] + generator["bias"]).reshape(-1), h


def hand_mlp(flat, x):
    b0, k0 = flat[:16], flat[16:112].reshape(IN, 16)
    b2, k2 = flat[112:116], flat[116:180].reshape(16, 4)
    return jax.nn.relu(x @ k0 + b0) @ k2 + b2


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_variables_are_hyper_nns():
    hnet, variables = build()
    assert isinstance(hnet, JaxHyperNetwork) and isinstance(hnet, LinenDynamicHypernetwork)
    assert (hnet.num_target_parameters, hnet.weight_chunk_dim) == (180, 23)
    assert jax.tree_util.tree_map(jnp.shape, variables["params"]) == {
        "embedding_module": {"embedding": {"embedding": (E, D)}, "rnn_cell": {"Dense_0": {"kernel": (IN + E, E), "bias": (E,)}}},
        "weight_generator": {"kernel": (D, 23), "bias": (23,)},
    }


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_one_sample_is_hyper_nns_computation(jit):
    hnet, variables = build()
    apply = jax.jit(hnet.apply, static_argnames="has_aux") if jit else hnet.apply
    x = X[:1]
    output, flat, aux = apply(variables, x, has_aux=True)
    expected_flat, h = hand_params(variables["params"], x, jnp.zeros((1, E)))
    assert flat.shape == (E * 23,) and aux["hidden_state"].shape == (1, E)  # one vector, as in hyper-nn
    close(flat, expected_flat)
    close(aux["hidden_state"], h)
    close(output, hand_mlp(expected_flat, x))
    state = jnp.asarray(RNG.normal(size=(1, E)), dtype=jnp.float32)
    close(apply(variables, x, generate_params_kwargs={"hidden_state": state}),
          hand_mlp(hand_params(variables["params"], x, state)[0], x))  # fmt: skip


def test_embedding_module_shapes():
    module = JaxDynamicEmbeddingModule(input_dim=IN, embedding_dim=D, num_embeddings=E)
    variables = module.init(jax.random.key(0), X[:1])
    one, h1 = module.apply(variables, X[:1])
    many, h = module.apply(variables, X)
    assert (one.shape, h1.shape, many.shape, h.shape) == ((E, D), (1, E), (5, E, D), (5, E))
    close(many[0], one)
    assert module.apply(variables, method=module.init_hidden).shape == (1, E)


def test_a_batch_generates_one_weight_set_per_sample_equal_to_the_loop():
    hnet, variables = build()
    output, flat, aux = hnet.apply(variables, X, has_aux=True)
    assert flat.shape == (5, E * 23) and aux["hidden_state"].shape == (5, E)
    loop = jnp.concatenate([hnet.apply(variables, X[i : i + 1]) for i in range(5)])
    close(output, loop)

    def batched(params):
        return jnp.sum(hnet.apply({"params": params}, X) ** 2)

    def looped(params):
        return sum(jnp.sum(hnet.apply({"params": params}, X[i : i + 1]) ** 2) for i in range(5))

    jax.tree_util.tree_map(close, jax.grad(batched)(variables["params"]), jax.grad(looped)(variables["params"]))


def test_hidden_state_threads_through_steps_and_can_be_shared():
    hnet, variables = build()
    x2 = X * 0.5
    _, _, aux = hnet.apply(variables, X, has_aux=True)
    step2 = hnet.apply(variables, x2, generate_params_kwargs={"hidden_state": aux["hidden_state"]})
    for i in range(5):
        _, h1 = hand_params(variables["params"], X[i : i + 1], jnp.zeros((1, E)))
        flat2, _ = hand_params(variables["params"], x2[i : i + 1], h1)
        close(step2[i : i + 1], hand_mlp(flat2, x2[i : i + 1]))
    shared = jnp.ones((1, E))
    close(hnet.apply(variables, X, generate_params_kwargs={"hidden_state": shared})[2:3],
          hnet.apply(variables, X[2:3], generate_params_kwargs={"hidden_state": shared}))  # fmt: skip


def test_hyper_nn_calls_keep_working():
    hnet, variables = build()
    x, state = X[:1], jnp.ones((1, E))
    expected = hnet.apply(variables, x, generate_params_kwargs={"hidden_state": state})
    close(hnet.apply(variables, x, generate_params_kwargs=dict(x=x, hidden_state=state)), expected)
    flat, _ = hnet.apply(variables, x, state, method=hnet.generate_params)
    close(hnet.apply(variables, x, generated_params=flat), expected)
    # hyper-nn's batching: jax.vmap over single samples, equal to one batched call now
    per_sample = jax.vmap(lambda xi: hnet.apply(variables, xi))(X[:, None, :])
    assert per_sample.shape == (5, 1, 4)
    close(per_sample[:, 0], hnet.apply(variables, X))


def test_errors():
    hnet, variables = build()
    with pytest.raises(ConditionError, match=r"`x` must have shape \(batch, input_dim=6\), one row per sample; got \(5, 4\)"):
        hnet.apply(variables, X, generate_params_kwargs={"x": X[:, :4]})
    with pytest.raises(ConditionTypeError, match=r"`x` must be a floating-point array .* got int32"):
        hnet.apply(variables, X, generate_params_kwargs={"x": jnp.ones((5, IN), jnp.int32)})
    with pytest.raises(ConditionError, match=r"`hidden_state` must have shape \(1, 8\) or \(5, 8\) .* got \(2, 8\)"):
        hnet.apply(variables, X, generate_params_kwargs={"hidden_state": jnp.zeros((2, E))})
    with pytest.raises(GeneratedParamsError, match=r"has 100 values; the target network needs at least 180"):
        hnet.apply(variables, X, generated_params=jnp.zeros((5, 100)))
    with pytest.raises(GeneratedParamsError, match=r"must be a vector or a \(batch, n\) batch of vectors; got shape \(1, 5, 184\)"):
        hnet.apply(variables, X, generated_params=jnp.zeros((1, 5, 184)))
    with pytest.raises(OptionTypeError, match=r"accepts neither the target's inputs"):
        hnet.apply(variables, X, generate_params_kwargs={"h": None})
