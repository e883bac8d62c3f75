"""Numerical equivalence of hypernetized flax NNX models with a hand-written computation.

Every test computes the same math twice:

* through :func:`hypernn.hypernetize` (``hnet(x)``, eagerly or under ``nnx.jit``), and
* by hand, from the hypernetwork's ``embedding_module.embedding`` and
  ``weight_generator.kernel/bias`` arrays with plain jax ops: ``emb = E[arange]``,
  ``chunks = emb @ K + b``, ``flat = chunks.reshape(-1)``,
  ``tensor = flat[offset:offset + n].reshape(shape)``, and the model's call written out
  (matmuls, ``lax.conv_general_dilated``, batch / layer norm, the LSTM cell, multi-head
  attention).

The offsets of the hand-written side come from an independent re-derivation of the chunk
layout (:func:`hand_layout`), not from ``hnet.layout``; the layout is then checked to agree.
These are hyper-nn's computations, so the hypernetworks use ``init="default"`` (the
hyperfan start map on top is checked in ``test_nnx_start.py``).
Outputs and the gradients (``nnx.grad`` over the hypernetwork's ``nnx.Param`` state,
against ``jax.vjp`` of the hand-written function) are compared.

Every model family runs both eagerly and under ``nnx.jit``, but not every parametrization
both ways: eager JAX compiles each operation separately, so eager runs are kept to about
one per family (their shapes shared where possible). For the same reason models are built
abstractly and filled from numpy (:func:`build`), and most hypernetworks use numpy-initialised
twins of the default factories (:data:`FAST_FACTORIES`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hypernn import hypernetize, select
from layout_reference import hand_layout
from hypernn.transform.nnx import GeneratedSlot

GENERATOR_PARAMS = ("embedding_module.embedding", "weight_generator.kernel", "weight_generator.bias")
TOL = dict(rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------- helpers


def flat_values(tree: Any, *filters: Any) -> Dict[str, jax.Array]:
    """``{dotted path: array}`` of a module's (filtered) state, or of an ``nnx.State``."""
    state = tree if isinstance(tree, nnx.State) else nnx.state(tree, *filters)
    out = {}
    for path, leaf in nnx.to_flat_state(state):
        out[".".join(map(str, path))] = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
    return out


def build(make: Callable[[], nnx.Module], seed: int = 0) -> nnx.Module:
    """``make()`` traced abstractly (``nnx.eval_shape``), then every variable filled from numpy:
    Params off their initialisers (no zero biases or unit scales, so every value matters),
    positive BatchNorm variances, fresh RNG streams. Fast: nothing is compiled."""
    model = nnx.eval_shape(make)
    rng = np.random.default_rng(seed)
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        value = variable.get_value()
        if isinstance(variable, nnx.RngKey):
            variable.set_value(jax.random.wrap_key_data(rng.integers(0, 2**32, (2,), dtype=np.uint32)))
        elif isinstance(variable, nnx.RngCount):
            variable.set_value(jnp.zeros(value.shape, value.dtype))
        elif isinstance(variable, nnx.BatchStat) and path[-1] == "var":
            variable.set_value(jnp.asarray(rng.uniform(0.5, 1.5, value.shape), value.dtype))
        else:
            variable.set_value(jnp.asarray(rng.uniform(-0.7, 0.7, value.shape), value.dtype))
    return model


def normal(seed: int, shape: Tuple[int, ...]) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def randint(seed: int, shape: Tuple[int, ...], high: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape), jnp.int32)


def _numpy_init(key, shape, dtype=jnp.float32):
    del key  # numpy values: no compilation per shape (the tests build many generators)
    return jnp.asarray(np.random.default_rng(sum(shape)).uniform(-0.5, 0.5, shape), dtype)


#: the default factories' modules (nnx.Embed, nnx.Linear), initialised from numpy, bias non-zero
FAST_FACTORIES = dict(
    embedding_factory=lambda n, d, rngs: nnx.Embed(n, d, embedding_init=_numpy_init, rngs=rngs),
    generator_factory=lambda d, c, rngs: nnx.Linear(d, c, kernel_init=_numpy_init, bias_init=_numpy_init, rngs=rngs),
)


def hyper(model: nnx.Module, **options: Any) -> nnx.Module:
    return hypernetize(model, rngs=nnx.Rngs(1), init="default", **FAST_FACTORIES, **options)




def weighted_sum(output: Any, cotangents: Sequence[jax.Array]) -> jax.Array:
    return sum(jnp.sum(t * c) for t, c in zip(jax.tree.leaves(output), cotangents))


def random_like(tree: Any, seed: int) -> List[jax.Array]:
    return [normal(seed + i, leaf.shape) for i, leaf in enumerate(jax.tree.leaves(tree))]


def _forward(module, *args):
    return module(*args)


