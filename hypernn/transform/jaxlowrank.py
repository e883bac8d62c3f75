"""Low-rank dense layers in JAX without the full matrix: ``x @ W0 + scale * (x @ B.T) @ A.T``.

With ``low_rank=r`` a flax linen ``nn.Dense`` or NNX ``nnx.Linear`` whose kernel is adapted
runs its own call with its frozen kernel ``W0`` (so its bias, dtype promotion and precision
stay its own), through a ``dot_general`` that adds the factored delta: two thin matmuls
instead of building ``W0 + scale * (A @ B).T``. It matters most for dynamic (per-sample)
hypernetworks, where ``jax.vmap`` of a merged kernel builds a ``(B, in, out)`` stack.
Convolutions, tied kernels, lifted (stacked) kernels and subclasses with their own
``__call__`` keep the merged kernel (:func:`~hypernn.transform.jaxstart.merge_low_rank`),
and so does export (``hypernn.materialize``), where merging is right.

    >>> import jax, jax.numpy as jnp
    >>> w0, a, b, x = jnp.ones((6, 4)), jnp.ones((4, 2)), jnp.ones((2, 6)), jnp.ones((3, 6))
    >>> dot = FactoredDot(jax.lax.dot_general, 0.5 * a, b)
    >>> bool(jnp.allclose(dot(x, w0, (((1,), (0,)), ((), ()))), x @ (w0 + 0.5 * (a @ b).T)))
    True
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp

from ..lowrank import LowRankWeight
from .jaxstart import merged_kernel

__all__ = ["FactoredDot", "Factors", "runs_factored", "split_low_rank"]

#: ``(scale * A, B)`` of one adapted kernel
Factors = Tuple[jax.Array, jax.Array]


class FactoredDot:
    """A layer's ``dot_general`` for a kernel ``W0`` plus ``(A @ B).T`` (``A`` already scaled).

    The standard contraction of a dense layer (last axis of ``x`` with the kernel's first)
    gets the factored delta added; any other call, or one that asks for an output
    sharding, gets the merged kernel instead (same result, full matrix).
    """

    def __init__(self, dot_general: Callable[..., Any], a: jax.Array, b: jax.Array):
        self.dot_general, self.a, self.b = dot_general, a, b

    def _factored(self, lhs: Any, rhs: Any, dimension_numbers: Any, kwargs: Mapping[str, Any]) -> bool:
        standard = (((lhs.ndim - 1,), (0,)), ((), ()))
        dims = tuple(tuple(tuple(int(axis) for axis in side) for side in pair) for pair in dimension_numbers)
        shape = (self.b.shape[-1], self.a.shape[-2])
        return dims == standard and tuple(rhs.shape) == shape and kwargs.get("out_sharding") is None

    def __call__(self, lhs: Any, rhs: Any, dimension_numbers: Any, precision: Any = None, **kwargs: Any) -> Any:
        if not self._factored(lhs, rhs, dimension_numbers, kwargs):
            merged = merged_kernel(rhs, self.a, self.b, 1.0).astype(rhs.dtype)
            return self.dot_general(lhs, merged, dimension_numbers, precision=precision, **kwargs)
        out = self.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kwargs)
        a, b = self.a.astype(rhs.dtype), self.b.astype(rhs.dtype)
        delta = jnp.matmul(jnp.matmul(lhs, b.T, precision=precision), a.T, precision=precision)
        return out + delta.astype(out.dtype)


def runs_factored(weight: LowRankWeight, spec: Any, layer: type) -> bool:
    """Whether ``weight`` (of parameter ``spec``) runs factored: the 2-D kernel, used once, of
    a ``layer`` (``nn.Dense`` or ``nnx.Linear``) or a subclass that keeps its call."""
    chain = spec.module_chains[0] if spec.module_chains else ()
    owner = chain[-1][1] if chain else object
    own_call = isinstance(owner, type) and issubclass(owner, layer) and owner.__call__ is layer.__call__
    return own_call and not weight.aliases and len(weight.shape) == 2


def split_low_rank(tensors: Mapping[str, jax.Array], weights: Sequence[LowRankWeight], bases: Mapping[str, jax.Array],
                   scale: float, factored: Sequence[str]) -> Tuple[Dict[str, Any], Dict[str, Factors]]:  # fmt: skip
    """The generated tensors for a call: the kernels in ``factored`` leave the tensors and
    become ``{name: (scale * A, B)}`` (their layers run ``W0`` with :class:`FactoredDot`);
    every other adapted kernel is merged (under all its names). Leading (per-sample) dims kept."""
    out, factors = dict(tensors), {}
    for weight in weights:
        a, b = (out.pop(name) for name in weight.factor_names)
        if weight.name in factored:
            factors[weight.name] = (scale * a, b)
            continue
        merged = merged_kernel(bases[weight.name], a, b, scale)
        out.update({name: merged for name in (weight.name,) + weight.aliases})
    return out, factors
