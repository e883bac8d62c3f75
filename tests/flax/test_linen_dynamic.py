"""Dynamic linen hypernetworks: per-sample weights generated from a condition.

The reference for every batched call ``hnet.apply(v, x, condition=c)`` (``c`` of shape
``(B, C)``) is a Python loop over samples through the *static* path of the same
hypernetwork, ``hnet.apply(v, x[i:i+1], condition=c[i])``, concatenated (see
:mod:`dynamic_models`); outputs and the gradients of every hypernetwork parameter and
of the condition are compared, eagerly and under ``jax.jit``. Conditional batch norm,
FiLM, the recurrent conditioning and the MLP are also checked against hand-written jnp.

FiLM starts condition-independent (zero-initialised), so every hypernetwork here gets
random conditioning parameters first: otherwise all samples would get the same weights
and a per-sample bug could not show.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dynamic_models import (
    MLP_SHAPES,
    B,
    C,
    assert_close,
    assert_trees_close,
    check_per_sample,
    hand_batch_norm,
    hand_film_flat,
    hand_mlp,
    normal,
    random_variables,
    split_flat,
)

import hypernn
from hypernn import hypernetize
from hypernn.errors import (
    ConditionError,
    GeneratedParamsError,
    ConditionTypeError,
    OptionTypeError,
    ReservedArgumentError,
    UnsupportedModelError,
)
from hypernn.transform.linen import DynamicHypernetizedLinen, LinenDynamicHypernetwork

KEY = jax.random.key(0)


# ---------------------------------------------------------------- models (shapes as in the NNX suite)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="out")(jnp.tanh(nn.Dense(5, name="hidden")(x)))


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):  # (B, 6, 6, 2)
        h = nn.relu(nn.Conv(3, (3, 3), padding="VALID", name="conv")(x))
        h = nn.avg_pool(h, (2, 2), (2, 2))  # (B, 2, 2, 3)
        return nn.Dense(2, name="fc")(h.reshape(h.shape[0], -1))


class LSTM(nn.Module):
    """Returns a pytree: the head's output and the final carry."""

    @nn.compact
    def __call__(self, x):  # (B, L, 3)
        carry, h = nn.RNN(nn.OptimizedLSTMCell(4), return_carry=True, name="rnn")(x)
        return nn.Dense(2, name="head")(h[:, -1]), carry


class CNNBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Conv(3, (3, 3), padding="VALID", name="conv")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.8, name="bn")(h)
        h = nn.avg_pool(nn.relu(h), (2, 2), (2, 2))
        return nn.Dense(2, name="fc")(h.reshape(h.shape[0], -1))


class Block(nn.Module):
    """A pre-norm transformer block: layer norm and self-attention, then an MLP, both residual."""

    @nn.compact
    def __call__(self, x):  # (B, L, 4)
        attention = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4, deterministic=True, name="attn")
        x = x + attention(nn.LayerNorm(name="ln")(x))
        return x + nn.Dense(4, name="fc2")(nn.gelu(nn.Dense(6, name="fc1")(x)))


class Convs(nn.Module):
    """Convolutions of every kind the per-sample path treats apart: strided with SAME
    padding, grouped and kernel-dilated, input-dilated (transposed), 1-D causal."""

    @nn.compact
    def __call__(self, x):  # (B, 7, 7, 2)
        h = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME", name="strided")(x))  # (B, 4, 4, 4)
        h = nn.Conv(4, (2, 2), kernel_dilation=2, padding=((1, 0), (0, 1)), feature_group_count=2, name="grouped")(h)
        h = nn.Conv(3, (2, 2), input_dilation=2, padding=((0, 0), (0, 0)), name="dilated_input")(h)  # (B, 4, 4, 3)
        h = nn.Conv(2, (3,), padding="CAUSAL", kernel_dilation=2, name="causal")(h.reshape(h.shape[0], -1, 3))
        return nn.Dense(2, name="fc")(h.reshape(h.shape[0], -1))


class DenseBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        h = nn.Dense(4, name="dense")(x)
        return nn.BatchNorm(use_running_average=not train, momentum=0.8, name="bn")(h)


