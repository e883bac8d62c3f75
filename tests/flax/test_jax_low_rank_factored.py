"""Low-rank ``nn.Dense`` / ``nnx.Linear`` kernels run factored: ``x @ W0 + s (x @ B.T) @ A.T``.

Outputs and gradients (of every hypernetwork parameter) are compared with the merged
computation written by hand in jnp (``W0 + s * (A @ B).T``, one kernel per sample), for
linen and NNX, static and dynamic (per sample and one weight set for the batch), with and
without ``jit``. The jaxpr of a training step must hold no kernel-shaped result: no
``A @ B``, no merged kernel, no ``(B, in, out)`` stack per sample (the hand-written merge,
checked alike, does). Layers that cannot run
factored (a subclass with its own ``__call__``, a tied kernel) keep the merge.
"""

from __future__ import annotations

from typing import Any, Dict, Set

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import hypernn
from hypernn import hypernetize
from hypernn.transform.jaxlowrank import FactoredDot
from hypernn.transform.linen.lowrank import factored_kernels

TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)  # a sum over the batch of products: float32 reordering
B, IN, HIDDEN, OUT, C, RANK, SCALE = 5, 4, 7, 6, 3, 2, 0.5
#: (name in the layout, (in, out)) of the MLP's kernels, in layout order
KERNELS = (("Dense_0.kernel", (IN, HIDDEN)), ("Dense_1.kernel", (HIDDEN, OUT)))
NNX_KERNELS = (("fc1.kernel", (IN, HIDDEN)), ("fc2.kernel", (HIDDEN, OUT)))
X = jax.random.normal(jax.random.key(1), (B, IN))
COND = jax.random.normal(jax.random.key(2), (B, C))
#: the condition of each case: none (static), one per sample, one weight set for the batch
CONDITIONS = {None: None, "per_sample": COND, "one_set": COND[1]}
CONDITION = pytest.mark.parametrize("condition", list(CONDITIONS))
JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


def maybe_jit(fun: Any, jit: bool) -> Any:
    return jax.jit(fun) if jit else fun


# ---------------------------------------------------------------- the merge by hand


def hand_kernels(flat: jax.Array, bases: Dict[str, jax.Array], kernels=KERNELS) -> Dict[str, jax.Array]:
    """Cut ``A`` (out, r) and ``B`` (r, in) per kernel from ``flat`` (``(G,)`` or ``(B, G)``)
    in layout order and merge ``W0 + s * (A @ B).T``; per-sample kernels keep the batch dim."""
    lead, offset, merged = flat.shape[:-1], 0, {}
    for name, (fan_in, fan_out) in kernels:
        a = flat[..., offset : offset + fan_out * RANK].reshape(*lead, fan_out, RANK)
        offset += fan_out * RANK
        b = flat[..., offset : offset + RANK * fan_in].reshape(*lead, RANK, fan_in)
        offset += RANK * fan_in
        merged[name] = bases[name] + SCALE * jnp.einsum("...or,...ri->...io", a, b)
    return merged


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    product = jnp.einsum("bi,bio->bo", x, kernel) if kernel.ndim == 3 else x @ kernel
    return product + bias


def hand_mlp(x: jax.Array, kernels: Dict[str, jax.Array], biases: Dict[str, jax.Array], names=KERNELS) -> jax.Array:
    (first, _), (second, _) = names
    return dense(jax.nn.relu(dense(x, kernels[first], biases[first])), kernels[second], biases[second])


def shapes_in(jaxpr: Any) -> Set[tuple]:
    """The shapes of every intermediate of ``jaxpr`` and the jaxprs inside it (jit, custom rules)."""
    found: Set[tuple] = set()
    for eqn in jaxpr.eqns:
        found.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    found |= shapes_in(inner)
    return found


#: a merged kernel or delta, one or one per sample, in either orientation (all sizes differ)
KERNEL_SHAPES = {lead + shape for i, o in ((IN, HIDDEN), (HIDDEN, OUT)) for shape in ((i, o), (o, i)) for lead in ((), (B,))}


