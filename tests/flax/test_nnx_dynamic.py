"""Dynamic NNX hypernetworks: per-sample weights generated from a condition.

The reference for every batched call ``hnet(x, condition=c)`` (``c`` of shape ``(B, C)``)
is a Python loop over samples through the *static* path of the same hypernetwork,
``hnet(x[i:i+1], condition=c[i])``, concatenated (see :mod:`dynamic_models`); outputs
and the gradients of every hypernetwork parameter and of the condition are compared,
eagerly (``nnx.grad``) and under ``nnx.jit``. Conditional batch norm, FiLM, the
recurrent conditioning and the MLP are also checked against hand-written jnp.

The models have the shapes of the linen suite's (so the two share compiled kernels).
Hypernetworks are built abstractly (``nnx.eval_shape``) and given random values, which
also moves FiLM off its zero start: otherwise all samples would get the same weights and
a per-sample bug could not show.
"""

from __future__ import annotations

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
    random_value,
    split_flat,
)
from flax import nnx

import hypernn
from hypernn import hypernetize
from hypernn.errors import (
    ConditionError,
    ConditionTypeError,
    ConfigurationError,
    GeneratedParamsError,
    OptionTypeError,
    ReservedArgumentError,
    UnsupportedModelError,
)
from hypernn.transform.nnx import DynamicHypernetizedNNX, GeneratedSlot

# ---------------------------------------------------------------- models (shapes as in the linen suite)


class MLP(nnx.Module):
    def __init__(self, *, rngs):
        self.hidden = nnx.Linear(4, 5, rngs=rngs)
        self.out = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


class CNN(nnx.Module):
    def __init__(self, *, rngs):
        self.conv = nnx.Conv(2, 3, (3, 3), padding="VALID", rngs=rngs)
        self.fc = nnx.Linear(12, 2, rngs=rngs)

    def __call__(self, x):  # (B, 6, 6, 2)
        h = nnx.avg_pool(jax.nn.relu(self.conv(x)), (2, 2), (2, 2))  # (B, 2, 2, 3)
        return self.fc(h.reshape(h.shape[0], -1))


class LSTM(nnx.Module):
    """Returns a pytree: the head's output and the final carry."""

    def __init__(self, *, rngs):
        self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(3, 4, rngs=rngs), return_carry=True)
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):  # (B, L, 3)
        carry, h = self.rnn(x)
        return self.head(h[:, -1]), carry


class CNNBN(nnx.Module):
    def __init__(self, *, rngs):
        self.conv = nnx.Conv(2, 3, (3, 3), padding="VALID", rngs=rngs)
        self.bn = nnx.BatchNorm(3, momentum=0.8, rngs=rngs)
        self.fc = nnx.Linear(12, 2, rngs=rngs)

    def __call__(self, x):
        h = nnx.avg_pool(jax.nn.relu(self.bn(self.conv(x))), (2, 2), (2, 2))
        return self.fc(h.reshape(h.shape[0], -1))