def _forward_with(module, vector, *args):
    return module(*args, generated_params=vector)


def _grads(module, cotangents, *args):
    return nnx.grad(lambda m: weighted_sum(m(*args), cotangents))(module)


def _forward_and_grads(module, probe, cotangents, *args):
    """``module(*args)``, and the Param gradients of ``<probe(*args), cotangents>``."""
    return module(*args), _grads(probe, cotangents, *args)


def _vector_grads(module, vector, cotangents, *args):
    """Gradients of ``<module(*args, generated_params=vector), cotangents>``: (Params, vector)."""
    return nnx.grad(lambda m, v: weighted_sum(m(*args, generated_params=v), cotangents), argnums=(0, 1))(module, vector)


# One nnx.jit object each, defined once: calls with the same graph and shapes reuse the
# compiled program (and a changed array is still read afresh).
FORWARD = {False: _forward, True: nnx.jit(_forward)}
FORWARD_WITH = {False: _forward_with, True: nnx.jit(_forward_with)}
FORWARD_AND_GRADS = {False: _forward_and_grads, True: nnx.jit(_forward_and_grads)}
GRADS = {False: _grads, True: nnx.jit(_grads)}
VECTOR_GRADS = {False: _vector_grads, True: nnx.jit(_vector_grads)}


def assert_tree_close(actual: Any, expected: Any, **tol: Any) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), **(tol or TOL))


def hand_generated(hnet: nnx.Module, model: nnx.Module, selected: Sequence[str], kind: str, num_embeddings: int):
    """The model's Params with the selected ones recomputed by hand from ``hnet``'s arrays."""
    params = flat_values(model, nnx.Param)
    shapes = [params[n].shape for n in selected]
    offsets, _, num_chunks = hand_layout([math.prod(s) for s in shapes], kind, num_embeddings)
    own = flat_values(hnet, nnx.Param)
    embedding = own["embedding_module.embedding"][jnp.arange(num_chunks)]
    flat = (embedding @ own["weight_generator.kernel"] + own["weight_generator.bias"]).reshape(-1)
    params.update({n: flat[o : o + math.prod(s)].reshape(s) for n, s, o in zip(selected, shapes, offsets)})
    return params


def compare(
    hnet: nnx.Module,
    model: nnx.Module,
    hand_forward: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    selected: Sequence[str],
    kind: str,
    num_embeddings: int,
    jit: bool,
    tied: Dict[str, str] = None,
) -> Dict[str, jax.Array]:
    """Check ``hnet(*inputs)`` and its gradients against ``hand_forward(params, *inputs)``.

    ``selected``: the generated tensors' names, in the order they must be laid out;
    ``tied``: ``{alias: name}`` of tied names that must reuse a generated tensor;
    ``model``: the original model (the source of the unselected parameters' values).
    Returns the parameters of the hand-written computation ``{name: array}`` (generated
    and kept ones).
    """
    tied = dict(tied or {})
    model_params = flat_values(model, nnx.Param)
    shapes = [tuple(model_params[name].shape) for name in selected]
    sizes = [math.prod(shape) for shape in shapes]
    offsets, chunk_dim, num_chunks = hand_layout(sizes, kind, num_embeddings)

    # The hypernetwork generates exactly the selected tensors where the layout says.
    assert hnet.selection.names == tuple(selected)
    assert [(s.name, s.shape, s.offset, s.aliases) for s in hnet.layout.slots] == [
        (n, shape, off, tuple(a for a, t in tied.items() if t == n)) for n, shape, off in zip(selected, shapes, offsets)
    ]
    assert (hnet.layout.num_chunks, hnet.layout.chunk_dim) == (num_chunks, chunk_dim)
    assert hnet.layout.generated_size == num_chunks * chunk_dim and hnet.layout.num_params == sum(sizes)

    # Its trainable state: the generator's parameters, plus the model's unselected ones.
    unselected = [n for n in model_params if n not in selected]
    hnet_params = flat_values(hnet, nnx.Param)
    assert set(hnet_params) == set(GENERATOR_PARAMS) | {"target_network." + n for n in unselected}

    # Leaves of the hand-written computation: the generator's arrays, and the *original*
    # model's unselected parameters (so kept values are checked too).
    leaves = {n: hnet_params[n] for n in GENERATOR_PARAMS}
    leaves.update({"target_network." + n: model_params[n] for n in unselected})

    def all_params(leaves):
        embedding = leaves["embedding_module.embedding"][jnp.arange(num_chunks)]
        chunks = embedding @ leaves["weight_generator.kernel"] + leaves["weight_generator.bias"]
        assert chunks.shape == (num_chunks, chunk_dim)
        flat = chunks.reshape(-1)
        params = {n: flat[o : o + s].reshape(shape) for n, shape, o, s in zip(selected, shapes, offsets, sizes)}
        params.update({n: leaves["target_network." + n] for n in unselected})
        return params

    def hand(leaves, *args):
        params = all_params(leaves)
        params.update({alias: params[name] for alias, name in tied.items()})
        return hand_forward(params, *args)

    def hand_value_and_grads(leaves, cotangents, *args):
        output, vjp = jax.vjp(lambda l: hand(l, *args), leaves)
        (grads,) = vjp(jax.tree.unflatten(jax.tree.structure(output), cotangents))
        return output, grads, all_params(leaves)

    cotangents = random_like(jax.eval_shape(hand, leaves, *inputs), seed=7)
    # (Eagerly too when the hypernetwork runs eagerly: the two then share compiled ops.)
    expected, expected_grads, params = (jax.jit(hand_value_and_grads) if jit else hand_value_and_grads)(
        leaves, cotangents, *inputs
    )
    probe = nnx.clone(hnet)  # for the gradients: the state before the call
    actual, grads = FORWARD_AND_GRADS[jit](hnet, probe, cotangents, *inputs)
    assert_tree_close(actual, expected)
    grads = flat_values(grads)
    assert set(grads) == set(expected_grads)
    for name, expected_grad in expected_grads.items():
        np.testing.assert_allclose(grads[name], expected_grad, rtol=1e-4, atol=1e-5, err_msg=f"gradient of {name}")
        assert jnp.abs(expected_grad).sum() > 0, f"degenerate test: zero gradient for {name}"
    return params


