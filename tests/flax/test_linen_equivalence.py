"""Numerical equivalence of hypernetized linen models with a hand-written computation.

Every test computes the same math twice:

* through :func:`hypernn.hypernetize` (``hnet.apply(variables, x)``), and
* by hand, from the hypernetwork's ``embedding_module/embedding`` and
  ``weight_generator/kernel, bias`` arrays with plain jnp ops: ``emb = E[arange]``,
  ``chunks = emb @ kernel + bias``, ``flat = chunks.reshape(-1)``,
  ``tensor = flat[offset:offset + n].reshape(shape)``, and the model's forward written
  out (matmuls, ``lax.conv_general_dilated``, batch / layer norm, multi-head attention,
  the LSTM and GRU cells).

The offsets of the hand-written side come from an independent re-derivation of the chunk
layout (:func:`hand_layout`), not from ``hnet.layout``; the layout is then checked to
agree. Outputs, updated collections (BatchNorm statistics) and the gradients of every
parameter of the hypernetwork are compared, eagerly and under :func:`jax.jit`.
"""

from __future__ import annotations

import functools

import math
from typing import Callable, Dict, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypernn
from hypernn import hypernetize as _hypernetize

#: hyper-nn's computations (no start map; see test_linen_start.py)
hypernetize = functools.partial(_hypernetize, init="default")
from layout_reference import hand_layout

RTOL, ATOL = 2e-5, 2e-6
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5
GENERATOR_LEAVES = ("embedding_module.embedding", "weight_generator.bias", "weight_generator.kernel")


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def maybe_jit(request) -> Callable:
    """Runs each test once eagerly and once with the functions under test jitted."""
    return jax.jit if request.param else (lambda fn: fn)


# ---------------------------------------------------------------- helpers


def dotted_leaves(tree) -> Dict[str, jax.Array]:
    """``{"Dense_0.kernel": array}`` for a nested dict, in jax's (sorted) order."""
    return {".".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def nested(flat: Dict[str, jax.Array]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        *parents, last = name.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def shapes_of(tree):
    return jax.tree_util.tree_map(lambda leaf: (tuple(leaf.shape), str(leaf.dtype)), tree)


_MODEL_VARIABLES: Dict[tuple, dict] = {}


def model_variables_for(model: nn.Module, *inputs, seed: int, **init_kwargs) -> dict:
    """A "pretrained" variable tree for ``model``: the structure of ``model.init``, filled
    with random values (no zero biases or unit scales; non-trivial BatchNorm statistics).

    Filled with numpy from an abstract trace, so no XLA compilation is spent on it.
    """
    key = (repr(model), seed, repr(shapes_of(inputs)), repr(sorted(init_kwargs.items())))
    if key not in _MODEL_VARIABLES:
        abstract = jax.eval_shape(lambda *inputs: model.init(jax.random.key(0), *inputs, **init_kwargs), *inputs)
        rng = np.random.default_rng(seed)

        def fill(path, leaf):
            collection, name = str(path[0].key), str(path[-1].key)
            if collection == "params":
                value = 0.4 * rng.standard_normal(leaf.shape)
            else:
                value = rng.uniform(0.5, 2.0, leaf.shape) if name == "var" else rng.uniform(-0.5, 0.5, leaf.shape)
            return jnp.asarray(value, leaf.dtype)

        _MODEL_VARIABLES[key] = jax.tree_util.tree_map_with_path(fill, abstract)
    return _MODEL_VARIABLES[key]




def hnet_variables(hnet, model_variables: dict, inputs: Sequence, *, unselected: Sequence[str], num_chunks: int,
                   chunk_dim: int, embedding_dim: int, init_kwargs: dict, seed: int = 3) -> dict:  # fmt: skip
    """Check the structure ``hnet.init`` gives (abstractly) and fill it: random generator
    arrays, the model's own unselected params and collections."""
    abstract = jax.eval_shape(lambda *inputs: hnet.init(jax.random.key(1), *inputs, **init_kwargs), *inputs)
    model_params = dotted_leaves(model_variables["params"])
    kept = nested({n: model_params[n] for n in unselected})
    expected = {
        "embedding_module": {"embedding": jax.ShapeDtypeStruct((num_chunks, embedding_dim), jnp.float32)},
        "weight_generator": {"kernel": jax.ShapeDtypeStruct((embedding_dim, chunk_dim), jnp.float32),
                             "bias": jax.ShapeDtypeStruct((chunk_dim,), jnp.float32)},
        **({"target_network": kept} if unselected else {}),
    }  # fmt: skip
    collections = {c: v for c, v in model_variables.items() if c != "params"}
    assert shapes_of(abstract) == shapes_of({"params": expected, **collections})
    rng = np.random.default_rng(seed)
    generator = {
        "embedding_module": {"embedding": rng.standard_normal((num_chunks, embedding_dim))},
        "weight_generator": {"kernel": 0.4 / math.sqrt(embedding_dim) * rng.standard_normal((embedding_dim, chunk_dim)),
                             "bias": 0.1 * rng.standard_normal(chunk_dim)},  # non-zero, so a mis-added bias shows
    }  # fmt: skip
    generator = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), generator)
    return {"params": {**generator, **({"target_network": kept} if unselected else {})}, **collections}