def assert_factored(fun: Any, *args: Any) -> None:
    """No kernel-shaped result (``A @ B``, a merged kernel, a ``(B, in, out)`` stack) anywhere
    in ``fun``'s jaxpr: ``W0`` is only read."""
    shapes = shapes_in(jax.make_jaxpr(fun)(*args).jaxpr)
    assert not KERNEL_SHAPES & shapes, sorted(KERNEL_SHAPES & shapes)


def randomized(tree: Any, key: int, std: float = 0.5) -> Any:
    """Random values (FiLM starts at zero, where all samples would get the same weights)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.key(key), len(leaves))
    return treedef.unflatten([std * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)])


# ---------------------------------------------------------------- linen


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(HIDDEN)(x)  # Dense_0 (compact names follow construction)
        return nn.Dense(OUT)(nn.relu(h))


def linen_setup(**dynamic: Any):
    hnet = hypernetize(MLP(), embedding_dim=4, num_embeddings=6, low_rank=RANK, low_rank_scale=SCALE,
                       warm_start=False, example_inputs=(X,), **dynamic)  # fmt: skip
    assert [s.name for s in hnet.layout.slots] == [f"{n}.{f}" for n, _ in KERNELS for f in "AB"]
    assert factored_kernels(hnet.plan) == {"Dense_0.kernel": ("Dense_0",), "Dense_1.kernel": ("Dense_1",)}
    call = {"condition": COND} if dynamic else {}
    variables = hnet.init(jax.random.key(0), X, **call)
    if dynamic:
        film = variables["params"]["condition_module"]
        variables["params"]["condition_module"] = randomized(film, 7)
    return hnet, variables


def linen_losses(hnet: Any, variables: Any, condition: Any):
    """``(loss of the hypernetwork, loss of the hand-written merge)``, functions of params."""
    call = {} if condition is None else {"condition": condition}
    frozen = {k: v for k, v in variables.items() if k != "params"}
    bases = variables["hypernn"]["low_rank_bases"]

    def loss(params):
        return jnp.sum(hnet.apply({**frozen, "params": params}, X, **call) ** 2)

    def hand_loss(params):
        flat, _ = hnet.apply({**frozen, "params": params}, method="generate_params", **call)
        biases = {n: params["target_network"][n.split(".")[0]]["bias"] for n, _ in KERNELS}
        return jnp.sum(hand_mlp(X, hand_kernels(flat, bases), biases) ** 2)

    return loss, hand_loss


@JIT
@CONDITION
def test_linen_outputs_and_gradients_equal_the_hand_written_merge(condition, jit):
    hnet, variables = linen_setup() if condition is None else linen_setup(condition_dim=C)
    given = CONDITIONS[condition]
    loss, hand_loss = linen_losses(hnet, variables, given)
    params = variables["params"]
    np.testing.assert_allclose(maybe_jit(loss, jit)(params), maybe_jit(hand_loss, jit)(params), rtol=1e-5)
    got, want = maybe_jit(jax.grad(loss), jit)(params), maybe_jit(jax.grad(hand_loss), jit)(params)
    jax.tree_util.tree_map_with_path(
        lambda path, g, w: np.testing.assert_allclose(g, w, err_msg=jax.tree_util.keystr(path), **GRAD_TOL), got, want)
    assert float(jnp.abs(got["weight_generator"]["kernel"]).sum()) > 0
    if condition == "per_sample":
        out = hnet.apply(variables, X, condition=COND)
        assert not np.allclose(out, hnet.apply(variables, X, condition=COND[0]))


@CONDITION
def test_linen_step_builds_no_kernel(condition):
    hnet, variables = linen_setup() if condition is None else linen_setup(condition_dim=C)
    loss, hand_loss = linen_losses(hnet, variables, CONDITIONS[condition])
    assert_factored(jax.value_and_grad(loss), variables["params"])
    with pytest.raises(AssertionError):  # the check sees what the merge builds
        assert_factored(jax.value_and_grad(hand_loss), variables["params"])


def test_linen_materialize_bakes_the_merged_kernels():
    hnet, variables = linen_setup(condition_dim=C)
    plain = hypernn.materialize(hnet, variables, condition=COND[2])
    flat, _ = hnet.apply(variables, method="generate_params", condition=COND[2])
    merged = hand_kernels(flat, variables["hypernn"]["low_rank_bases"])
    for name, _ in KERNELS:
        np.testing.assert_allclose(plain["params"][name.split(".")[0]]["kernel"], merged[name], **TOL)
    out = hnet.apply(variables, X, condition=COND)
    np.testing.assert_allclose(MLP().apply(plain, X[2:3]), out[2:3], **TOL)


class Dot:
    """A ``dot_general_cls``: builds the layer's dot_general (here lax's, counting calls)."""

    calls = 0

    def __call__(self, lhs, rhs, dimension_numbers, precision=None):
        Dot.calls += 1
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision)


class OwnCall(nn.Dense):
    """A subclass with its own ``__call__`` (it might use the kernel otherwise): merged."""

    @nn.compact
    def __call__(self, x):
        return super().__call__(x)


class Mixed(nn.Module):
    @nn.compact
    def __call__(self, x):
        shared = nn.Dense(IN, dot_general_cls=Dot, name="shared")  # called twice
        h = shared(nn.relu(shared(x)))
        h = OwnCall(HIDDEN, name="own")(h)
        return nn.Dense(OUT, dot_general=lambda *a, **k: lax.dot_general(*a, **k), name="custom")(nn.relu(h))


@JIT
def test_linen_custom_dot_generals_shared_layers_and_subclasses(jit):
    hnet = hypernetize(Mixed(), embedding_dim=4, num_embeddings=6, low_rank=RANK, low_rank_scale=SCALE,
                       warm_start=False, example_inputs=(X,))  # fmt: skip
    assert sorted(factored_kernels(hnet.plan)) == ["custom.kernel", "shared.kernel"]
    variables = hnet.init(jax.random.key(0), X)
    Dot.calls = 0
    out, flat, _ = maybe_jit(lambda v: hnet.apply(v, X, has_aux=True), jit)(variables)
    assert Dot.calls == 2  # the layer's own dot_general ran, wrapped
    kernels = (("custom.kernel", (HIDDEN, OUT)), ("own.kernel", (IN, HIDDEN)), ("shared.kernel", (IN, IN)))
    assert [s.name for s in hnet.layout.slots] == [f"{n}.{f}" for n, _ in kernels for f in "AB"]
    merged = hand_kernels(flat, variables["hypernn"]["low_rank_bases"], kernels)
    bias = {n: variables["params"]["target_network"][n]["bias"] for n in ("shared", "own", "custom")}
    h = dense(jax.nn.relu(dense(X, merged["shared.kernel"], bias["shared"])), merged["shared.kernel"], bias["shared"])
    h = dense(h, merged["own.kernel"], bias["own"])
    np.testing.assert_allclose(out, dense(jax.nn.relu(h), merged["custom.kernel"], bias["custom"]), **TOL)


# ---------------------------------------------------------------- NNX


class NNXMLP(nnx.Module):
    def __init__(self, *, rngs):
        self.fc1 = nnx.Linear(IN, HIDDEN, rngs=rngs)
        self.fc2 = nnx.Linear(HIDDEN, OUT, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


def nnx_setup(**dynamic: Any):
    model = NNXMLP(rngs=nnx.Rngs(0))
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=6, low_rank=RANK, low_rank_scale=SCALE,
                       warm_start=False, rngs=nnx.Rngs(1), **dynamic)  # fmt: skip
    assert [s.name for s in hnet.layout.slots] == [f"{n}.{f}" for n, _ in NNX_KERNELS for f in "AB"]
    assert hnet.factored_kernels == ("fc1.kernel", "fc2.kernel")
    if dynamic:
        film = nnx.state(hnet.condition_module, nnx.Param)
        nnx.update(hnet.condition_module, randomized(film, 7))
    return model, hnet


def nnx_losses(model: Any, hnet: Any, condition: Any):
    """``(loss, hand-written loss)`` as functions of the hypernetwork's ``nnx.Param`` state."""
    call = {} if condition is None else {"condition": condition}
    graphdef, params, rest = nnx.split(hnet, nnx.Param, ...)
    bases = {n: getattr(model, n.split(".")[0]).kernel[...] for n, _ in NNX_KERNELS}

    def loss(params):
        return jnp.sum(nnx.merge(graphdef, params, rest)(X, **call) ** 2)

    def hand_loss(params):
        h = nnx.merge(graphdef, params, rest)
        flat, _ = h.generate_params(**call)
        biases = {n: getattr(h.target_network, n.split(".")[0]).bias[...] for n, _ in NNX_KERNELS}
        return jnp.sum(hand_mlp(X, hand_kernels(flat, bases, NNX_KERNELS), biases, NNX_KERNELS) ** 2)

    return loss, hand_loss, params