# ---------------------------------------------------------------- hand-written models


def dense(x, p, name):
    y = x @ p[name + ".kernel"]
    return y + p[name + ".bias"] if name + ".bias" in p else y


def normalize(x, mean, var, scale, bias, eps):
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


def layer_norm(x, p, name, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return normalize(x, mean, var, p[name + ".scale"], p[name + ".bias"], eps)


def hand_attention(p, name, inputs_q, inputs_k, inputs_v):
    """nnx.MultiHeadAttention: per-head projections, softmax(q k / sqrt(d)) v, output projection."""
    q = jnp.einsum("...f,fhd->...hd", inputs_q, p[name + ".query.kernel"]) + p[name + ".query.bias"]
    k = jnp.einsum("...f,fhd->...hd", inputs_k, p[name + ".key.kernel"]) + p[name + ".key.bias"]
    v = jnp.einsum("...f,fhd->...hd", inputs_v, p[name + ".value.kernel"]) + p[name + ".value.bias"]
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])
    weights = jax.nn.softmax(logits, axis=-1)
    heads = jnp.einsum("...hqk,...khd->...qhd", weights, v)
    return jnp.einsum("...qhd,hdf->...qf", heads, p[name + ".out.kernel"]) + p[name + ".out.bias"]


def hand_lstm(p, name, x, carry=None):
    """An nnx.LSTMCell over (batch, time, features); its input projections have no bias."""
    hidden = p[name + ".hi.kernel"].shape[1]
    c, h = carry if carry is not None else (jnp.zeros((x.shape[0], hidden)), jnp.zeros((x.shape[0], hidden)))
    outputs = []
    for t in range(x.shape[1]):

        def gate(i, g, xt=x[:, t], h=h):
            return dense(xt, p, f"{name}.{i}") + dense(h, p, f"{name}.{g}")

        i, f = jax.nn.sigmoid(gate("ii", "hi")), jax.nn.sigmoid(gate("if_", "hf"))
        g, o = jnp.tanh(gate("ig", "hg")), jax.nn.sigmoid(gate("io", "ho"))
        c = f * c + i * g
        h = o * jnp.tanh(c)
        outputs.append(h)
    return jnp.stack(outputs, axis=1)


# ---------------------------------------------------------------- 1. MLP


class MLP(nnx.Module):
    def __init__(self, *, rngs):
        self.layers = nnx.List([nnx.Linear(4, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)])

    def __call__(self, x):
        return self.layers[1](jax.nn.relu(self.layers[0](x)))


def make_mlp():
    return build(lambda: MLP(rngs=nnx.Rngs(0)))


def hand_mlp(p, x):
    return dense(jax.nn.relu(dense(x, p, "layers.0")), p, "layers.1")


MLP_ALL = ["layers.0.bias", "layers.0.kernel", "layers.1.bias", "layers.1.kernel"]