def assert_trees_close(actual, expected, rtol=RTOL, atol=ATOL, what="output"):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected), what
    for (path, a), e in zip(jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol, err_msg=f"{what} {jax.tree_util.keystr(path)}")


def assert_trees_equal(actual, expected, what="output"):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected), what
    for (path, a), e in zip(jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=f"{what} {jax.tree_util.keystr(path)}")


def weighted_sum(tree, seed: int = 7) -> jax.Array:
    """``sum(leaf * c)`` with fixed random cotangents ``c``: a scalar loss over every output."""
    rng = np.random.default_rng(seed)
    return sum(jnp.sum(leaf * rng.standard_normal(leaf.shape).astype(leaf.dtype)) for leaf in jax.tree_util.tree_leaves(tree))


_PREPARED: Dict[tuple, dict] = {}


@pytest.fixture
def shared(request) -> dict:
    """A dict shared by the eager and the jit run of one test case: the hypernetwork, its
    variables and the hand-written results are computed (and checked) once."""
    params = request.node.callspec.params
    key = (request.node.function.__name__,) + tuple((k, repr(v)) for k, v in sorted(params.items()) if k != "maybe_jit")
    return _PREPARED.setdefault(key, {})


def compare(
    make_hnet: Callable,
    model_variables: dict,
    hand_forward: Callable,
    inputs: Sequence,
    *,
    selected: Sequence[str],
    kind: str,
    num_embeddings: int,
    embedding_dim: int,
    maybe_jit: Callable,
    shared: dict,
    init_kwargs: dict = None,
    apply_kwargs: dict = None,
    mutable=False,
) -> None:
    """Check ``hnet.apply`` (its output, updated collections and gradients) against
    ``hand_forward(params_by_name, *inputs)``.

    ``make_hnet()`` builds the hypernetwork; ``selected``: the generated params' dotted
    names, in the order they must be laid out; ``model_variables``: the original model's
    variables, given to hypernetize as ``variables=`` (the source of the unselected params
    and of the other collections). With ``mutable``, ``hand_forward`` returns
    ``(output, updated collections)``.
    """
    if not shared:
        shared.update(prepare(make_hnet(), model_variables, hand_forward, inputs, selected=selected, kind=kind,
                              num_embeddings=num_embeddings, embedding_dim=embedding_dim,
                              init_kwargs=dict(init_kwargs or {}), mutable=mutable))  # fmt: skip
    hnet, variables = shared["hnet"], shared["variables"]
    apply_kwargs = dict(apply_kwargs or {})

    def loss(params, *inputs):
        result = hnet.apply({**variables, "params": params}, *inputs, mutable=mutable, **apply_kwargs)
        return weighted_sum(result[0] if mutable else result), result

    (_, actual), actual_grads = maybe_jit(jax.value_and_grad(loss, has_aux=True))(variables["params"], *inputs)
    assert_trees_close(actual, shared["expected"])
    actual_grads, expected_grads = dotted_leaves(actual_grads), shared["expected_grads"]
    assert set(actual_grads) == set(expected_grads)
    for name in expected_grads:
        np.testing.assert_allclose(actual_grads[name], expected_grads[name], rtol=GRAD_RTOL, atol=GRAD_ATOL,
                                   err_msg=f"gradient of {name}")  # fmt: skip
        assert jnp.abs(expected_grads[name]).sum() > 0, f"degenerate test: zero gradient for {name}"