class Block(nnx.Module):
    """A pre-norm transformer block: layer norm and self-attention, then an MLP, both residual."""

    def __init__(self, *, rngs):
        self.ln = nnx.LayerNorm(4, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(2, 4, qkv_features=4, decode=False, deterministic=True, rngs=rngs)
        self.fc1 = nnx.Linear(4, 6, rngs=rngs)
        self.fc2 = nnx.Linear(6, 4, rngs=rngs)

    def __call__(self, x):  # (B, L, 4)
        x = x + self.attn(self.ln(x))
        return x + self.fc2(jax.nn.gelu(self.fc1(x)))


class Convs(nnx.Module):
    """Convolutions of every kind the per-sample path treats apart: strided with SAME
    padding, grouped and kernel-dilated, input-dilated (transposed), 1-D causal."""

    def __init__(self, *, rngs):
        self.strided = nnx.Conv(2, 4, (3, 3), strides=2, padding="SAME", rngs=rngs)
        self.grouped = nnx.Conv(4, 4, (2, 2), kernel_dilation=2, padding=((1, 0), (0, 1)), feature_group_count=2, rngs=rngs)
        self.dilated_input = nnx.Conv(4, 3, (2, 2), input_dilation=2, padding=((0, 0), (0, 0)), rngs=rngs)
        self.causal = nnx.Conv(3, 2, (3,), padding="CAUSAL", kernel_dilation=2, rngs=rngs)
        self.fc = nnx.Linear(2 * 16, 2, rngs=rngs)

    def __call__(self, x):  # (B, 7, 7, 2)
        h = self.dilated_input(self.grouped(jax.nn.relu(self.strided(x))))  # (B, 4, 4, 3)
        h = self.causal(h.reshape(h.shape[0], -1, 3))
        return self.fc(h.reshape(h.shape[0], -1))


class CallTimeDrop(nnx.Module):
    """Dropout whose randomness comes with the call (``rngs=``), not from construction."""

    def __init__(self, *, rngs):
        self.dense = nnx.Linear(4, 8, rngs=rngs)
        self.drop = nnx.Dropout(0.5)

    def __call__(self, x, rngs=None):
        return self.drop(self.dense(x), rngs=rngs)


class DenseBN(nnx.Module):
    def __init__(self, *, rngs):
        self.dense = nnx.Linear(4, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, momentum=0.8, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.dense(x))


class Drop(nnx.Module):
    def __init__(self, *, rngs):
        self.dense = nnx.Linear(4, 8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.dense(x))


# ---------------------------------------------------------------- helpers


def build(model_class, seed=1, **options):
    """A dynamic hypernetwork of ``model_class(rngs=...)``, built abstractly and given
    random values (nothing compiled; FiLM moved off its zero start, see :func:`random_value`)."""
    options.setdefault("embedding_dim", 4)
    options.setdefault("num_embeddings", 8)
    if "num_conditions" not in options:
        options.setdefault("condition_dim", C)
    abstract = nnx.eval_shape(lambda: hypernetize(model_class(rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1), **options))
    assert isinstance(abstract, DynamicHypernetizedNNX)
    graphdef, state = nnx.split(abstract)
    filled = []
    for i, (path, variable) in enumerate(nnx.to_flat_state(state)):
        shape = variable.get_value()
        if isinstance(variable, GeneratedSlot):  # a placeholder between calls
            value = jnp.zeros(shape.shape, shape.dtype)
        else:
            value = random_value(".".join(map(str, path)), shape.shape, shape.dtype, seed + i)
        filled.append((path, variable.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def film_flat(hnet, condition):
    """The generated vectors by hand, from the hypernetwork's arrays (FiLM conditioning)."""
    film, generator = hnet.condition_module.to_scale_shift, hnet.weight_generator
    return hand_film_flat(hnet.embedding_module.embedding[...], film.kernel[...], film.bias[...], generator.kernel[...],
                          generator.bias[...], condition)  # fmt: skip


def pure(hnet, **call):
    """``(apply(params, condition, *args), params)`` for :func:`check_per_sample`: the
    hypernetwork split into its Params and the rest, merged again in every call."""
    graphdef, params, rest = nnx.split(hnet, nnx.Param, ...)
    return (lambda p, condition, *args: nnx.merge(graphdef, p, rest, copy=True)(*args, condition=condition, **call)), params


def module_runs(hnet, float_condition=True):
    """The batched call the NNX way, for :func:`check_per_sample`: ``nnx.grad`` over the
    module itself, eagerly and under ``nnx.jit``."""

    def step(h, condition, args, cotangent):
        def loss(h, condition):
            out = h(*args, condition=condition)
            products = jax.tree_util.tree_map(lambda o, t: jnp.sum(o * t), out, cotangent)
            return sum(jax.tree_util.tree_leaves(products)), out

        if float_condition:
            (grads, grad_condition), out = nnx.grad(loss, argnums=(0, 1), has_aux=True)(h, condition)
            return out, grads, grad_condition
        grads, out = nnx.grad(loss, has_aux=True)(h, condition)
        return out, grads, None

    jitted = nnx.jit(step)
    return {"eager": lambda params, c, args, t: step(hnet, c, args, t),
            "jit": lambda params, c, args, t: jitted(hnet, c, args, t)}  # fmt: skip


MODELS = {
    "mlp": (MLP, (B, 4)),
    "cnn": (CNN, (B, 6, 6, 2)),
    "lstm": (LSTM, (B, 5, 3)),
    "cnn_bn": (CNNBN, (B, 6, 6, 2)),  # eval mode: running statistics
    "transformer": (Block, (B, 3, 4)),
}


@pytest.fixture(scope="module")
def models():
    """name -> (hnet in eval mode, x, c), built once per module (not to be mutated)."""
    cache = {}

    def get(name):
        if name not in cache:
            model_class, shape = MODELS[name]
            hnet = build(model_class)
            hnet.eval()
            cache[name] = hnet, normal(2, shape), normal(3, (B, C))
        return cache[name]

    return get


# ---------------------------------------------------------------- 1. per-sample == loop


@pytest.mark.parametrize("name", list(MODELS))
def test_per_sample_outputs_and_gradients_equal_the_loop_with_and_without_jit(models, name):
    hnet, x, c = models(name)
    apply, params = pure(hnet)
    out = check_per_sample(apply, params, c, (x,), batched=module_runs(hnet))
    if name == "lstm":  # a pytree output: the per-sample batch axis of size 1 dropped in every leaf
        head, (cell, hidden) = out
        assert head.shape == (B, 2) and cell.shape == hidden.shape == (B, 4)
    assert all(v.shape == () for _, v in nnx.to_flat_state(nnx.state(hnet, GeneratedSlot)))  # placeholders again


@pytest.mark.parametrize("targets", [["strided.bias", "causal", "fc"]], ids=["partly_generated"])
def test_convolutions_of_every_kind_equal_the_loop(targets):
    hnet = build(Convs, targets=targets)  # the strided conv's kernel is shared, its bias generated
    apply, params = pure(hnet)
    x, c = normal(2, (B, 7, 7, 2)), normal(3, (B, C))
    check_per_sample(apply, params, c, (x,), batched=module_runs(hnet), modes=["jit"])


def test_output_depends_on_its_own_condition_only_and_outer_vmap(models):
    hnet, x, c = models("mlp")
    run = nnx.jit(lambda h, x, c: h(x, condition=c))
    jac = nnx.jit(lambda h, x, c: jax.jacrev(lambda c: h(x, condition=c))(c))(hnet, x, c)  # (B, 3, B, C)
    assert jac.shape == (B, 3, B, C)
    for i in range(B):
        for j in range(B):
            assert (np.abs(jac[i, :, j]).sum() > 0) == (i == j), (i, j)
    # nnx.vmap over batched calls (an ensemble of batches) equals separate calls
    xs, cs = jnp.stack([x, x[::-1]]), jnp.stack([c, normal(4, (B, C))])
    mapped = nnx.jit(nnx.vmap(lambda h, x, c: h(x, condition=c), in_axes=(None, 0, 0)))(hnet, xs, cs)
    for k in range(2):
        assert_close(mapped[k], run(hnet, xs[k], cs[k]))


def test_mlp_equals_hand_written_generation_and_batched_matmul(models):
    hnet, x, c = models("mlp")
    flat = film_flat(hnet, c)
    assert flat.shape == (B, hnet.layout.generated_size) == (B, 48)  # 43 values, 8 chunks of 6
    got_flat, aux = hnet.generate_params(condition=c)
    assert_close(got_flat, flat, "generate_params")
    assert aux["embedding"].shape == (B, 8, 4)
    expected = hand_mlp(split_flat(flat, MLP_SHAPES), x)
    assert_close(hnet(x, condition=c), expected, "eager")
    assert_close(nnx.jit(lambda h, x, c: h(x, condition=c))(hnet, x, c), expected, "nnx.jit")

    # gradients of the hypernetwork's parameters and the condition, against the hand computation
    cotangent = normal(7, (B, 3))
    graphdef, params, rest = nnx.split(hnet, nnx.Param, ...)

    def loss(params, c):
        return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(x, condition=c) * cotangent)

    def hand_loss(params, c):
        return jnp.sum(hand_mlp(split_flat(film_flat(nnx.merge(graphdef, params, rest, copy=True), c), MLP_SHAPES), x) * cotangent)

    assert_trees_close(jax.grad(loss, argnums=(0, 1))(params, c), jax.jit(jax.grad(hand_loss, argnums=(0, 1)))(params, c))


# ---------------------------------------------------------------- 2. conditional batch norm


@pytest.mark.parametrize("targets", [None, ["dense"]], ids=["per_sample_scale", "shared_scale"])
def test_conditional_batch_norm_in_training_matches_hand_computation(targets):
    x, c = normal(2, (B, 4)), normal(3, (B, C))
    hnet = build(DenseBN, targets=targets)
    bn = hnet.target_network.bn
    mean0, var0 = bn.mean[...], bn.var[...]
    shapes = {"dense.kernel": (4, 4), "dense.bias": (4,)}
    if targets is None:
        shapes.update({"bn.scale": (4,), "bn.bias": (4,)})
    assert set(hnet.selection.names) == set(shapes)
    graphdef, params, rest = nnx.split(hnet, nnx.Param, ...)

    def generated(params, c):
        h = nnx.merge(graphdef, params, rest, copy=True)
        p = split_flat(film_flat(h, c), shapes)
        out = jnp.einsum("bi,bio->bo", x, p["dense.kernel"]) + p["dense.bias"]  # per-sample weights
        if targets is None:
            return out, p["bn.scale"], p["bn.bias"]
        return out, h.target_network.bn.scale[...], h.target_network.bn.bias[...]

    expected, mean, var = hand_batch_norm(*generated(params, c))
    eager, jitted = nnx.clone(hnet), nnx.clone(hnet)
    outs = {"eager": eager(x, condition=c), "nnx.jit": nnx.jit(lambda h, x, c: h(x, condition=c))(jitted, x, c)}
    for (name, out), twin in zip(outs.items(), (eager, jitted)):
        assert_close(out, expected, f"{name}: output")
        # updated once, from the whole batch's statistics
        assert_close(twin.target_network.bn.mean[...], 0.8 * mean0 + 0.2 * mean, f"{name}: running mean")
        assert_close(twin.target_network.bn.var[...], 0.8 * var0 + 0.2 * var, f"{name}: running var")
    np.testing.assert_array_equal(hnet.target_network.bn.mean[...], mean0)  # the clones' calls left it alone

    cotangent = normal(8, (B, 4))

    def loss(params, c):
        return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(x, condition=c) * cotangent)

    def hand_loss(params, c):
        return jnp.sum(hand_batch_norm(*generated(params, c))[0] * cotangent)

    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, c)
    assert_trees_close(got, jax.jit(jax.grad(hand_loss, argnums=(0, 1)))(params, c))
    assert np.abs(got[0]["condition_module"]["to_scale_shift"]["kernel"][...]).sum() > 0

    # evaluation normalises with the running statistics, still with per-sample weights
    eager.eval()
    h, scale, bias = generated(params, c)
    stats = eager.target_network.bn
    assert_close(eager(x, condition=c), (h - stats.mean[...]) / jnp.sqrt(stats.var[...] + 1e-5) * scale + bias, "eval")
    np.testing.assert_array_equal(eager.target_network.bn.mean[...], stats.mean[...])