@pytest.mark.parametrize(
    "targets, selected, kind, num_embeddings, jit",
    [
        (None, MLP_ALL, "global", 5, False),  # 51 values: 5 chunks of 11, 4 unused
        (["layers.0"], MLP_ALL[:2], "global", 3, True),
        (r".*\.kernel", ["layers.0.kernel", "layers.1.kernel"], "per_tensor", 5, True),  # a regex: biases stay Params
    ],
)
def test_mlp(targets, selected, kind, num_embeddings, jit):
    model = make_mlp()
    # The default factories here (an nnx.Embed and an nnx.Linear), elsewhere numpy-initialised twins.
    hnet = hypernetize(model, embedding_dim=3, num_embeddings=num_embeddings, targets=targets, layout=kind,
                       rngs=nnx.Rngs(1), init="default")  # fmt: skip
    x = normal(2, (7, 4))
    compare(hnet, model, hand_mlp, (x,), selected=selected, kind=kind, num_embeddings=num_embeddings, jit=jit)


def test_mlp_partial_unselected_layer_is_a_trainable_copy():
    model = make_mlp()
    hnet = hyper(model, embedding_dim=3, num_embeddings=3, targets=["layers.0"])
    kept = hnet.target_network.layers[1]
    assert kept.kernel is not model.layers[1].kernel  # a copy of the Variable, not shared
    np.testing.assert_array_equal(kept.kernel.get_value(), model.layers[1].kernel.get_value())
    x = normal(2, (5, 4))

    # One SGD step on the hypernetwork's Params moves the kept layer by -lr * its gradient.
    def loss(h):
        return jnp.sum(h(x) ** 2)

    grads = nnx.jit(nnx.grad(loss))(hnet)
    before = kept.kernel.get_value()
    optimizer = nnx.Optimizer(hnet, optax.sgd(0.1), wrt=nnx.Param)
    optimizer.update(hnet, grads)
    gradient = grads["target_network"]["layers"][1]["kernel"].get_value()
    assert jnp.abs(gradient).sum() > 0
    np.testing.assert_allclose(kept.kernel.get_value(), before - 0.1 * gradient, **TOL)
    np.testing.assert_array_equal(model.layers[1].kernel.get_value(), before)  # the original is untouched


# ---------------------------------------------------------------- 2. CNN with BatchNorm


class CNN(nnx.Module):
    def __init__(self, *, rngs):
        self.conv = nnx.Conv(2, 3, (3, 3), padding="SAME", rngs=rngs)
        self.bn = nnx.BatchNorm(3, momentum=0.7, rngs=rngs)
        self.fc = nnx.Linear(3 * 5 * 5, 4, rngs=rngs)

    def __call__(self, x):
        y = jax.nn.relu(self.bn(self.conv(x)))
        return self.fc(y.reshape(y.shape[0], -1))


CNN_ALL = ["bn.bias", "bn.scale", "conv.bias", "conv.kernel", "fc.bias", "fc.kernel"]


def make_cnn():
    return build(lambda: CNN(rngs=nnx.Rngs(0)))