def prepare(hnet, model_variables, hand_forward, inputs, *, selected, kind, num_embeddings, embedding_dim, init_kwargs,
            mutable) -> dict:  # fmt: skip
    """Check the hypernetwork's layout and variables; compute the hand-written results."""
    model_params = dotted_leaves(model_variables["params"])
    shapes = [tuple(model_params[name].shape) for name in selected]
    sizes = [math.prod(shape) for shape in shapes]
    offsets, chunk_dim, num_chunks = hand_layout(sizes, kind, num_embeddings)
    unselected = [n for n in model_params if n not in selected]

    # The hypernetwork generates exactly the selected params where the layout says.
    assert hnet.selection.names == tuple(selected)
    assert [(s.name, s.shape, s.offset) for s in hnet.layout.slots] == list(zip(selected, shapes, offsets))
    assert (hnet.layout.num_chunks, hnet.layout.chunk_dim) == (num_chunks, chunk_dim)
    assert hnet.layout.num_params == sum(sizes) and hnet.layout.generated_size == num_chunks * chunk_dim
    variables = hnet_variables(hnet, model_variables, inputs, unselected=unselected, num_chunks=num_chunks,
                               chunk_dim=chunk_dim, embedding_dim=embedding_dim, init_kwargs=init_kwargs)  # fmt: skip

    # Leaves of the hand-written computation: copies of the generator's arrays, and the
    # *original* model's unselected params.
    hnet_leaves = dotted_leaves(variables["params"])
    leaves = {n: jnp.array(hnet_leaves[n]) for n in GENERATOR_LEAVES}
    leaves.update({"target_network." + n: jnp.array(model_params[n]) for n in unselected})
    assert set(leaves) == set(hnet_leaves)

    @jax.jit  # one compilation, instead of one per slice offset (and its transpose)
    def generate(leaves):
        embedding = leaves["embedding_module.embedding"][jnp.arange(num_chunks)]
        chunks = embedding @ leaves["weight_generator.kernel"] + leaves["weight_generator.bias"]
        flat = chunks.reshape(-1)
        return {n: flat[o : o + s].reshape(shape) for n, shape, o, s in zip(selected, shapes, offsets, sizes)}

    def hand(leaves, *inputs):
        p = {**generate(leaves), **{n: leaves["target_network." + n] for n in unselected}}
        result = hand_forward(p, *inputs)
        return weighted_sum(result[0] if mutable else result), result

    # The model's forward runs eagerly: its ops (of the same shapes in every case of a
    # model) are compiled once, and not again for each case as a jitted whole would be.
    (_, expected), expected_grads = jax.value_and_grad(hand, has_aux=True)(leaves, *inputs)
    return {"hnet": hnet, "variables": variables, "expected": expected, "expected_grads": expected_grads}


# ---------------------------------------------------------------- hand-written layers


def dense(p, prefix, x, bias=True):
    out = x @ p[prefix + ".kernel"]
    return out + p[prefix + ".bias"] if bias else out