@JIT
@CONDITION
def test_nnx_outputs_and_gradients_equal_the_hand_written_merge(condition, jit):
    model, hnet = nnx_setup() if condition is None else nnx_setup(condition_dim=C)
    paths = sorted(p for p, _ in nnx.to_flat_state(nnx.state(hnet)))
    given = CONDITIONS[condition]
    loss, hand_loss, params = nnx_losses(model, hnet, given)
    np.testing.assert_allclose(maybe_jit(loss, jit)(params), maybe_jit(hand_loss, jit)(params), rtol=1e-5)
    got, want = maybe_jit(jax.grad(loss), jit)(params), maybe_jit(jax.grad(hand_loss), jit)(params)
    for (path, g), (_, w) in zip(nnx.to_flat_state(got), nnx.to_flat_state(want)):
        np.testing.assert_allclose(g[...], w[...], err_msg=str(path), **GRAD_TOL)
    assert float(jnp.abs(got["weight_generator"]["kernel"][...]).sum()) > 0
    out = hnet(X) if condition is None else hnet(X, condition=given)  # eager, through the hypernetwork itself
    np.testing.assert_allclose(jnp.sum(out**2), loss(params), rtol=1e-5)
    # the per-call copy was changed, never the model nor the target network
    assert hnet.target_network.fc1.dot_general is lax.dot_general and model.fc1.dot_general is lax.dot_general
    assert sorted(p for p, _ in nnx.to_flat_state(nnx.state(hnet))) == paths