def hand_conv(p, x):
    y = jax.lax.conv_general_dilated(x, p["conv.kernel"], window_strides=(1, 1), padding="SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
    return y + p["conv.bias"]


def batch_moments(y):
    mean = y.mean(axis=(0, 1, 2))
    return mean, ((y - mean) ** 2).mean(axis=(0, 1, 2))  # the biased variance, as flax


def hand_cnn(stats: dict, training: bool, eps=1e-5):
    """The CNN (NHWC) by hand; eval mode normalises with ``stats["mean"]``/``["var"]``."""

    def forward(p, x):
        y = hand_conv(p, x)
        mean, var = batch_moments(y) if training else (stats["mean"], stats["var"])
        y = jax.nn.relu(normalize(y, mean, var, p["bn.scale"], p["bn.bias"], eps))
        return dense(y.reshape(y.shape[0], -1), p, "fc")

    return forward


@jax.jit
def hand_running_stats(p, x, stats, momentum=0.7):
    """nnx.BatchNorm's train-mode update: ``m * running + (1 - m) * batch`` (biased var)."""
    mean, var = batch_moments(hand_conv(p, x))
    return {"bn.mean": momentum * stats["mean"] + (1 - momentum) * mean,
            "bn.var": momentum * stats["var"] + (1 - momentum) * var}  # fmt: skip


@pytest.mark.parametrize(
    "training, targets, selected, kind, num_embeddings, jit",
    [
        (True, None, CNN_ALL, "global", 7, False),
        (False, None, CNN_ALL, "per_tensor", 12, True),
        (True, nnx.Conv, ["conv.bias", "conv.kernel"], "global", 2, True),
        (False, [nnx.Conv, "fc"], ["conv.bias", "conv.kernel", "fc.bias", "fc.kernel"], "per_tensor", 9, True),
    ],
)
def test_cnn_batchnorm(training, targets, selected, kind, num_embeddings, jit):
    model = make_cnn()
    original_stats = flat_values(model, nnx.BatchStat)
    hnet = hyper(model, embedding_dim=4, num_embeddings=num_embeddings, targets=targets, layout=kind)
    if not training:
        hnet.eval()  # must reach the target's BatchNorm
    bn = hnet.target_network.bn
    assert bn.use_running_average is (not training)
    assert model.bn.use_running_average is False  # the user's model keeps its mode

    stats = {"mean": original_stats["bn.mean"], "var": original_stats["bn.var"]}
    x = normal(3, (4, 5, 5, 2))
    params = compare(hnet, model, hand_cnn(stats, training), (x,), selected=selected, kind=kind,
                     num_embeddings=num_embeddings, jit=jit)  # fmt: skip

    # The running statistics moved exactly like the hand-computed update (or stayed frozen
    # in eval mode), and like nnx.BatchNorm's own update in the original model class run
    # with the same (hand-generated) weights; the user's model's did not move at all.
    after = flat_values(hnet.target_network, nnx.BatchStat)
    if training:
        assert_tree_close(after, hand_running_stats(params, x, stats))
    reference = nnx.clone(model)
    nnx.update(reference, nnx.from_flat_state({tuple(n.split(".")): nnx.Param(params[n]) for n in selected}))
    if not training:
        reference.eval()
    FORWARD[jit](reference, x)
    assert_tree_close(after, flat_values(reference, nnx.BatchStat))
    for name, value in flat_values(model, nnx.BatchStat).items():
        np.testing.assert_array_equal(value, original_stats[name])
    if training:
        assert not np.allclose(after["bn.mean"], original_stats["bn.mean"])
    else:
        for name, value in after.items():
            np.testing.assert_array_equal(value, original_stats[name])

    # Switching back to train mode reaches the target again.
    hnet.train()
    assert hnet.target_network.bn.use_running_average is False


# ---------------------------------------------------------------- 3. attention


class Block(nnx.Module):
    """Pre-norm block: LayerNorm, multi-head (self or cross) attention, a feed-forward MLP."""

    def __init__(self, dim=8, heads=2, *, rngs):
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, qkv_features=dim, decode=False, rngs=rngs)
        self.up = nnx.Linear(dim, 12, rngs=rngs)
        self.down = nnx.Linear(12, dim, rngs=rngs)

    def __call__(self, x, context=None):
        h = self.norm(x)
        x = x + self.attn(h, h if context is None else context)
        return x + self.down(jax.nn.gelu(self.up(x)))


def hand_block(p, x, context=None):
    h = layer_norm(x, p, "norm")
    kv = h if context is None else context
    x = x + hand_attention(p, "attn", h, kv, kv)
    return x + dense(jax.nn.gelu(dense(x, p, "up")), p, "down")


ATTN = [f"attn.{proj}.{leaf}" for proj in ("key", "out", "query", "value") for leaf in ("bias", "kernel")]
BLOCK_ALL = ATTN + ["down.bias", "down.kernel", "norm.bias", "norm.scale", "up.bias", "up.kernel"]


@pytest.mark.parametrize(
    "cross, targets, selected, kind, num_embeddings",
    [
        (False, nnx.MultiHeadAttention, ATTN, "global", 6),  # only the q/k/v/out projections
        (True, None, sorted(BLOCK_ALL), "per_tensor", 24),
    ],
)
def test_multihead_attention_block(cross, targets, selected, kind, num_embeddings):
    model = build(lambda: Block(rngs=nnx.Rngs(0)))
    hnet = hyper(model, embedding_dim=5, num_embeddings=num_embeddings, targets=targets, layout=kind)
    x = normal(4, (3, 5, 8))
    inputs = (x, normal(5, (3, 7, 8))) if cross else (x,)
    compare(hnet, model, hand_block, inputs, selected=selected, kind=kind, num_embeddings=num_embeddings, jit=True)


def make_attention():
    return build(lambda: nnx.MultiHeadAttention(num_heads=2, in_features=6, qkv_features=8, out_features=5,
                                                in_kv_features=4, decode=False, rngs=nnx.Rngs(0)))  # fmt: skip


def attention_inputs():
    return normal(1, (2, 3, 6)), normal(2, (2, 5, 4)), normal(3, (2, 5, 4))


def test_multihead_attention_alone():
    """A bare nnx.MultiHeadAttention (cross-attention, query/key/value of different sizes)."""
    model = make_attention()
    hnet = hyper(model, embedding_dim=4, num_embeddings=7)
    q, k, v = attention_inputs()

    def hand(p, q, k, v):
        return hand_attention({"attn." + n: a for n, a in p.items()}, "attn", q, k, v)

    selected = [n.removeprefix("attn.") for n in ATTN]
    compare(hnet, model, hand, (q, k, v), selected=selected, kind="global", num_embeddings=7, jit=False)


# ---------------------------------------------------------------- 4. recurrent


