"""Shared helpers of the dynamic JAX hypernetwork tests (``test_linen_dynamic.py`` and
``test_nnx_dynamic.py``): the loop reference, hand-written generation and tolerances.

The reference for a batched call (condition of shape ``(B, C)``, one weight set per
sample) is a Python loop over samples through the *static* path of the same
hypernetwork: sample ``i`` runs with ``condition[i]`` (one weight set) on ``x[i:i+1]``,
and the outputs are concatenated. Both run in float32; tolerances scale with the
magnitude of the expected values.

    >>> split_flat(jnp.arange(7.0), {"b.w": (2, 2), "a.b": (3,)})["b.w"].tolist()
    [[3.0, 4.0], [5.0, 6.0]]
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

C = 3  #: condition width
B = 4  #: samples per batch
RTOL, ATOL = 2e-5, 2e-5

Apply = Callable[..., Any]  # apply(params, condition, *args) -> output pytree


def normal(seed: int, shape: Sequence[int], scale: float = 1.0) -> jax.Array:
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(tuple(shape)), jnp.float32)


def randomized(tree: Any, seed: int, scale: float) -> Any:
    """The same structure, every leaf replaced by fresh ``N(0, scale^2)`` values."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, [normal(seed + i, np.shape(a), scale) for i, a in enumerate(leaves)])


def random_value(path: str, shape: Sequence[int], dtype: Any, seed: int) -> jax.Array:
    """A fresh value for the variable at the dotted ``path``, without
    compiling anything: numpy draws, scaled so generated weights are of order one and the
    conditioning is far from FiLM's zero start; variances positive, integers zero."""
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(np.asarray([0, seed], np.uint32))
    if not jnp.issubdtype(dtype, jnp.floating):
        return jnp.zeros(shape, dtype)
    draw = np.random.default_rng(seed).standard_normal(tuple(shape))
    if path.split(".")[-1] == "var":
        return jnp.asarray(0.5 + np.abs(draw), dtype)
    if "weight_generator" in path:
        scale = 0.5 / math.sqrt(shape[0]) if "kernel" in path else 0.1
    elif "condition_module" in path:
        scale = 0.5
    elif "embedding" in path:
        scale = 1.0
    else:  # the model's own (kept) parameters and statistics
        scale = 0.3
    return jnp.asarray(scale * draw, dtype)


def random_variables(shapes: Any, seed: int = 1) -> Any:
    """Values for a tree of ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of an ``init``)."""
    leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
    values = [random_value(".".join(str(k.key) for k in p), s.shape, s.dtype, seed + i) for i, (p, s) in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), values)