def layer_norm(p, prefix, x, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p[prefix + ".scale"] + p[prefix + ".bias"]


def relu(x):
    return jnp.maximum(x, 0)


def sigmoid(x):
    return 1 / (1 + jnp.exp(-x))


# ---------------------------------------------------------------- 1. MLPs


class Block(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        return nn.tanh(nn.Dense(self.features)(x))


class MLP(nn.Module):
    """Dense, a nested Block (params two modules deep: ``Block_0.Dense_0.kernel``), Dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(6)(x))  # Dense_0
        x = Block(5)(x)  # Block_0 holding its own Dense_0
        return nn.Dense(3)(x)  # Dense_1


def hand_mlp(p, x):
    x = relu(dense(p, "Dense_0", x))
    x = jnp.tanh(dense(p, "Block_0.Dense_0", x))
    return dense(p, "Dense_1", x)


# jax's sorted order
MLP_ALL = ["Block_0.Dense_0.bias", "Block_0.Dense_0.kernel", "Dense_0.bias", "Dense_0.kernel", "Dense_1.bias",
           "Dense_1.kernel"]  # fmt: skip
KERNELS = [n for n in MLP_ALL if n.endswith("kernel")]


@pytest.mark.parametrize(
    "targets, exclude, selected, kind, num_embeddings",
    [
        (None, None, MLP_ALL, "global", 5),  # 86 values: 5 chunks of 18, 4 unused
        (None, None, MLP_ALL, "per_tensor", 9),  # padding between tensors
        ("Dense_0.kernel", None, ["Dense_0.kernel"], "global", 1),  # a regex, fully matching the dotted path
        (r".*\.kernel", None, KERNELS, "per_tensor", 6),
        (["Dense_0"], None, MLP_ALL[:4], "global", 3),  # a name matches as a dotted suffix, at any depth
        (["Block_0.Dense_0.kernel", "Dense_1"], None, [MLP_ALL[1]] + MLP_ALL[4:], "global", 4),
        (Block, None, MLP_ALL[:2], "per_tensor", 4),  # a user module class: the params it holds indirectly
        (nn.Dense, [Block, "bias"], ["Dense_0.kernel", "Dense_1.kernel"], "global", 2),  # exclude: a class and a name
        (None, r"Dense_1\..*", MLP_ALL[:4], "per_tensor", 7),  # exclude by regex
    ],
)
def test_mlp(targets, exclude, selected, kind, num_embeddings, maybe_jit, shared):
    x = jax.random.normal(jax.random.key(0), (7, 4))
    model_variables = model_variables_for(MLP(), x, seed=11)

    def make_hnet():
        return hypernetize(MLP(), embedding_dim=3, num_embeddings=num_embeddings, targets=targets, exclude=exclude,
                           layout=kind, example_inputs=(x,), variables=model_variables)  # fmt: skip

    compare(make_hnet, model_variables, hand_mlp, (x,), selected=selected, kind=kind, num_embeddings=num_embeddings,
            embedding_dim=3, maybe_jit=maybe_jit, shared=shared)  # fmt: skip


# ---------------------------------------------------------------- 2. CNN with BatchNorm


MOMENTUM, BN_EPS = 0.7, 1e-5


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.Conv(3, (3, 3), padding="SAME")(x)
        y = nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM, epsilon=BN_EPS)(y)
        y = nn.relu(y).reshape((y.shape[0], -1))
        return nn.Dense(4)(y)


CNN_ALL = ["BatchNorm_0.bias", "BatchNorm_0.scale", "Conv_0.bias", "Conv_0.kernel", "Dense_0.bias", "Dense_0.kernel"]


def hand_cnn(stats: dict, train: bool):
    """The CNN by hand; in train mode it also returns the updated running statistics."""

    def forward(p, x):
        y = jax.lax.conv_general_dilated(x, p["Conv_0.kernel"], window_strides=(1, 1), padding=((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["Conv_0.bias"]  # fmt: skip
        if train:
            mean = y.mean(axis=(0, 1, 2))
            var = ((y - mean) ** 2).mean(axis=(0, 1, 2))  # biased, as flax's BatchNorm
        else:
            mean, var = stats["mean"], stats["var"]
        y = (y - mean) / jnp.sqrt(var + BN_EPS) * p["BatchNorm_0.scale"] + p["BatchNorm_0.bias"]
        out = dense(p, "Dense_0", relu(y).reshape((y.shape[0], -1)))
        if not train:
            return out
        new_stats = {"mean": MOMENTUM * stats["mean"] + (1 - MOMENTUM) * mean,
                     "var": MOMENTUM * stats["var"] + (1 - MOMENTUM) * var}  # fmt: skip
        return out, {"batch_stats": {"BatchNorm_0": new_stats}}

    return forward


def cnn_input():
    return jax.random.normal(jax.random.key(0), (4, 5, 5, 2))


@pytest.mark.parametrize(
    "train, targets, selected, kind, num_embeddings",
    [
        (True, None, CNN_ALL, "global", 7),
        (False, None, CNN_ALL, "global", 7),
        (True, nn.Conv, ["Conv_0.bias", "Conv_0.kernel"], "global", 2),  # BatchNorm's scale/bias stay params
        (False, [nn.Conv, "Dense_0"], CNN_ALL[2:], "per_tensor", 9),
    ],
)
def test_cnn_batchnorm(train, targets, selected, kind, num_embeddings, maybe_jit, shared):
    x = cnn_input()
    model_variables = model_variables_for(CNN(), x, train=False, seed=13)

    def make_hnet():
        return hypernetize(CNN(), embedding_dim=4, num_embeddings=num_embeddings, targets=targets, layout=kind,
                           example_inputs=(x,), init_kwargs={"train": False}, variables=model_variables)  # fmt: skip

    stats = model_variables["batch_stats"]["BatchNorm_0"]
    compare(make_hnet, model_variables, hand_cnn(stats, train), (x,), selected=selected, kind=kind,
            num_embeddings=num_embeddings, embedding_dim=4, maybe_jit=maybe_jit, shared=shared,
            init_kwargs={"train": False}, apply_kwargs={"train": train}, mutable=["batch_stats"] if train else False)  # fmt: skip


def test_cnn_batch_stats_update_exactly_as_the_model_does(maybe_jit):
    """Train mode: the hypernetwork's new running statistics (and output) equal the
    original model's apply on the very weights the hypernetwork generated."""
    x = cnn_input()
    model = CNN()
    model_variables = model_variables_for(model, x, train=False, seed=13)
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=5, targets=[nn.Conv, "BatchNorm_0"], example_inputs=(x,),
                       init_kwargs={"train": False}, variables=model_variables)  # fmt: skip
    variables = jax.jit(lambda x: hnet.init(jax.random.key(2), x, train=False))(x)

    def both(variables, x):
        out, updates = hnet.apply(variables, x, train=True, mutable=["batch_stats"])
        generated = hnet.apply(variables, method=hnet.generated_variables)
        reference = model.apply({"params": generated, "batch_stats": variables["batch_stats"]}, x, train=True,
                                mutable=["batch_stats"])  # fmt: skip
        # Eval mode with the updated statistics: reads the running averages, changes nothing.
        evaluated = hnet.apply({**variables, **updates}, x, train=False)
        reference_eval = model.apply({"params": generated, **updates}, x, train=False)
        return (out, updates, evaluated), (*reference, reference_eval)

    actual, expected = maybe_jit(both)(variables, x)
    assert_trees_equal(actual, expected)
    new_mean, old_mean = actual[1]["batch_stats"]["BatchNorm_0"]["mean"], model_variables["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(new_mean, old_mean)
    assert not np.allclose(actual[0], actual[2])  # train and eval modes really differ


# ---------------------------------------------------------------- 3. attention


def hand_attention(p, prefix, x_q, x_kv, mask=None):
    """flax's multi-head dot-product attention: per-head projections, scaled dot products."""
    q = jnp.einsum("...d,dhk->...hk", x_q, p[prefix + "query.kernel"]) + p[prefix + "query.bias"]
    k = jnp.einsum("...d,dhk->...hk", x_kv, p[prefix + "key.kernel"]) + p[prefix + "key.bias"]
    v = jnp.einsum("...d,dhk->...hk", x_kv, p[prefix + "value.kernel"]) + p[prefix + "value.bias"]
    q = q / jnp.sqrt(q.shape[-1])
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    heads = jnp.einsum("...hqk,...khd->...qhd", weights, v)
    return jnp.einsum("...qhd,hdo->...qo", heads, p[prefix + "out.kernel"]) + p[prefix + "out.bias"]


ATTN = ["key.bias", "key.kernel", "out.bias", "out.kernel", "query.bias", "query.kernel", "value.bias", "value.kernel"]


def cross_attention_inputs():
    # The shapes of AttentionBlock's self-attention, so eager runs reuse compiled ops.
    k1, k2 = jax.random.split(jax.random.key(0))
    return jax.random.normal(k1, (3, 5, 6)), jax.random.normal(k2, (3, 5, 6))


@pytest.mark.parametrize(
    "targets, selected, kind, num_embeddings",
    [
        (["query.kernel", "key"], ["key.bias", "key.kernel", "query.kernel"], "per_tensor", 4),
    ],
)
def test_cross_attention(targets, selected, kind, num_embeddings, maybe_jit, shared):
    """The attention module itself as the model, attending from queries to other inputs."""
    model = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
    x_q, x_kv = cross_attention_inputs()
    model_variables = model_variables_for(model, x_q, x_kv, seed=15)

    def make_hnet():
        return hypernetize(model, embedding_dim=4, num_embeddings=num_embeddings, targets=targets, layout=kind,
                           example_inputs=(x_q, x_kv), variables=model_variables)  # fmt: skip

    compare(make_hnet, model_variables, lambda p, q, kv: hand_attention(p, "", q, kv), (x_q, x_kv), selected=selected,
            kind=kind, num_embeddings=num_embeddings, embedding_dim=4, maybe_jit=maybe_jit, shared=shared)  # fmt: skip


class AttentionBlock(nn.Module):
    """A pre-norm transformer block."""

    @nn.compact
    def __call__(self, x, mask=None):
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)(h, h, mask=mask)
        h = nn.LayerNorm()(x)
        h = nn.Dense(12)(h)
        h = nn.relu(h)
        return x + nn.Dense(x.shape[-1])(h)


MHA = "MultiHeadDotProductAttention_0."
BLOCK_ALL = ["Dense_0.bias", "Dense_0.kernel", "Dense_1.bias", "Dense_1.kernel", "LayerNorm_0.bias", "LayerNorm_0.scale",
             "LayerNorm_1.bias", "LayerNorm_1.scale"] + [MHA + n for n in ATTN]  # fmt: skip


def hand_block(p, x, mask=None):
    h = layer_norm(p, "LayerNorm_0", x)
    x = x + hand_attention(p, MHA, h, h, mask)
    h = relu(dense(p, "Dense_0", layer_norm(p, "LayerNorm_1", x)))
    return x + dense(p, "Dense_1", h)


@pytest.mark.parametrize(
    "targets, selected, kind, num_embeddings, causal",
    [
        (nn.MultiHeadDotProductAttention, BLOCK_ALL[8:], "global", 4, True),  # only the projections
        (None, BLOCK_ALL, "per_tensor", 24, False),  # everything, layer norms included
    ],
)
def test_attention_block(targets, selected, kind, num_embeddings, causal, maybe_jit, shared):
    x = jax.random.normal(jax.random.key(0), (3, 5, 6))
    mask = nn.make_causal_mask(jnp.ones((3, 5))) if causal else None
    model_variables = model_variables_for(AttentionBlock(), x, seed=16)

    def make_hnet():
        return hypernetize(AttentionBlock(), embedding_dim=5, num_embeddings=num_embeddings, targets=targets,
                           layout=kind, example_inputs=(x,), variables=model_variables)  # fmt: skip

    compare(make_hnet, model_variables, hand_block, (x, mask), selected=selected, kind=kind,
            num_embeddings=num_embeddings, embedding_dim=5, maybe_jit=maybe_jit, shared=shared)  # fmt: skip


# ---------------------------------------------------------------- 4. recurrent models


class Recurrent(nn.Module):
    """An LSTM layer, then a GRU layer (both ``nn.RNN``), then a readout."""

    @nn.compact
    def __call__(self, x):
        h = nn.RNN(nn.LSTMCell(5))(x)
        h = nn.RNN(nn.GRUCell(4))(h)
        return nn.Dense(2)(h[:, -1])


def hand_lstm_step(p, prefix, carry, x):
    c, h = carry
    i = sigmoid(dense(p, prefix + "ii", x, bias=False) + dense(p, prefix + "hi", h))
    f = sigmoid(dense(p, prefix + "if", x, bias=False) + dense(p, prefix + "hf", h))
    g = jnp.tanh(dense(p, prefix + "ig", x, bias=False) + dense(p, prefix + "hg", h))
    o = sigmoid(dense(p, prefix + "io", x, bias=False) + dense(p, prefix + "ho", h))
    c = f * c + i * g
    return c, o * jnp.tanh(c)


def hand_gru_step(p, prefix, h, x):
    r = sigmoid(dense(p, prefix + "ir", x) + dense(p, prefix + "hr", h, bias=False))
    z = sigmoid(dense(p, prefix + "iz", x) + dense(p, prefix + "hz", h, bias=False))
    n = jnp.tanh(dense(p, prefix + "in", x) + r * dense(p, prefix + "hn", h))
    return (1 - z) * n + z * h


def hand_recurrent(p, x):
    batch, steps, _ = x.shape
    carry = (jnp.zeros((batch, 5)), jnp.zeros((batch, 5)))
    hs = []
    for t in range(steps):
        carry = hand_lstm_step(p, "LSTMCell_0.", carry, x[:, t])
        hs.append(carry[1])
    h = jnp.zeros((batch, 4))
    for t in range(steps):
        h = hand_gru_step(p, "GRUCell_0.", h, hs[t])
    return dense(p, "Dense_0", h)


LSTM_ALL = ["LSTMCell_0." + n for n in ("hf.bias", "hf.kernel", "hg.bias", "hg.kernel", "hi.bias", "hi.kernel", "ho.bias",
                                        "ho.kernel", "if.kernel", "ig.kernel", "ii.kernel", "io.kernel")]  # fmt: skip
GRU_ALL = ["GRUCell_0." + n for n in ("hn.bias", "hn.kernel", "hr.kernel", "hz.kernel", "in.bias", "in.kernel", "ir.bias",
                                      "ir.kernel", "iz.bias", "iz.kernel")]  # fmt: skip


@pytest.mark.parametrize(
    "targets, exclude, selected, kind, num_embeddings",
    [
        (nn.GRUCell, ["hn"], [n for n in GRU_ALL if ".hn." not in n], "global", 3),  # by cell class, minus one gate
    ],
)
def test_rnn_layers(targets, exclude, selected, kind, num_embeddings, maybe_jit, shared):
    x = jax.random.normal(jax.random.key(0), (2, 4, 3))
    model_variables = model_variables_for(Recurrent(), x, seed=17)

    def make_hnet():
        return hypernetize(Recurrent(), embedding_dim=3, num_embeddings=num_embeddings, targets=targets,
                           exclude=exclude, layout=kind, example_inputs=(x,), variables=model_variables)  # fmt: skip

    compare(make_hnet, model_variables, hand_recurrent, (x,), selected=selected, kind=kind,
            num_embeddings=num_embeddings, embedding_dim=3, maybe_jit=maybe_jit, shared=shared)  # fmt: skip


# ---------------------------------------------------------------- 5. emitting the original weights


ORIGINAL_CASES = {
    # name: (model, inputs, init kwargs, apply kwargs, mutable, targets)
    "mlp": (MLP(), lambda: (jax.random.normal(jax.random.key(5), (5, 4)),), {}, {}, False, None),
    "mlp-partial": (MLP(), lambda: (jax.random.normal(jax.random.key(5), (5, 4)),), {}, {}, False, ["Dense_1"]),
    "mlp-block-by-class": (MLP(), lambda: (jax.random.normal(jax.random.key(5), (5, 4)),), {}, {}, False, Block),
    "cnn-bn-eval": (CNN(), lambda: (cnn_input(),), {"train": False}, {"train": False}, False, None),
    "cnn-bn-train": (CNN(), lambda: (cnn_input(),), {"train": False}, {"train": True}, ["batch_stats"], None),
    "cross-attention": (nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8), cross_attention_inputs, {}, {},
                        False, None),  # fmt: skip
}