class Recurrent(nnx.Module):
    """An nnx.LSTMCell over time (by nnx.RNN, or a Python loop), then a linear read-out of every step."""

    def __init__(self, *, unrolled=False, rngs):
        self.rnn = nnx.RNN(nnx.LSTMCell(3, 4, rngs=rngs), rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)
        self.unrolled = unrolled

    def __call__(self, x, carry=None):
        if not self.unrolled:
            return self.head(self.rnn(x, initial_carry=carry))
        if carry is None:
            carry = (jnp.zeros((x.shape[0], 4)), jnp.zeros((x.shape[0], 4)))
        outputs = []
        for t in range(x.shape[1]):
            carry, y = self.rnn.cell(carry, x[:, t])
            outputs.append(y)
        return self.head(jnp.stack(outputs, axis=1))


def hand_recurrent(p, x, carry=None):
    return dense(hand_lstm(p, "rnn.cell", x, carry), p, "head")


LSTM_ALL = sorted(
    [f"rnn.cell.{g}.{leaf}" for g in ("hf", "hg", "hi", "ho") for leaf in ("bias", "kernel")]
    + [f"rnn.cell.{g}.kernel" for g in ("if_", "ig", "ii", "io")]
)


@pytest.mark.parametrize(
    "targets, selected, kind, num_embeddings, with_carry, unrolled, jit",
    [
        (["rnn.cell.ii", "rnn.cell.hi", "head.kernel"], ["head.kernel", "rnn.cell.hi.bias", "rnn.cell.hi.kernel",
                                                         "rnn.cell.ii.kernel"], "global", 4, False, True, False),  # fmt: skip
        (r"rnn\.cell\.h.", [n for n in LSTM_ALL if n.startswith("rnn.cell.h")], "per_tensor", 10, True, False, True),
    ],
    ids=["cell-loop-subset-global-eager", "nnx.RNN-hidden-per_tensor-carry-jit"],
)
def test_lstm(targets, selected, kind, num_embeddings, with_carry, unrolled, jit):
    model = build(lambda: Recurrent(unrolled=unrolled, rngs=nnx.Rngs(0)))
    hnet = hyper(model, embedding_dim=3, num_embeddings=num_embeddings, targets=targets, layout=kind)
    x = normal(6, (2, 4, 3))
    inputs = (x,)
    if with_carry:
        c0, h0 = normal(8, (2, 2, 4))
        inputs = (x, (c0, h0))
    compare(hnet, model, hand_recurrent, inputs, selected=selected, kind=kind, num_embeddings=num_embeddings, jit=jit)
    # A second call after the generator changed uses freshly generated weights (under jit:
    # the same compiled program, reading the new arrays).
    hnet.weight_generator.bias.set_value(hnet.weight_generator.bias.get_value() + 0.1)
    expected = hand_recurrent(hand_generated(hnet, model, selected, kind, num_embeddings), *inputs)
    assert_tree_close(FORWARD[jit](hnet, *inputs), expected)


# ---------------------------------------------------------------- 5. tied parameters


class OutputProjection(nnx.Module):
    """``h @ weight.T + bias`` with a weight given from outside (an embedding matrix)."""

    def __init__(self, weight: nnx.Param, *, rngs):
        self.weight = weight
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (weight.shape[0],), minval=-0.5, maxval=0.5))

    def __call__(self, h):
        return h @ self.weight[...].T + self.bias[...]


class TiedLM(nnx.Module):
    """Embedding / output tying: ``out.weight is emb.embedding`` (one nnx.Param object)."""

    def __init__(self, vocab=10, dim=4, *, rngs):
        self.emb = nnx.Embed(vocab, dim, rngs=rngs)
        self.mid = nnx.Linear(dim, dim, rngs=rngs)
        self.out = OutputProjection(self.emb.embedding, rngs=rngs)

    def __call__(self, tokens):
        return self.out(jnp.tanh(self.mid(self.emb(tokens))))


class TiedLinears(nnx.Module):
    """Two square linear layers sharing one kernel (different biases)."""

    def __init__(self, dim=5, *, rngs):
        self.first = nnx.Linear(dim, dim, rngs=rngs)
        self.second = nnx.Linear(dim, dim, rngs=rngs)
        self.second.kernel = self.first.kernel

    def __call__(self, x):
        return self.second(jnp.tanh(self.first(x)))


def hand_tied_lm(p, tokens):
    shared = p["emb.embedding"]  # one generated matrix, used twice
    hidden = jnp.tanh(dense(shared[tokens], p, "mid"))
    return hidden @ p["out.weight"].T + p["out.bias"]


def hand_tied_linears(p, x):
    return dense(jnp.tanh(dense(x, p, "first")), p, "second")