def test_batch_norm_training_with_one_condition_is_plain_batch_norm():
    x, c = normal(2, (B, 4)), normal(3, (C,))
    hnet = build(DenseBN)
    batched = nnx.clone(hnet)
    out = hnet(x, condition=c)
    assert_close(batched(x, condition=jnp.broadcast_to(c, (B, C))), out)
    assert_close(batched.target_network.bn.mean[...], hnet.target_network.bn.mean[...])
    assert_close(batched.target_network.bn.var[...], hnet.target_network.bn.var[...])


# ---------------------------------------------------------------- 3. dropout


def test_dropout_masks_differ_per_sample_and_eval_equals_the_loop():
    x = jnp.broadcast_to(normal(2, (1, 4)), (B, 4))  # the same input ...
    c = jnp.broadcast_to(normal(3, (1, C)), (B, C))  # ... and condition for every sample
    hnet = build(Drop)
    twin, jitted = nnx.clone(hnet), nnx.clone(hnet)
    out = hnet(x, condition=c)
    zeros = np.asarray(out == 0)
    assert zeros.any() and not zeros.all()
    assert any(not np.array_equal(zeros[0], zeros[i]) for i in range(1, B)), "the same mask for every sample"
    assert int(hnet.target_network.drop.rngs.count[...]) == 1  # the stream advanced once
    np.testing.assert_array_equal(twin(x, condition=c), out)  # reproducible from the same rng state
    assert_close(nnx.jit(lambda h: h(x, condition=c))(jitted), out)
    assert int(jitted.target_network.drop.rngs.count[...]) == 1
    assert not np.array_equal(hnet(x, condition=c), out)  # the next call draws new masks
    hnet.eval()
    reference = hnet(x[:1], condition=c[0])[0]  # deterministic
    assert_close(np.where(zeros, 0.0, 2 * reference), out)  # kept values scaled by 1 / (1 - rate)
    # deterministic: the batch equals the loop (a varied batch)
    apply, params = pure(hnet)
    check_per_sample(apply, params, normal(5, (B, C)), (normal(4, (B, 4)),), modes=["jit"])