class Drop(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dropout(0.5, deterministic=not train)(nn.Dense(8, name="dense")(x))


# ---------------------------------------------------------------- helpers


def build(model, x, c, *more, seed=1, **options):
    """A dynamic hypernetwork (planned from ``(x, *more)``) and random variables of its
    ``init``'s structure (nothing compiled; FiLM moved off its zero start, see
    :func:`random_value`)."""
    options.setdefault("embedding_dim", 4)
    options.setdefault("num_embeddings", 8)
    options.setdefault("example_inputs", (x, *more))  # planned now: the loop's batches of one use this plan too
    if "num_conditions" not in options:
        options.setdefault("condition_dim", C)
    hnet = hypernetize(model, **options)
    assert isinstance(hnet, DynamicHypernetizedLinen)
    shapes = jax.eval_shape(lambda x, more, c: hnet.init(KEY, x, *more, condition=c), x, more, c)
    return hnet, random_variables(shapes, seed)


def film_flat(params, condition):
    """The generated vectors by hand, from the hypernetwork's arrays (FiLM conditioning)."""
    film = params["condition_module"]["to_scale_shift"]
    return hand_film_flat(params["embedding_module"]["embedding"], film["kernel"], film["bias"],
                          params["weight_generator"]["kernel"], params["weight_generator"]["bias"], condition)  # fmt: skip


def pure(hnet, variables, **call):
    """``apply(params, condition, *args)`` for :func:`check_per_sample`."""
    state = {k: v for k, v in variables.items() if k != "params"}
    return lambda params, condition, *args: hnet.apply({"params": params, **state}, *args, condition=condition, **call)


MODELS = {
    "mlp": (MLP, (B, 4)),
    "cnn": (CNN, (B, 6, 6, 2)),
    "lstm": (LSTM, (B, 5, 3)),
    "cnn_bn": (CNNBN, (B, 6, 6, 2)),  # eval mode: running statistics
    "transformer": (Block, (B, 3, 4)),
}


@pytest.fixture(scope="module")
def models():
    """name -> (hnet, variables, x, c), built once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            model, shape = MODELS[name]
            x, c = normal(2, shape), normal(3, (B, C))
            hnet, variables = build(model(), x, c)
            cache[name] = hnet, variables, x, c
        return cache[name]

    return get


# ---------------------------------------------------------------- 1. per-sample == loop


@pytest.mark.parametrize("name", list(MODELS))
def test_per_sample_outputs_and_gradients_equal_the_loop_with_and_without_jit(models, name):
    hnet, variables, x, c = models(name)
    out = check_per_sample(pure(hnet, variables), variables["params"], c, (x,))
    if name == "lstm":  # a pytree output: the per-sample batch axis of size 1 dropped in every leaf
        head, (cell, hidden) = out
        assert head.shape == (B, 2) and cell.shape == hidden.shape == (B, 4)


def test_convolutions_of_every_kind_equal_the_loop():
    x, c = normal(2, (B, 7, 7, 2)), normal(3, (B, C))
    hnet, variables = build(Convs(), x, c)
    check_per_sample(pure(hnet, variables), variables["params"], c, (x,), modes=["jit"])


def test_output_depends_on_its_own_condition_only_and_outer_vmap(models):
    hnet, variables, x, c = models("mlp")
    run = jax.jit(lambda x, c: hnet.apply(variables, x, condition=c))
    jac = jax.jit(jax.jacrev(run, argnums=1))(x, c)  # (B, 3, B, C)
    assert jac.shape == (B, 3, B, C)
    for i in range(B):
        for j in range(B):
            assert (np.abs(jac[i, :, j]).sum() > 0) == (i == j), (i, j)
    # jax.vmap over batched calls (an ensemble of batches) equals separate calls
    xs, cs = jnp.stack([x, x[::-1]]), jnp.stack([c, normal(4, (B, C))])
    mapped = jax.jit(jax.vmap(run))(xs, cs)
    for k in range(2):
        assert_close(mapped[k], run(xs[k], cs[k]))


def test_mlp_equals_hand_written_generation_and_batched_matmul(models):
    hnet, variables, x, c = models("mlp")
    params = variables["params"]
    flat = film_flat(params, c)
    assert flat.shape == (B, hnet.layout.generated_size) == (B, 48)  # 43 values, 8 chunks of 6
    got_flat, aux = hnet.apply(variables, method=hnet.generate_params, condition=c)
    assert_close(got_flat, flat, "generate_params")
    assert aux["embedding"].shape == (B, 8, 4)
    expected = hand_mlp(split_flat(flat, MLP_SHAPES), x)
    assert_close(hnet.apply(variables, x, condition=c), expected, "eager")
    assert_close(jax.jit(lambda v, x, c: hnet.apply(v, x, condition=c))(variables, x, c), expected, "jit")
    # generated_variables: the model's params for one condition, in the model's structure
    one = hnet.apply(variables, method=hnet.generated_variables, condition=c[2])
    tensors = split_flat(flat[2], MLP_SHAPES)
    assert_trees_close(one, {"hidden": {"kernel": tensors["hidden.kernel"], "bias": tensors["hidden.bias"]},
                             "out": {"kernel": tensors["out.kernel"], "bias": tensors["out.bias"]}})  # fmt: skip
    assert_close(MLP().apply({"params": one}, x[2:3]), expected[2:3], "generated_variables")

    # gradients of the hypernetwork's parameters and the condition, against the hand computation
    cotangent = normal(7, (B, 3))

    def loss(params, c):
        return jnp.sum(hnet.apply({"params": params}, x, condition=c) * cotangent)

    def hand_loss(params, c):
        return jnp.sum(hand_mlp(split_flat(film_flat(params, c), MLP_SHAPES), x) * cotangent)

    assert_trees_close(jax.grad(loss, argnums=(0, 1))(params, c), jax.jit(jax.grad(hand_loss, argnums=(0, 1)))(params, c))


# ---------------------------------------------------------------- 2. conditional batch norm


@pytest.mark.parametrize("targets", [None, ["dense"]], ids=["per_sample_scale", "shared_scale"])
def test_conditional_batch_norm_in_training_matches_hand_computation(targets):
    x, c = normal(2, (B, 4)), normal(3, (B, C))
    hnet, variables = build(DenseBN(), x, c, targets=targets)
    params, stats = variables["params"], variables["batch_stats"]["bn"]
    shapes = {"dense.kernel": (4, 4), "dense.bias": (4,)}
    if targets is None:
        shapes.update({"bn.scale": (4,), "bn.bias": (4,)})
    assert set(hnet.selection.names) == set(shapes)

    def generated(params, c):
        p = split_flat(film_flat(params, c), shapes)
        h = jnp.einsum("bi,bio->bo", x, p["dense.kernel"]) + p["dense.bias"]  # per-sample weights
        kept = params.get("target_network", {}).get("bn", {})
        return h, p.get("bn.scale", kept.get("scale")), p.get("bn.bias", kept.get("bias"))

    def hand(params, c):
        return hand_batch_norm(*generated(params, c))

    def call(params, c):
        return hnet.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, condition=c,
                          train=True, mutable=["batch_stats"])  # fmt: skip

    expected, mean, var = hand(params, c)
    for run in (call, jax.jit(call)):
        out, updates = run(params, c)
        assert_close(out, expected, "output")
        new = updates["batch_stats"]["bn"]  # updated once, from the whole batch's statistics
        assert_close(new["mean"], 0.8 * stats["mean"] + 0.2 * mean, "running mean")
        assert_close(new["var"], 0.8 * stats["var"] + 0.2 * var, "running var")

    cotangent = normal(8, (B, 4))
    got = jax.jit(jax.grad(lambda p, c: jnp.sum(call(p, c)[0] * cotangent), argnums=(0, 1)))(params, c)
    want = jax.jit(jax.grad(lambda p, c: jnp.sum(hand(p, c)[0] * cotangent), argnums=(0, 1)))(params, c)
    assert_trees_close(got, want)
    assert np.abs(got[0]["condition_module"]["to_scale_shift"]["kernel"]).sum() > 0

    # evaluation normalises with the running statistics, still with per-sample weights
    h, scale, bias = generated(params, c)
    assert_close(hnet.apply(variables, x, condition=c, train=False),
                 (h - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5) * scale + bias, "eval")  # fmt: skip


def test_batch_norm_training_with_one_condition_is_plain_batch_norm():
    x, c = normal(2, (B, 4)), normal(3, (C,))
    hnet, variables = build(DenseBN(), x, c)
    out, updates = hnet.apply(variables, x, condition=c, train=True, mutable=["batch_stats"])
    batched, batched_updates = hnet.apply(variables, x, condition=jnp.broadcast_to(c, (B, C)), train=True,
                                          mutable=["batch_stats"])  # fmt: skip
    assert_close(batched, out)
    assert_trees_close(batched_updates, updates)
    generated = hnet.apply(variables, method=hnet.generated_variables, condition=c)
    ref, ref_updates = DenseBN().apply({"params": generated, "batch_stats": variables["batch_stats"]}, x, train=True,
                                       mutable=["batch_stats"])  # fmt: skip
    assert_close(out, ref)
    assert_trees_close(updates, ref_updates)


# ---------------------------------------------------------------- 3. dropout


def test_dropout_masks_differ_per_sample_and_eval_equals_the_loop():
    x = jnp.broadcast_to(normal(2, (1, 4)), (B, 4))  # the same input ...
    c = jnp.broadcast_to(normal(3, (1, C)), (B, C))  # ... and condition for every sample
    hnet, variables = build(Drop(), x, c)

    def train(key):
        return hnet.apply(variables, x, condition=c, train=True, rngs={"dropout": key})

    out = train(jax.random.key(1))
    zeros = np.asarray(out == 0)
    assert zeros.any() and not zeros.all()
    assert any(not np.array_equal(zeros[0], zeros[i]) for i in range(1, B)), "the same mask for every sample"
    reference = hnet.apply(variables, x[:1], condition=c[0])[0]  # deterministic
    assert_close(np.where(zeros, 0.0, 2 * reference), out)  # kept values scaled by 1 / (1 - rate)
    np.testing.assert_array_equal(train(jax.random.key(1)), out)  # reproducible for the same key
    assert_close(jax.jit(train)(jax.random.key(1)), out)
    assert not np.array_equal(train(jax.random.key(2)), out)
    # deterministic: the batch equals the loop (a varied batch)
    xs, cs = normal(4, (B, 4)), normal(5, (B, C))
    check_per_sample(pure(hnet, variables, train=False), variables["params"], cs, (xs,), modes=["jit"])


# ---------------------------------------------------------------- 4. conditions, ids, conditioning modules


def test_init_builds_a_condition_independent_film_hypernetwork():
    x, c = normal(2, (B, 4)), normal(3, (B, C))
    hnet = hypernetize(DenseBN(), embedding_dim=4, num_embeddings=8, condition_dim=C)  # planned lazily at init
    variables = jax.jit(lambda key, c: hnet.init(key, x, condition=c, train=False))(KEY, c)
    shapes = jax.tree_util.tree_map(jnp.shape, variables)
    assert shapes["params"] == {"condition_module": {"to_scale_shift": {"kernel": (C, 8), "bias": (8,)}},
                                "embedding_module": {"embedding": (8, 4)},
                                "weight_generator": {"kernel": (4, 4), "bias": (4,)}}  # fmt: skip
    assert_trees_close(variables["batch_stats"], {"bn": {"mean": np.zeros(4), "var": np.ones(4)}})
    assert hnet.layout.num_params == 4 * 4 + 4 + 4 + 4
    # FiLM starts at zero: every condition gives the same weights, until it is trained
    np.testing.assert_array_equal(variables["params"]["condition_module"]["to_scale_shift"]["kernel"], 0)
    run = jax.jit(lambda v, c: hnet.apply(v, x, condition=c, train=False))
    assert_close(run(variables, c), run(variables, normal(4, (B, C))))
    assert_close(run(variables, c), run(variables, c[0]))
    grads = jax.grad(lambda p: jnp.sum(run({**variables, "params": p}, c) ** 2))(variables["params"])
    assert np.abs(grads["condition_module"]["to_scale_shift"]["kernel"]).sum() > 0


def test_init_in_training_mode_leaves_batch_statistics_as_the_model_init_does():
    x, c = normal(2, (B, 4)), normal(3, (B, C))
    hnet = hypernetize(DenseBN(), embedding_dim=4, num_embeddings=8, condition_dim=C)
    variables = jax.jit(lambda key, c: hnet.init(key, x, condition=c))(KEY, c)  # DenseBN: train=True
    assert_trees_close(variables["batch_stats"], {"bn": {"mean": np.zeros(4), "var": np.ones(4)}})


def test_one_condition_equals_it_broadcast_to_the_batch(models):
    hnet, variables, x, c = models("cnn")
    one = hnet.apply(variables, x, condition=c[1])
    assert_close(hnet.apply(variables, x, condition=jnp.broadcast_to(c[1], (B, C))), one)
    hnet_mlp, v_mlp, x_mlp, _ = models("mlp")
    flat = film_flat(v_mlp["params"], c[1])
    assert flat.shape == (48,)
    tensors = {k: jnp.broadcast_to(v, (B, *v.shape)) for k, v in split_flat(flat, MLP_SHAPES).items()}
    assert_close(hnet_mlp.apply(v_mlp, x_mlp, condition=c[1]), hand_mlp(tensors, x_mlp))


def test_integer_ids_equal_the_learned_embedding_vectors(ids_hnet):
    hnet, variables, x = ids_hnet
    ids = jnp.array([3, 0, 3, 4])
    params = variables["params"]
    table = params["condition_embedding"]["embedding"]
    assert table.shape == (5, C)
    out = hnet.apply(variables, x, condition=ids)
    # the same hypernetwork given the embedding vectors as float conditions
    floats = hypernetize(MLP(), embedding_dim=4, num_embeddings=8, condition_dim=C, example_inputs=(x,))
    without = {"params": {k: v for k, v in params.items() if k != "condition_embedding"}}
    assert_close(out, floats.apply(without, x, condition=table[ids]))
    assert_close(out, hand_mlp(split_flat(film_flat(params, table[ids]), MLP_SHAPES), x))
    assert_close(out[0], out[2])  # the same id: the same weights (x[0] == x[2])
    # one id for the whole batch: a 0-d array or a Python int
    assert_close(hnet.apply(variables, x, condition=jnp.array(3)), floats.apply(without, x, condition=table[3]))
    assert_close(hnet.apply(variables, x, condition=3), hnet.apply(variables, x, condition=jnp.full((B,), 3)))
    # the loop, with gradients reaching the used ids' embeddings only
    check_per_sample(pure(hnet, variables), params, ids, (x,), modes=["jit"])
    grads = jax.jit(jax.grad(lambda p, ids: jnp.sum(hnet.apply({"params": p}, x, condition=ids) ** 2)))(params, ids)
    rows = np.abs(np.asarray(grads["condition_embedding"]["embedding"])).sum(1)
    assert (rows[[0, 3, 4]] > 0).all() and (rows[[1, 2]] == 0).all()


def test_concat_conditioning():
    x, c = normal(2, (B, 4)), normal(3, (B, C))
    hnet, variables = build(MLP(), x, c, condition_factory=hypernn.conditioning.concat(projection_dim=3))
    params = variables["params"]
    assert params["weight_generator"]["kernel"].shape == (7, 6)  # embedding_dim 4 + projection 3
    _, aux = hnet.apply(variables, method=hnet.generate_params, condition=c)
    projection = params["condition_module"]["projection"]
    embedding = params["embedding_module"]["embedding"]
    hand = jnp.concatenate([jnp.broadcast_to(embedding, (B, 8, 4)),
                            jnp.broadcast_to((c @ projection["kernel"] + projection["bias"])[:, None], (B, 8, 3))], -1)  # fmt: skip
    assert_close(aux["embedding"], hand)
    flat = (hand @ params["weight_generator"]["kernel"] + params["weight_generator"]["bias"]).reshape(B, -1)
    assert_close(hnet.apply(variables, x, condition=c), hand_mlp(split_flat(flat, MLP_SHAPES), x))
    check_per_sample(pure(hnet, variables), params, c, (x,), modes=["jit"])
    default = hypernetize(MLP(), embedding_dim=4, num_embeddings=8, condition_dim=C, example_inputs=(x,),
                          condition_factory=hypernn.conditioning.concat())  # fmt: skip
    assert jax.eval_shape(lambda: default.init(KEY, x, condition=c))["params"]["weight_generator"]["kernel"].shape == (8, 6)


def test_recurrent_conditioning_threads_its_state():
    x, c1, c2 = normal(2, (B, 4)), normal(3, (B, C)), normal(4, (B, C))
    hnet, variables = build(MLP(), x, c1, condition_factory=hypernn.conditioning.recurrent())
    params = variables["params"]
    cell, embedding = params["condition_module"], params["embedding_module"]["embedding"]

    def hand_state(c, h):
        return jnp.tanh(c @ cell["input"]["kernel"] + cell["input"]["bias"] + h @ cell["hidden"]["kernel"])

    def hand_out(c, h):
        gated = embedding * hand_state(c, h)[..., None]
        flat = (gated @ params["weight_generator"]["kernel"] + params["weight_generator"]["bias"]).reshape(B, -1)
        return hand_mlp(split_flat(flat, MLP_SHAPES), x)

    zero = jnp.zeros((B, 8))
    out1, flat1, aux1 = hnet.apply(variables, x, condition=c1, has_aux=True)
    h1 = aux1["hidden_state"]
    assert h1.shape == (B, 8) and flat1.shape == (B, 48)
    assert_close(h1, hand_state(c1, zero))
    assert_close(aux1["embedding"], embedding * h1[..., None])
    assert_close(out1, hand_out(c1, zero))
    out2, _, aux2 = hnet.apply(variables, x, condition=c2, generate_params_kwargs={"hidden_state": h1}, has_aux=True)
    assert_close(aux2["hidden_state"], hand_state(c2, h1))
    assert_close(out2, hand_out(c2, h1))
    assert not np.allclose(out2, hnet.apply(variables, x, condition=c2), atol=1e-3)  # the state matters
    for i in range(B):  # each sample with its own state
        o, _, a = hnet.apply(variables, x[i : i + 1], condition=c2[i], generate_params_kwargs={"hidden_state": h1[i]},
                             has_aux=True)  # fmt: skip
        assert a["hidden_state"].shape == (8,)
        assert_close(o, out2[i : i + 1])
        assert_close(a["hidden_state"], aux2["hidden_state"][i])
    # (from the zero state the hidden kernel gets no gradient)
    check_per_sample(pure(hnet, variables), params, c1, (x,), modes=["jit"], generated_paths=("weight_generator", "input"))

    def two_steps(p):
        h = hnet.apply({"params": p}, method=hnet.generate_params, condition=c1)[1]["hidden_state"]
        return jnp.sum(hnet.apply({"params": p}, x, condition=c2, generate_params_kwargs={"hidden_state": h}) ** 2)

    grads = jax.jit(jax.grad(two_steps))(params)  # through both steps: the hidden kernel too
    assert np.abs(grads["condition_module"]["hidden"]["kernel"]).sum() > 0


def test_generated_params_batch_and_has_aux(models):
    hnet, variables, x, c = models("mlp")
    out, flat, aux = hnet.apply(variables, x, condition=c, has_aux=True)
    assert flat.shape == (B, 48) and aux["embedding"].shape == (B, 8, 4)
    assert_close(flat, film_flat(variables["params"], c))
    assert_close(out, hnet.apply(variables, x, condition=c))
    given, given_flat, given_aux = hnet.apply(variables, x, generated_params=flat, has_aux=True)
    assert_close(given, out)
    assert given_flat is flat and given_aux == {}
    for i in range(B):  # row i of a (B, n) batch for sample i
        assert_close(hnet.apply(variables, x[i : i + 1], generated_params=flat[i]), out[i : i + 1])
    assert_close(hnet.apply(variables, x, generated_params=flat[:, :43]), out)  # without the generator's surplus
    with pytest.raises(GeneratedParamsError, match=r"a \(B, n\) batch of vectors .*got shape \(1, 4, 48\)"):
        hnet.apply(variables, x, generated_params=flat[None])


# ---------------------------------------------------------------- 5. errors


class TakesCondition(nn.Module):
    @nn.compact
    def __call__(self, x, condition):
        return nn.Dense(2, name="dense")(x) * condition


class Shifted(nn.Module):
    @nn.compact
    def __call__(self, x, shift, scale=1.0):
        return nn.Dense(3)(x) * scale + shift


class Counts(nn.Module):
    """Keeps a decoding-style cache."""

    @nn.compact
    def __call__(self, x):
        count = self.variable("cache", "count", lambda: jnp.zeros((), jnp.int32))
        count.value += 1
        return nn.Dense(2)(x)


def test_condition_errors(models):
    hnet, variables, x, c = models("mlp")
    with pytest.raises(ConditionError, match="needs a condition"):
        hnet.apply(variables, x)
    with pytest.raises(ConditionError, match=r"must have shape \(3,\) .* or \(B, 3\) .*got \(4, 4\)"):
        hnet.apply(variables, x, condition=normal(0, (B, 4)))
    with pytest.raises(ConditionError, match=r"got \(1, 4, 3\)"):
        hnet.apply(variables, x, condition=normal(0, (1, B, C)))
    with pytest.raises(ConditionError, match=r"got \(\)"):
        hnet.apply(variables, x, condition=jnp.array(1.0))
    with pytest.raises(ConditionTypeError, match="floating-point array of width condition_dim=3; got dtype int32"):
        hnet.apply(variables, x, condition=jnp.array([1, 2, 3]))
    with pytest.raises(ConditionTypeError, match="must be a jax array; got str"):
        hnet.apply(variables, x, condition="task")
    with pytest.raises(OptionTypeError, match="pass the condition once"):
        hnet.apply(variables, x, condition=c, generate_params_kwargs={"condition": c})
    with pytest.raises(OptionTypeError, match=r"\['hidden_state'\] are not taken by FiLM; it takes condition\."):
        hnet.apply(variables, x, condition=c, generate_params_kwargs={"hidden_state": jnp.zeros(8)})
    with pytest.raises(ConditionError, match="generated_variables needs one condition"):
        hnet.apply(variables, method=hnet.generated_variables, condition=c)
    # shapes and dtypes are checked while tracing, too
    with pytest.raises(ConditionError, match=r"got \(4, 4\)"):
        jax.jit(lambda v, c: hnet.apply(v, x, condition=c))(variables, normal(0, (B, 4)))


@pytest.fixture(scope="module")
def ids_hnet():
    x = normal(2, (B, 4)).at[2].set(normal(2, (B, 4))[0])  # samples 0 and 2 alike
    return (*build(MLP(), x, jnp.array([0, 1, 2, 3]), num_conditions=5, condition_dim=C), x)


@pytest.mark.parametrize("ids, error, message", [
    (jnp.array([0, 5, 1, 1]), ConditionError, r"must lie in \[0, 5\); got values from 0 to 5"),
    (jnp.array([-1, 2, 1, 1]), ConditionError, r"must lie in \[0, 5\)"),
    (7, ConditionError, r"must lie in \[0, 5\)"),
    (jnp.array([0.0, 1.0, 1.0, 1.0]), ConditionTypeError, "must hold integer ids"),
    (jnp.array([[0, 1, 1, 1]]), ConditionError, r"shape \(\) or \(B,\)"),
])  # fmt: skip
def test_bad_ids_are_refused(ids_hnet, ids, error, message):
    hnet, variables, x = ids_hnet
    with pytest.raises(error, match=message):
        hnet.apply(variables, x, condition=ids)


def test_concrete_ids_closed_over_by_a_jitted_function(ids_hnet):
    """Task ids defined outside a jitted step (a constant of the trace) are valid ids."""
    hnet, variables, x = ids_hnet
    ids = jnp.array([3, 0, 3, 4])
    expected = hnet.apply(variables, x, condition=ids)
    assert_close(jax.jit(lambda v: hnet.apply(v, x, condition=ids))(variables), expected)


def test_array_arguments_must_have_the_condition_batch(models):
    hnet, variables, x, c = models("mlp")
    with pytest.raises(ConditionError, match=r"3 weight sets .* positional argument 0 has shape \(4, 4\)"):
        hnet.apply(variables, x, condition=c[:3])
    with pytest.raises(ConditionError, match=r"positional argument 0 has shape \(1, 4\)"):  # no silent broadcasting
        hnet.apply(variables, x[:1], condition=c)
    with pytest.raises(ConditionError, match=r"positional argument 0 has shape \(4, 4\)"):
        jax.jit(lambda v, c: hnet.apply(v, x, condition=c))(variables, c[:3])

    shift = normal(9, (B, 3))
    shifted, sv = build(Shifted(), x, c, shift, num_embeddings=6)
    with pytest.raises(ConditionError, match=r"`shift` has shape \(3,\)"):
        shifted.apply(sv, x, shift=shift[0], condition=c)
    # keyword arrays are split too; 0-d arrays and Python values are shared
    out = shifted.apply(sv, x, shift=shift, scale=jnp.array(2.0), condition=c)
    for i in range(B):
        assert_close(out[i : i + 1], shifted.apply(sv, x[i : i + 1], shift=shift[i : i + 1], scale=2.0, condition=c[i]))


def test_model_taking_condition_needs_condition_keyword_false():
    with pytest.raises(ReservedArgumentError, match=r"TakesCondition.__call__ already takes `condition`.*condition_keyword=False"):
        hypernetize(TakesCondition(), embedding_dim=4, num_embeddings=6, condition_dim=C)
    x, m, c = normal(2, (B, 4)), normal(3, (B, 2)), normal(4, (B, C))
    hnet = hypernetize(TakesCondition(), embedding_dim=4, num_embeddings=6, condition_dim=C, condition_keyword=False,
                       example_inputs=(x, m))  # fmt: skip
    variables = random_variables(jax.eval_shape(lambda: hnet.init(KEY, x, condition=m, generate_params_kwargs={"condition": c})))
    with pytest.raises(ConditionError, match="needs a condition"):
        hnet.apply(variables, x, condition=m)  # `condition` went to the model; the hypernetwork got none
    out = hnet.apply(variables, x, condition=m, generate_params_kwargs={"condition": c})
    p = split_flat(film_flat(variables["params"], c), {"dense.kernel": (4, 2), "dense.bias": (2,)})
    assert_close(out, (jnp.einsum("bi,bio->bo", x, p["dense.kernel"]) + p["dense.bias"]) * m)
    for i in range(B):
        expected = hnet.apply(variables, x[i : i + 1], condition=m[i : i + 1], generate_params_kwargs={"condition": c[i]})
        assert_close(out[i : i + 1], expected)


def test_per_sample_cache_updates_are_refused():
    x, c = normal(2, (B, 4)), normal(3, (B, C))
    hnet, variables = build(Counts(), x, c[0], num_embeddings=6)
    assert "cache" in variables
    with pytest.raises(UnsupportedModelError, match="per-sample weights cannot update the `cache` collection"):
        hnet.apply(variables, x, condition=c, mutable=["cache"])
    _, updates = hnet.apply(variables, x, condition=c[0], mutable=["cache"])  # one weight set: fine
    assert int(updates["cache"]["count"]) == int(variables["cache"]["count"]) + 1


# ---------------------------------------------------------------- 6. decorator form


@hypernetize(embedding_dim=4, num_embeddings=8, condition_dim=C)
class DecoratedMLP(nn.Module):
    """The MLP, hypernetized by decoration."""

    features: int = 5

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="out")(jnp.tanh(nn.Dense(self.features, name="hidden")(x)))


def test_decorated_class_is_a_dynamic_hypernetwork():
    net = DecoratedMLP()
    assert isinstance(net, LinenDynamicHypernetwork) and DecoratedMLP.__doc__.startswith("The MLP")
    assert type(net.hypernn_target()) is DecoratedMLP.__wrapped__
    x, c = normal(2, (B, 4)), normal(3, (B, C))
    variables = jax.jit(lambda k: net.init(k, x, condition=c))(KEY)  # planned lazily, at this init
    assert sorted(variables["params"]) == ["condition_module", "embedding_module", "weight_generator"]
    variables = random_variables(jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables))
    expected = hand_mlp(split_flat(film_flat(variables["params"], c), MLP_SHAPES), x)
    assert_close(net.apply(variables, x, condition=c), expected)
    assert_close(jax.jit(lambda v, x, c: net.apply(v, x, condition=c))(variables, x, c), expected)
    with pytest.raises(ConditionError, match="needs a condition"):
        net.apply(variables, x)

    @hypernetize(embedding_dim=4, num_embeddings=6, num_conditions=3)
    class Tasks(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(x)

    tasks = Tasks()
    tv = jax.jit(lambda k: tasks.init(k, x, condition=jnp.array([0, 2, 1, 2])))(KEY)
    assert tv["params"]["condition_embedding"]["embedding"].shape == (3, 4)  # condition_dim: embedding_dim
    assert tasks.apply(tv, x, condition=jnp.array([0, 2, 1, 2])).shape == (B, 2)


# ---------------------------------------------------------------- 7. generated_variables


def test_generated_variables_for_one_condition_run_the_plain_model(models):
    hnet, variables, x, c = models("cnn_bn")
    batched = hnet.apply(variables, x, condition=c)
    for i in (0, 3):
        generated = hnet.apply(variables, method=hnet.generated_variables, condition=c[i])
        plain = CNNBN().apply({"params": generated, "batch_stats": variables["batch_stats"]}, x)
        assert_close(plain, hnet.apply(variables, x, condition=c[i]))
        assert_close(plain[i], batched[i])