ORIGINAL_RUNS = [
    ("mlp", "compact"), ("mlp", "generator"), ("mlp-partial", "full-with-nan-padding"), ("mlp-block-by-class", "compact"),
    ("cnn-bn-train", "compact"), ("cnn-bn-train", "full-with-nan-padding"), ("cnn-bn-train", "generator"),
    ("cnn-bn-eval", "generator"), ("cross-attention", "full-with-nan-padding"),
]  # fmt: skip


def _padded_num_embeddings(sizes: Sequence[int]) -> int:
    """The smallest ``num_embeddings`` whose per_tensor layout has unused values."""
    for num_embeddings in range(len(sizes), 4 * sum(sizes)):
        _, chunk_dim, num_chunks = hand_layout(sizes, "per_tensor", num_embeddings)
        if num_chunks * chunk_dim > sum(sizes):
            return num_embeddings
    raise AssertionError("no padded per_tensor layout")


@pytest.mark.parametrize("case, mode", ORIGINAL_RUNS)
def test_generator_emitting_original_weights_reproduces_model(case, mode, maybe_jit, shared):
    """The model's own weights, fed as ``generated_params`` (compact, or full with NaN in
    the unused values) or emitted by a generator (E = 1, kernel 0, bias = the weights):
    the output and new batch statistics equal ``model.apply``'s (bit for bit when eager),
    and the gradient w.r.t. the vector is the model's gradients laid end to end."""
    model, make_inputs, init_kwargs, apply_kwargs, mutable, targets = ORIGINAL_CASES[case]
    inputs = make_inputs()
    model_variables = model_variables_for(model, *inputs, **init_kwargs, seed=19)
    model_params = dotted_leaves(model_variables["params"])
    names = hypernn.select(model, targets=targets, example_inputs=inputs, init_kwargs=init_kwargs).names
    assert names == tuple(n for n in model_params if n in names)  # model (jax's sorted) order
    values = [model_params[n] for n in names]
    sizes = [v.size for v in values]
    compact = jnp.concatenate([v.reshape(-1) for v in values])
    unselected = [n for n in model_params if n not in names]

    kind = "per_tensor" if mode == "full-with-nan-padding" else "global"
    num_embeddings = {"compact": 2 * len(values) + 1, "generator": 1}.get(mode) or _padded_num_embeddings(sizes)
    offsets, chunk_dim, num_chunks = hand_layout(sizes, kind, num_embeddings)
    hnet = hypernetize(model, embedding_dim=3, num_embeddings=num_embeddings, layout=kind, targets=targets,
                       example_inputs=inputs, init_kwargs=init_kwargs, variables=model_variables)  # fmt: skip
    variables = hnet_variables(hnet, model_variables, inputs, unselected=unselected, num_chunks=num_chunks,
                               chunk_dim=chunk_dim, embedding_dim=3, init_kwargs=init_kwargs)  # fmt: skip
    if mode == "compact":
        vector = compact
    elif mode == "full-with-nan-padding":  # unused values are NaN: reading any would show
        vector = np.full((num_chunks * chunk_dim,), np.nan, np.float32)
        for value, offset in zip(values, offsets):
            vector[offset : offset + value.size] = np.asarray(value).reshape(-1)
        assert np.isnan(vector).any()
        vector = jnp.asarray(vector)
    else:  # E = 1, global layout: the single chunk is the whole vector; kernel = 0, bias = it
        assert (num_chunks, chunk_dim) == (1, compact.size)
        vector = None
        generator = {"kernel": jnp.zeros((3, compact.size)), "bias": compact}
        variables = {**variables, "params": {**variables["params"], "weight_generator": generator}}

    def loss(run):
        def scalar(*args):
            result = run(*args)
            return weighted_sum(result[0] if mutable else result), result

        return scalar

    def run_hnet(params, vector, *inputs):
        kwargs = {} if vector is None else {"generated_params": vector}
        return hnet.apply({**variables, "params": params}, *inputs, mutable=mutable, **apply_kwargs, **kwargs)

    def run_model(params, *inputs):
        return model.apply({**model_variables, "params": params}, *inputs, mutable=mutable, **apply_kwargs)

    eager = maybe_jit(run_model) is run_model
    actual = maybe_jit(run_hnet)(variables["params"], vector, *inputs)
    expected = run_model(model_variables["params"], *inputs)
    if eager:
        assert_trees_equal(actual, expected)  # output and, in train mode, the new batch_stats
    else:  # XLA may fuse the model's arithmetic differently around computed weights
        assert_trees_close(actual, expected, rtol=1e-6, atol=1e-6)

    # Gradients: the vector gets the model's param gradients laid end to end (zero on the
    # padding); kept params get the model's own gradients.
    if "reference_grads" not in shared:
        shared["reference_grads"] = dotted_leaves(jax.grad(lambda *a: loss(run_model)(*a)[0])(model_variables["params"], *inputs))
    reference_grads = shared["reference_grads"]
    if vector is None:  # the generator's bias is the vector
        (_, result), grads = maybe_jit(jax.value_and_grad(loss(run_hnet), has_aux=True))(variables["params"], None, *inputs)
        vector_grad = grads["weight_generator"]["bias"]
    else:
        (_, result), (grads, vector_grad) = maybe_jit(jax.value_and_grad(loss(run_hnet), argnums=(0, 1), has_aux=True))(
            variables["params"], vector, *inputs)  # fmt: skip
    assert_trees_close(result, expected, rtol=1e-6, atol=1e-6)
    if mode == "full-with-nan-padding":
        expected_vector_grad = np.zeros(vector.shape, np.float32)
        for name, offset in zip(names, offsets):
            expected_vector_grad[offset : offset + reference_grads[name].size] = np.asarray(reference_grads[name]).reshape(-1)
    else:
        expected_vector_grad = jnp.concatenate([reference_grads[n].reshape(-1) for n in names])
    np.testing.assert_allclose(vector_grad, expected_vector_grad, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    kept_grads = dotted_leaves(grads.get("target_network", {}))
    assert set(kept_grads) == set(unselected)
    for name in unselected:
        np.testing.assert_allclose(kept_grads[name], reference_grads[name], rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=name)