def test_dropout_rngs_passed_with_the_call_draw_a_mask_per_sample():
    x = jnp.broadcast_to(normal(2, (1, 4)), (B, 4))
    c = jnp.broadcast_to(normal(3, (1, C)), (B, C))
    hnet = build(CallTimeDrop)
    out = hnet(x, condition=c, rngs=nnx.Rngs(dropout=3))
    zeros = np.asarray(out == 0)
    assert zeros.any() and not zeros.all()
    assert any(not np.array_equal(zeros[0], zeros[i]) for i in range(1, B)), "the same mask for every sample"


# ---------------------------------------------------------------- 4. conditions, ids, conditioning modules


def test_construction_gives_a_condition_independent_film_hypernetwork():
    x, c, other = normal(2, (B, 4)), normal(3, (B, C)), normal(4, (B, C))
    hnet = hypernetize(MLP(rngs=nnx.Rngs(0)), embedding_dim=4, num_embeddings=8, condition_dim=C, rngs=nnx.Rngs(1))
    assert isinstance(hnet, DynamicHypernetizedNNX)
    assert hnet.condition_module.to_scale_shift.kernel.shape == (C, 8)
    assert hnet.weight_generator.kernel.shape == (4, 6)
    np.testing.assert_array_equal(hnet.condition_module.to_scale_shift.kernel[...], 0)
    run = nnx.jit(lambda h, c: h(x, condition=c))
    assert_close(run(hnet, c), run(hnet, other))  # FiLM starts at zero: the same weights for every condition
    assert_close(run(hnet, c), run(hnet, c[0]))
    grads = nnx.jit(nnx.grad(lambda h: jnp.sum(h(x, condition=c) ** 2)))(hnet)
    assert np.abs(grads["condition_module"]["to_scale_shift"]["kernel"][...]).sum() > 0
    with pytest.raises(OptionTypeError, match=r"needs `rngs=nnx\.Rngs\(\.\.\.\)` for its own modules"):
        hypernetize(MLP(rngs=nnx.Rngs(0)), embedding_dim=4, num_embeddings=8, condition_dim=C)
    with pytest.raises(ConfigurationError, match="needs `condition_dim=` or `num_conditions=`"):
        DynamicHypernetizedNNX(MLP(rngs=nnx.Rngs(0)), embedding_dim=4, num_embeddings=8, rngs=nnx.Rngs(1))