@CONDITION
def test_nnx_step_builds_no_kernel(condition):
    model, hnet = nnx_setup() if condition is None else nnx_setup(condition_dim=C)
    loss, hand_loss, params = nnx_losses(model, hnet, CONDITIONS[condition])
    assert_factored(jax.value_and_grad(loss), params)
    with pytest.raises(AssertionError):
        assert_factored(jax.value_and_grad(hand_loss), params)


def test_nnx_materialize_bakes_the_merged_kernels():
    model, hnet = nnx_setup(condition_dim=C)
    plain = hypernn.materialize(hnet, condition=COND[2])
    assert type(plain) is NNXMLP and plain.fc1.dot_general is lax.dot_general
    flat, _ = hnet.generate_params(condition=COND[2])
    merged = hand_kernels(flat, {n: getattr(model, n.split(".")[0]).kernel[...] for n, _ in NNX_KERNELS}, NNX_KERNELS)
    np.testing.assert_allclose(plain.fc1.kernel[...], merged["fc1.kernel"], **TOL)
    np.testing.assert_allclose(plain(X[2:3]), hnet(X, condition=COND)[2:3], **TOL)


class OwnLinear(nnx.Linear):
    def __call__(self, x):
        return super().__call__(x)


class NNXMixed(nnx.Module):
    def __init__(self, *, rngs):
        self.fc1 = nnx.Linear(IN, HIDDEN, dot_general=lambda *a, **k: lax.dot_general(*a, **k), rngs=rngs)
        self.own = OwnLinear(HIDDEN, HIDDEN, rngs=rngs)
        self.fc2 = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
        self.again = self.fc2  # one layer under two names, called twice: factored
        self.out = nnx.Linear(HIDDEN, OUT, rngs=rngs)
        self.tied = nnx.Linear(HIDDEN, OUT, use_bias=False, rngs=rngs)
        self.tied.kernel = self.out.kernel  # one kernel in two layers: merged

    def __call__(self, x):
        h = jax.nn.relu(self.own(jax.nn.relu(self.fc1(x))))
        h = jax.nn.relu(self.again(jax.nn.relu(self.fc2(h))))
        return self.out(h) + self.tied(h)