@pytest.mark.parametrize(
    "targets, selected, kind, num_embeddings, jit",
    [
        (None, ["emb.embedding", "mid.bias", "mid.kernel", "out.bias"], "global", 4, False),
        (["out.weight"], ["emb.embedding"], "global", 3, True),  # selected through its alias only
        (["out"], ["emb.embedding", "out.bias"], "per_tensor", 5, True),
    ],
)
def test_tied_embedding_and_output(targets, selected, kind, num_embeddings, jit):
    model = build(lambda: TiedLM(rngs=nnx.Rngs(0)))
    assert model.out.weight is model.emb.embedding
    hnet = hyper(model, embedding_dim=3, num_embeddings=num_embeddings, targets=targets, layout=kind)
    assert [s.name for s in hnet.layout.slots].count("emb.embedding") == 1
    assert hnet.layout.slots[0].aliases == ("out.weight",)
    target = hnet.target_network
    assert target.out.weight is target.emb.embedding  # one slot, under both names
    tokens = randint(9, (3, 6), 10)
    compare(hnet, model, hand_tied_lm, (tokens,), selected=selected, kind=kind, num_embeddings=num_embeddings,
            jit=jit, tied={"out.weight": "emb.embedding"})  # fmt: skip
    assert hnet.target_network.out.weight is hnet.target_network.emb.embedding  # still tied after the call
    plain = hnet.materialize()
    assert plain.out.weight is plain.emb.embedding and isinstance(plain.out.weight, nnx.Param)


@pytest.mark.parametrize("kind, num_embeddings, jit", [("per_tensor", 6, True)])
def test_tied_linears(kind, num_embeddings, jit):
    model = build(lambda: TiedLinears(rngs=nnx.Rngs(0)))
    hnet = hyper(model, embedding_dim=3, num_embeddings=num_embeddings, layout=kind)
    assert hnet.layout.num_params == 5 + 25 + 5  # the shared 5x5 matrix once
    x = normal(10, (4, 5))
    compare(hnet, model, hand_tied_linears, (x,), selected=["first.bias", "first.kernel", "second.bias"], kind=kind,
            num_embeddings=num_embeddings, jit=jit, tied={"second.kernel": "first.kernel"})  # fmt: skip
    assert hnet.target_network.second.kernel is hnet.target_network.first.kernel


# ---------------------------------------------------------------- 6. emitting the original weights


ORIGINAL_CASES = {
    # name: (model factory, input factory, train mode, targets)
    "mlp": (make_mlp, lambda: (normal(11, (7, 4)),), True, None),
    "mlp-partial": (make_mlp, lambda: (normal(11, (7, 4)),), True, ["layers.1"]),
    "cnn-bn-train": (make_cnn, lambda: (normal(11, (4, 5, 5, 2)),), True, None),
    "cnn-bn-eval": (make_cnn, lambda: (normal(11, (4, 5, 5, 2)),), False, None),
    "lstm-subset": (lambda: build(lambda: Recurrent(unrolled=True, rngs=nnx.Rngs(0))), lambda: (normal(11, (2, 4, 3)),),
                    True, ["rnn.cell.ii", "rnn.cell.hi", "head"]),  # fmt: skip
    "attention-subset": (make_attention, attention_inputs, True, ["query", "value"]),
    "tied": (lambda: build(lambda: TiedLM(rngs=nnx.Rngs(0))), lambda: (randint(11, (3, 6), 10),), True, None),
    "tied-linears": (lambda: build(lambda: TiedLinears(rngs=nnx.Rngs(0))), lambda: (normal(11, (4, 5)),), True,
                     None),  # fmt: skip
}


def _padded_num_embeddings(sizes: Sequence[int]) -> int:
    """The smallest ``num_embeddings`` whose per_tensor layout has unused values."""
    for num_embeddings in range(len(sizes), 4 * sum(sizes)):
        _, chunk_dim, num_chunks = hand_layout(sizes, "per_tensor", num_embeddings)
        if num_chunks * chunk_dim > sum(sizes):
            return num_embeddings
    raise AssertionError("no padded per_tensor layout")


# The two modes of the claim for every case; NaN padding (the generator's unused values
# are never read) for some. Every mode runs eagerly and under nnx.jit, and so does every
# case but the (slow to compile) hand-unrolled LSTM.
ORIGINAL_RUNS = [
    ("mlp", "compact", True), ("mlp", "generator", False), ("mlp", "full-with-nan-padding", False),
    ("mlp-partial", "compact", False), ("mlp-partial", "generator", True),
    ("cnn-bn-train", "compact", False), ("cnn-bn-train", "generator", True), ("cnn-bn-train", "full-with-nan-padding", False),
    ("cnn-bn-eval", "compact", True), ("cnn-bn-eval", "generator", False),
    ("lstm-subset", "compact", False), ("lstm-subset", "generator", False), ("lstm-subset", "full-with-nan-padding", False),
    ("attention-subset", "compact", False), ("attention-subset", "generator", True),
    ("tied", "compact", False), ("tied", "generator", False), ("tied", "full-with-nan-padding", True),
    ("tied-linears", "compact", True), ("tied-linears", "generator", False),
]  # fmt: skip