def test_one_condition_equals_it_broadcast_to_the_batch(models):
    hnet, x, c = models("cnn")
    one = hnet(x, condition=c[1])
    assert_close(hnet(x, condition=jnp.broadcast_to(c[1], (B, C))), one)
    hnet_mlp, x_mlp, _ = models("mlp")
    flat = film_flat(hnet_mlp, c[1])
    assert flat.shape == (48,)
    tensors = {k: jnp.broadcast_to(v, (B, *v.shape)) for k, v in split_flat(flat, MLP_SHAPES).items()}
    assert_close(hnet_mlp(x_mlp, condition=c[1]), hand_mlp(tensors, x_mlp))


@pytest.fixture(scope="module")
def ids_hnet():
    x = normal(2, (B, 4)).at[2].set(normal(2, (B, 4))[0])  # samples 0 and 2 alike
    return build(MLP, num_conditions=5, condition_dim=C), x


def test_integer_ids_equal_the_learned_embedding_vectors(ids_hnet):
    hnet, x = ids_hnet
    ids = jnp.array([3, 0, 3, 4])
    table = hnet.condition_embedding.embedding[...]
    assert table.shape == (5, C)
    out = hnet(x, condition=ids)
    # the same hypernetwork given the embedding vectors as float conditions
    floats = build(MLP)
    nnx.update(floats, nnx.state(hnet, nnx.Not(nnx.PathContains("condition_embedding"))))
    assert_close(out, floats(x, condition=table[ids]))
    assert_close(out, hand_mlp(split_flat(film_flat(hnet, table[ids]), MLP_SHAPES), x))
    assert_close(out[0], out[2])  # the same id: the same weights (x[0] == x[2])
    # one id for the whole batch: a 0-d array or a Python int
    assert_close(hnet(x, condition=jnp.array(3)), floats(x, condition=table[3]))
    assert_close(hnet(x, condition=3), hnet(x, condition=jnp.full((B,), 3)))
    # the loop, with gradients reaching the used ids' embeddings only
    apply, params = pure(hnet)
    check_per_sample(apply, params, ids, (x,), batched=module_runs(hnet, float_condition=False), modes=["jit"])
    grads = nnx.jit(nnx.grad(lambda h, ids: jnp.sum(h(x, condition=ids) ** 2)))(hnet, ids)
    rows = np.abs(np.asarray(grads["condition_embedding"]["embedding"][...])).sum(1)
    assert (rows[[0, 3, 4]] > 0).all() and (rows[[1, 2]] == 0).all()