def flat_items(tree: Any) -> Dict[str, np.ndarray]:
    """``{key path: array}`` of a pytree."""
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_close(actual: Any, expected: Any, what: str = "", rtol: float = RTOL, atol: float = ATOL) -> None:
    """``allclose`` with ``atol`` relative to the largest expected magnitude (float32)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)


def assert_trees_close(actual: Any, expected: Any, what: str = "", **tolerance: float) -> None:
    got, want = flat_items(actual), flat_items(expected)
    assert sorted(got) == sorted(want), f"{what}: {sorted(got)} != {sorted(want)}"
    for key, value in want.items():
        assert_close(got[key], value, f"{what}{key}", **tolerance)


# ---------------------------------------------------------------- the loop reference


def outputs_and_grads(apply: Apply, float_condition: bool) -> Callable:
    """``(params, condition, args, cotangent) -> (output, grads of params, grad of condition)``:
    the gradients of ``sum(output * cotangent)`` (``None`` for an integer condition)."""

    def loss(params: Any, condition: jax.Array, args: Sequence[Any], cotangent: Any) -> Tuple[jax.Array, Any]:
        out = apply(params, condition, *args)
        products = jax.tree_util.tree_map(lambda o, t: jnp.sum(o * t), out, cotangent)
        return sum(jax.tree_util.tree_leaves(products)), out

    def run(params: Any, condition: jax.Array, args: Sequence[Any], cotangent: Any) -> Tuple[Any, Any, Any]:
        if float_condition:
            (grad_params, grad_condition), out = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, condition, args,
                                                                                            cotangent)  # fmt: skip
            return out, grad_params, grad_condition
        grad_params, out = jax.grad(loss, has_aux=True)(params, condition, args, cotangent)
        return out, grad_params, None

    return run


def _sample(tree: Any, i: int) -> Any:
    return jax.tree_util.tree_map(lambda a: a[i : i + 1], tree)


def check_per_sample(
    apply: Apply,
    params: Any,
    condition: jax.Array,
    args: Sequence[jax.Array],
    *,
    modes: Sequence[str] = ("eager", "jit"),
    batched: Optional[Mapping[str, Callable]] = None,
    grads: bool = True,
    generated_paths: Sequence[str] = ("condition_module", "weight_generator"),
) -> Any:
    """Batched call == loop over samples, for outputs and the gradients of every
    hypernetwork parameter and of a float condition.

    ``apply(params, condition, *args)`` is the hypernetwork as a pure function. The
    reference is a Python loop over samples: sample ``i`` through the static path
    (``apply(params, condition[i], *[a[i:i+1]])``, jitted once), outputs concatenated and
    gradients summed. The batched call runs in each of ``modes``: ``"eager"`` (no jit) and
    ``"jit"`` (``jax.jit``); ``batched[mode](params, condition, args, cotangent) -> (output,
    grads, grad_condition)`` replaces the default (NNX: ``nnx.jit``). Every argument is
    per sample along axis 0. Returns the batched output of the last mode.
    """
    args = tuple(args)
    float_condition = bool(jnp.issubdtype(condition.dtype, jnp.floating))
    shapes, treedef = jax.tree_util.tree_flatten(jax.eval_shape(apply, params, condition, *args))
    cotangent = jax.tree_util.tree_unflatten(treedef, [normal(100 + j, s.shape) for j, s in enumerate(shapes)])
    run = outputs_and_grads(apply, float_condition)
    static = jax.jit(run)
    loop = [static(params, condition[i], _sample(args, i), _sample(cotangent, i)) for i in range(condition.shape[0])]
    want_out = jax.tree_util.tree_map(lambda *o: jnp.concatenate(o), *[out for out, _, _ in loop])
    want_params = jax.tree_util.tree_map(lambda *g: sum(g), *[g for _, g, _ in loop])
    want_condition = jnp.stack([g for _, _, g in loop]) if float_condition else None
    # sample 1 with sample 0's weights: what a per-sample bug that shares weights would give
    shared = static(params, condition[0], _sample(args, 1), _sample(cotangent, 1))[0]

    runs = {"eager": run, "jit": jax.jit(run), **(batched or {})}
    got_out = None
    for mode in modes:
        got_out, got_params, got_condition = runs[mode](params, condition, args, cotangent)
        assert_trees_close(got_out, want_out, f"{mode}: output")
        first, first_shared = jax.tree_util.tree_leaves(_sample(got_out, 1))[0], jax.tree_util.tree_leaves(shared)[0]
        assert not np.allclose(first, first_shared, rtol=1e-3, atol=1e-3), "degenerate: the samples got the same weights"
        if not grads:
            continue
        assert_trees_close(got_params, want_params, f"{mode}: gradient ")
        for path, grad in flat_items(got_params).items():
            if any(part in path for part in generated_paths) and "kernel" in path:
                assert np.abs(grad).sum() > 0, f"degenerate: zero gradient for {path}"
        if float_condition:
            assert_close(got_condition, want_condition, f"{mode}: gradient of the condition")
            assert np.all(np.abs(np.asarray(got_condition)).sum(-1) > 0), "a sample's condition got no gradient"
    return got_out


# ---------------------------------------------------------------- generation by hand


def hand_film_flat(embedding: Any, film_kernel: Any, film_bias: Any, generator_kernel: Any, generator_bias: Any,
                   condition: Any) -> jax.Array:  # fmt: skip
    """FiLM then the linear generator: ``(E * (1 + scale(c)) + shift(c)) @ K + b``, flattened
    per condition (``(..., N * chunk_dim)``)."""
    width = embedding.shape[-1]
    scale_shift = condition @ film_kernel + film_bias
    scale, shift = scale_shift[..., None, :width], scale_shift[..., None, width:]
    chunks = (embedding * (1 + scale) + shift) @ generator_kernel + generator_bias
    return chunks.reshape(*condition.shape[:-1], -1)


def split_flat(flat: jax.Array, shapes: Mapping[str, Sequence[int]]) -> Dict[str, jax.Array]:
    """Cut flat vectors ``(..., n)`` into the named tensors, end to end in sorted name order
    (the global layout), keeping the leading dimensions."""
    tensors, offset = {}, 0
    for name in sorted(shapes):
        size = math.prod(shapes[name])
        tensors[name] = flat[..., offset : offset + size].reshape(*flat.shape[:-1], *shapes[name])
        offset += size
    return tensors


#: the MLP of both test files: ``hidden`` (4 -> 5), tanh, ``out`` (5 -> 3)
MLP_SHAPES = {"hidden.kernel": (4, 5), "hidden.bias": (5,), "out.kernel": (5, 3), "out.bias": (3,)}


def hand_mlp(tensors: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    """The MLP with per-sample weights ``(B, ...)``: batched matmuls written with einsum."""
    hidden = jnp.tanh(jnp.einsum("bi,bio->bo", x, tensors["hidden.kernel"]) + tensors["hidden.bias"])
    return jnp.einsum("bi,bio->bo", hidden, tensors["out.kernel"]) + tensors["out.bias"]


def hand_batch_norm(h: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Batch norm of ``(B, F)`` over the whole batch; ``scale``/``bias`` per sample
    (``(B, F)``) or shared (``(F,)``). Returns ``(output, mean, biased variance)``."""
    mean, var = h.mean(0), h.var(0)
    return (h - mean) / jnp.sqrt(var + eps) * scale + bias, mean, var