@pytest.mark.parametrize(
    "case, mode, jit", ORIGINAL_RUNS, ids=[f"{c}-{m}-{'jit' if j else 'eager'}" for c, m, j in ORIGINAL_RUNS]
)
def test_generator_emitting_original_weights_reproduces_model(case, mode, jit):
    make_model, make_inputs, training, targets = ORIGINAL_CASES[case]
    model = make_model()
    reference = nnx.clone(model)  # the same weights and state, run untouched as the reference
    reference_probe = nnx.clone(model)  # for the gradients
    if not training:
        reference.eval()
        reference_probe.eval()
    names = list(select(model, targets=targets).names)
    params = flat_values(model, nnx.Param)
    values = [params[n] for n in names]
    sizes = [v.size for v in values]
    compact = jnp.concatenate([v.reshape(-1) for v in values])

    kind = "per_tensor" if mode == "full-with-nan-padding" else "global"
    num_embeddings = {"compact": 2 * len(values) + 1, "generator": 1}.get(mode) or _padded_num_embeddings(sizes)
    hnet = hyper(model, embedding_dim=3, num_embeddings=num_embeddings, targets=targets, layout=kind)
    if not training:
        hnet.eval()
    offsets = None
    if mode == "compact":
        vector = compact
    elif mode == "full-with-nan-padding":  # unused values are NaN: reading any would show
        offsets, chunk_dim, num_chunks = hand_layout(sizes, "per_tensor", num_embeddings)
        vector = jnp.full((num_chunks * chunk_dim,), jnp.nan)
        for value, offset in zip(values, offsets):
            vector = vector.at[offset : offset + value.size].set(value.reshape(-1))
        assert jnp.isnan(vector).any()
    else:  # E = 1, global layout: the single chunk is the whole vector; K = 0, b = it
        assert hnet.weight_generator.kernel.shape == (3, compact.size)
        hnet.weight_generator.kernel.set_value(jnp.zeros((3, compact.size)))
        hnet.weight_generator.bias.set_value(compact)
        vector = None
    probe = nnx.clone(hnet)  # for the gradients: the state before the call

    inputs = make_inputs()
    expected = FORWARD[jit](reference, *inputs)
    actual = FORWARD[jit](hnet, *inputs) if vector is None else FORWARD_WITH[jit](hnet, vector, *inputs)
    # Bit for bit eagerly; under jit XLA may fuse the two programs' float ops differently.
    same = np.testing.assert_array_equal if not jit else functools.partial(np.testing.assert_allclose, rtol=2e-6, atol=1e-6)
    same(np.asarray(actual), np.asarray(expected))
    # Stateful variables (BatchNorm statistics, RNG counts) evolve identically.
    hnet_state = flat_values(hnet.target_network, nnx.Not(nnx.Any(nnx.Param, GeneratedSlot)))
    reference_state = flat_values(reference, nnx.Not(nnx.Param))
    assert hnet_state.keys() == reference_state.keys()
    for name, value in reference_state.items():
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            value, hnet_state[name] = jax.random.key_data(value), jax.random.key_data(hnet_state[name])
        same(hnet_state[name], value, err_msg=name)

    # Gradients: the generated vector gets the model's parameter gradients laid end to end
    # (zero on padding); kept parameters get the model's own gradients.
    cotangents = random_like(expected, seed=12)
    reference_grads = flat_values(GRADS[jit](reference_probe, cotangents, *inputs))
    if vector is None:
        hnet_grads = flat_values(GRADS[jit](probe, cotangents, *inputs))
        vector_grad = hnet_grads["weight_generator.bias"]
    else:
        hnet_grads, vector_grad = VECTOR_GRADS[jit](probe, vector, cotangents, *inputs)
        hnet_grads = flat_values(hnet_grads)
    if offsets is not None:
        expected_vector_grad = jnp.zeros_like(vector)
        for name, offset, size in zip(names, offsets, sizes):
            expected_vector_grad = expected_vector_grad.at[offset : offset + size].set(reference_grads[name].reshape(-1))
    else:
        expected_vector_grad = jnp.concatenate([reference_grads[n].reshape(-1) for n in names])
    np.testing.assert_allclose(vector_grad, expected_vector_grad, rtol=1e-5, atol=1e-6)
    unselected = [n for n in reference_grads if n not in names]
    assert set(hnet_grads) == set(GENERATOR_PARAMS) | {"target_network." + n for n in unselected}
    for name in unselected:
        np.testing.assert_allclose(hnet_grads["target_network." + name], reference_grads[name], rtol=1e-5, atol=1e-6)