def test_concat_conditioning():
    x, c = normal(2, (B, 4)), normal(3, (B, C))
    hnet = build(MLP, condition_factory=hypernn.conditioning.concat(projection_dim=3))
    assert hnet.weight_generator.kernel.shape == (7, 6)  # embedding_dim 4 + projection 3
    _, aux = hnet.generate_params(condition=c)
    projection = hnet.condition_module.projection
    embedding = hnet.embedding_module.embedding[...]
    projected = c @ projection.kernel[...] + projection.bias[...]
    hand = jnp.concatenate([jnp.broadcast_to(embedding, (B, 8, 4)), jnp.broadcast_to(projected[:, None], (B, 8, 3))], -1)
    assert_close(aux["embedding"], hand)
    flat = (hand @ hnet.weight_generator.kernel[...] + hnet.weight_generator.bias[...]).reshape(B, -1)
    assert_close(hnet(x, condition=c), hand_mlp(split_flat(flat, MLP_SHAPES), x))
    apply, params = pure(hnet)
    check_per_sample(apply, params, c, (x,), modes=["jit"])
    default = build(MLP, condition_factory=hypernn.conditioning.concat())
    assert default.weight_generator.kernel.shape == (8, 6)


def test_recurrent_conditioning_threads_its_state():
    x, c1, c2 = normal(2, (B, 4)), normal(3, (B, C)), normal(4, (B, C))
    hnet = build(MLP, condition_factory=hypernn.conditioning.recurrent())
    cell, embedding = hnet.condition_module, hnet.embedding_module.embedding[...]
    generator = hnet.weight_generator

    def hand_state(c, h):
        return jnp.tanh(c @ cell.input.kernel[...] + cell.input.bias[...] + h @ cell.hidden.kernel[...])

    def hand_out(c, h):
        flat = ((embedding * hand_state(c, h)[..., None]) @ generator.kernel[...] + generator.bias[...]).reshape(B, -1)
        return hand_mlp(split_flat(flat, MLP_SHAPES), x)

    zero = jnp.zeros((B, 8))
    out1, flat1, aux1 = hnet(x, condition=c1, has_aux=True)
    h1 = aux1["hidden_state"]
    assert h1.shape == (B, 8) and flat1.shape == (B, 48)
    assert_close(h1, hand_state(c1, zero))
    assert_close(aux1["embedding"], embedding * h1[..., None])
    assert_close(out1, hand_out(c1, zero))
    out2, _, aux2 = hnet(x, condition=c2, generate_params_kwargs={"hidden_state": h1}, has_aux=True)
    assert_close(aux2["hidden_state"], hand_state(c2, h1))
    assert_close(out2, hand_out(c2, h1))
    assert not np.allclose(out2, hnet(x, condition=c2), atol=1e-3)  # the state matters
    for i in range(B):  # each sample with its own state
        o, _, a = hnet(x[i : i + 1], condition=c2[i], generate_params_kwargs={"hidden_state": h1[i]}, has_aux=True)
        assert a["hidden_state"].shape == (8,)
        assert_close(o, out2[i : i + 1])
        assert_close(a["hidden_state"], aux2["hidden_state"][i])
    # (from the zero state the hidden kernel gets no gradient)
    apply, params = pure(hnet)
    check_per_sample(apply, params, c1, (x,), modes=["jit"], generated_paths=("weight_generator", "input"))

    def two_steps(h):
        state = h.generate_params(condition=c1)[1]["hidden_state"]
        return jnp.sum(h(x, condition=c2, generate_params_kwargs={"hidden_state": state}) ** 2)

    grads = nnx.jit(nnx.grad(two_steps))(hnet)  # through both steps: the hidden kernel too
    assert np.abs(grads["condition_module"]["hidden"]["kernel"][...]).sum() > 0


def test_generated_params_batch_and_has_aux(models):
    hnet, x, c = models("mlp")
    out, flat, aux = hnet(x, condition=c, has_aux=True)
    assert flat.shape == (B, 48) and aux["embedding"].shape == (B, 8, 4)
    assert_close(flat, film_flat(hnet, c))
    assert_close(out, hnet(x, condition=c))
    given, given_flat, given_aux = hnet(x, generated_params=flat, has_aux=True)
    assert_close(given, out)
    assert given_flat is flat and given_aux == {}
    for i in range(B):  # row i of a (B, n) batch for sample i
        assert_close(hnet(x[i : i + 1], generated_params=flat[i]), out[i : i + 1])
    assert_close(hnet(x, generated_params=flat[:, :43]), out)  # without the generator's surplus
    with pytest.raises(GeneratedParamsError, match=r"a \(B, n\) batch of vectors .*got shape \(1, 4, 48\)"):
        hnet(x, generated_params=flat[None])


# ---------------------------------------------------------------- 5. errors


class TakesCondition(nnx.Module):
    def __init__(self, *, rngs):
        self.dense = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x, condition):
        return self.dense(x) * condition