def test_nnx_custom_dot_general_shared_and_tied_layers_and_subclasses():
    model = NNXMixed(rngs=nnx.Rngs(0))
    hnet = hypernetize(model, embedding_dim=4, num_embeddings=6, low_rank=RANK, low_rank_scale=SCALE,
                       warm_start=False, rngs=nnx.Rngs(1))  # fmt: skip
    assert hnet.factored_kernels == ("again.kernel", "fc1.kernel")  # NNX names a shared layer by its first path
    kernels = (("again.kernel", (HIDDEN, HIDDEN)), ("fc1.kernel", (IN, HIDDEN)), ("out.kernel", (HIDDEN, OUT)),
               ("own.kernel", (HIDDEN, HIDDEN)))  # fmt: skip
    assert [s.name for s in hnet.layout.slots] == [f"{n}.{f}" for n, _ in kernels for f in "AB"]
    out, flat, _ = hnet(X, has_aux=True)
    merged = hand_kernels(flat, {n: getattr(model, n.split(".")[0]).kernel[...] for n, _ in kernels}, kernels)
    h = jax.nn.relu(dense(X, merged["fc1.kernel"], model.fc1.bias[...]))
    h = jax.nn.relu(dense(h, merged["own.kernel"], model.own.bias[...]))
    for _ in range(2):
        h = jax.nn.relu(dense(h, merged["again.kernel"], model.fc2.bias[...]))
    want = dense(h, merged["out.kernel"], model.out.bias[...]) + h @ merged["out.kernel"]
    np.testing.assert_allclose(out, want, **TOL)


# ---------------------------------------------------------------- FactoredDot


def test_factored_dot_merges_for_other_contractions_and_output_shardings():
    w0, a, b = jnp.ones((6, 4)), jax.random.normal(jax.random.key(0), (4, 2)), jax.random.normal(jax.random.key(1), (2, 6))
    merged = w0 + (a @ b).T
    calls = []

    def recording(lhs, rhs, dims, precision=None, **kwargs):
        calls.append((rhs.shape, kwargs))
        return lax.dot_general(lhs, rhs, dims, precision=precision)

    dot = FactoredDot(recording, a, b)
    x = jax.random.normal(jax.random.key(2), (2, 3, 6))
    np.testing.assert_allclose(dot(x, w0, (((2,), (0,)), ((), ()))), x @ merged, **TOL)
    xt = jnp.swapaxes(x[0], 0, 1)  # (6, 3): contracted over its first axis
    np.testing.assert_allclose(dot(xt, w0, (((0,), (0,)), ((), ()))), xt.T @ merged, **TOL)
    np.testing.assert_allclose(dot(x[0], w0, (((1,), (0,)), ((), ())), out_sharding="s"), x[0] @ merged, **TOL)
    assert [kwargs for _, kwargs in calls] == [{}, {}, {"out_sharding": "s"}]