class Shifted(nnx.Module):
    def __init__(self, *, rngs):
        self.dense = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x, shift, scale=1.0):
        return self.dense(x) * scale + shift


class Counts(nnx.Module):
    """Keeps a decoding-style cache."""

    def __init__(self, *, rngs):
        self.dense = nnx.Linear(4, 2, rngs=rngs)
        self.count = nnx.Cache(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        self.count[...] += 1
        return self.dense(x)


def test_condition_errors(models):
    hnet, x, c = models("mlp")
    with pytest.raises(ConditionError, match="needs a condition"):
        hnet(x)
    with pytest.raises(ConditionError, match=r"must have shape \(3,\) .* or \(B, 3\) .*got \(4, 4\)"):
        hnet(x, condition=normal(0, (B, 4)))
    with pytest.raises(ConditionError, match=r"got \(1, 4, 3\)"):
        hnet(x, condition=normal(0, (1, B, C)))
    with pytest.raises(ConditionError, match=r"got \(\)"):
        hnet(x, condition=jnp.array(1.0))
    with pytest.raises(ConditionTypeError, match="floating-point array of width condition_dim=3; got dtype int32"):
        hnet(x, condition=jnp.array([1, 2, 3]))
    with pytest.raises(ConditionTypeError, match="must be a jax array; got str"):
        hnet(x, condition="task")
    with pytest.raises(OptionTypeError, match="pass the condition once"):
        hnet(x, condition=c, generate_params_kwargs={"condition": c})
    with pytest.raises(OptionTypeError, match=r"\['hidden_state'\] are not taken by FiLM; it takes condition\."):
        hnet(x, condition=c, generate_params_kwargs={"hidden_state": jnp.zeros(8)})
    with pytest.raises(ConditionError, match="materialize needs one condition"):
        hnet.materialize(condition=c)
    with pytest.raises(ConditionError, match="generated_state needs one condition"):
        hnet.generated_state(condition=c)
    with pytest.raises(ConditionError, match=r"got \(4, 4\)"):  # checked while tracing, too
        nnx.jit(lambda h, c: h(x, condition=c))(hnet, normal(0, (B, 4)))


@pytest.mark.parametrize("ids, error, message", [
    (jnp.array([0, 5, 1, 1]), ConditionError, r"must lie in \[0, 5\); got values from 0 to 5"),
    (jnp.array([-1, 2, 1, 1]), ConditionError, r"must lie in \[0, 5\)"),
    (7, ConditionError, r"must lie in \[0, 5\)"),
    (jnp.array([0.0, 1.0, 1.0, 1.0]), ConditionTypeError, "must hold integer ids"),
    (jnp.array([[0, 1, 1, 1]]), ConditionError, r"shape \(\) or \(B,\)"),
])  # fmt: skip
def test_bad_ids_are_refused(ids_hnet, ids, error, message):
    hnet, x = ids_hnet
    with pytest.raises(error, match=message):
        hnet(x, condition=ids)


def test_concrete_ids_closed_over_by_a_jitted_function(ids_hnet):
    """Task ids defined outside a jitted step (a constant of the trace) are valid ids."""
    hnet, x = ids_hnet
    ids = jnp.array([3, 0, 3, 4])
    assert_close(nnx.jit(lambda h: h(x, condition=ids))(hnet), hnet(x, condition=ids))


def test_array_arguments_must_have_the_condition_batch(models):
    hnet, x, c = models("mlp")
    with pytest.raises(ConditionError, match=r"3 weight sets .* positional argument 0 has shape \(4, 4\)"):
        hnet(x, condition=c[:3])
    with pytest.raises(ConditionError, match=r"positional argument 0 has shape \(1, 4\)"):  # no silent broadcasting
        hnet(x[:1], condition=c)
    with pytest.raises(ConditionError, match=r"positional argument 0 has shape \(4, 4\)"):
        nnx.jit(lambda h, c: h(x, condition=c))(hnet, c[:3])

    shifted, shift = build(Shifted, num_embeddings=6), normal(9, (B, 3))
    with pytest.raises(ConditionError, match=r"`shift` has shape \(3,\)"):
        shifted(x, shift=shift[0], condition=c)
    # keyword arrays are split too; 0-d arrays and Python values are shared
    out = shifted(x, shift=shift, scale=jnp.array(2.0), condition=c)
    for i in range(B):
        assert_close(out[i : i + 1], shifted(x[i : i + 1], shift=shift[i : i + 1], scale=2.0, condition=c[i]))


def test_model_taking_condition_needs_condition_keyword_false():
    with pytest.raises(ReservedArgumentError, match=r"TakesCondition.__call__ already takes `condition`.*condition_keyword=False"):
        hypernetize(TakesCondition(rngs=nnx.Rngs(0)), embedding_dim=4, num_embeddings=6, condition_dim=C, rngs=nnx.Rngs(1))
    x, m, c = normal(2, (B, 4)), normal(3, (B, 2)), normal(4, (B, C))
    hnet = build(TakesCondition, num_embeddings=6, condition_keyword=False)
    with pytest.raises(ConditionError, match="needs a condition"):
        hnet(x, condition=m)  # `condition` went to the model; the hypernetwork got none
    out = hnet(x, condition=m, generate_params_kwargs={"condition": c})
    p = split_flat(film_flat(hnet, c), {"dense.kernel": (4, 2), "dense.bias": (2,)})
    assert_close(out, (jnp.einsum("bi,bio->bo", x, p["dense.kernel"]) + p["dense.bias"]) * m)
    for i in range(B):
        assert_close(out[i : i + 1], hnet(x[i : i + 1], condition=m[i : i + 1], generate_params_kwargs={"condition": c[i]}))


def test_per_sample_cache_updates_are_refused():
    x, c = normal(2, (B, 4)), normal(3, (B, C))
    hnet = build(Counts, num_embeddings=6)
    with pytest.raises(UnsupportedModelError, match="per-sample weights cannot update the cache `count`"):
        hnet(x, condition=c)
    assert int(hnet.target_network.count[...]) == 0  # nothing written back
    hnet(x, condition=c[0])  # one weight set: fine
    assert int(hnet.target_network.count[...]) == 1


# ---------------------------------------------------------------- 6. decorator form


@hypernetize(embedding_dim=4, num_embeddings=8, condition_dim=C)
class DecoratedMLP(nnx.Module):
    """The MLP, hypernetized by decoration."""

    def __init__(self, features=5, *, rngs):
        self.hidden = nnx.Linear(4, features, rngs=rngs)
        self.out = nnx.Linear(features, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def test_decorated_class_is_a_dynamic_hypernetwork():
    net = DecoratedMLP(rngs=nnx.Rngs(0))
    assert isinstance(net, DecoratedMLP) and isinstance(net, DynamicHypernetizedNNX)
    assert type(net.target_network) is DecoratedMLP.__wrapped__ and DecoratedMLP.__doc__.startswith("The MLP")
    film = net.condition_module.to_scale_shift
    film.kernel[...], film.bias[...] = normal(5, film.kernel.shape, 0.5), normal(6, film.bias.shape, 0.5)
    x, c = normal(2, (B, 4)), normal(3, (B, C))
    expected = hand_mlp(split_flat(film_flat(net, c), MLP_SHAPES), x)
    assert_close(net(x, condition=c), expected)
    assert_close(nnx.jit(lambda h, x, c: h(x, condition=c))(net, x, c), expected)
    assert not np.allclose(expected, net(x, condition=c[0]), atol=1e-3)
    with pytest.raises(ConditionError, match="needs a condition"):
        net(x)

    @hypernetize(embedding_dim=4, num_embeddings=6, num_conditions=3)
    class Tasks(nnx.Module):
        def __init__(self, *, rngs):
            self.dense = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            return self.dense(x)

    tasks = Tasks(rngs=nnx.Rngs(0))
    assert tasks.condition_embedding.embedding.shape == (3, 4)  # condition_dim: embedding_dim
    assert tasks(x, condition=jnp.array([0, 2, 1, 2])).shape == (B, 2)


# ---------------------------------------------------------------- 7. materialize


def test_materialize_one_condition_gives_the_plain_model(models):
    hnet, x, c = models("cnn_bn")
    batched = hnet(x, condition=c)
    for i in (0, 3):
        plain = hnet.materialize(condition=c[i])
        assert type(plain) is CNNBN and not nnx.to_flat_state(nnx.state(plain, GeneratedSlot))
        assert_close(plain(x), hnet(x, condition=c[i]))
        assert_close(plain(x)[i], batched[i])
        state = hnet.generated_state(condition=c[i])
        np.testing.assert_array_equal(state["conv"]["kernel"][...], plain.conv.kernel[...])
    tensors = split_flat(film_flat(hnet, c[3]), {"bn.bias": (3,), "bn.scale": (3,), "conv.bias": (3,),
                                                 "conv.kernel": (3, 3, 2, 3), "fc.bias": (2,), "fc.kernel": (12, 2)})  # fmt: skip
    for name, value in tensors.items():
        module, attribute = name.split(".")
        assert_close(getattr(getattr(plain, module), attribute)[...], value, name)
