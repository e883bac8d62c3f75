"""Where generated NNX weights start: the :mod:`hypernn.init` map as an NNX module.

    >>> import jax.numpy as jnp
    >>> from hypernn.layout import plan_layout
    >>> from hypernn.default_inits import TargetInit
    >>> layout = plan_layout([("w", (4, 25)), ("b", (4,))], kind="global", num_embeddings=4)
    >>> raw = jnp.linspace(-3.0, 5.0, layout.generated_size)
    >>> affine = build_output_affine(layout, raw, [TargetInit(0.2), TargetInit(0.0)], init="hyperfan")
    >>> round(float(affine(raw)[:100].std()), 4)
    0.2
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ...default_inits import TargetInit
from ...init import plan_output_affine
from ...layout import Layout
from ..jaxstart import start_map

__all__ = ["OutputAffine", "StartMap", "build_output_affine", "fold_common_scale", "measure"]


class StartMap(nnx.Variable):
    """The fixed per-tensor ``scale``/``shift`` (and warm-start ``base``) of the start map.
    Not an ``nnx.Param``: optimizers leave it alone; ``nnx.state(hnet)`` saves it."""


def measure(value: Any) -> tuple:
    """``(mean, std)`` of an array's values, for layers without an init rule."""
    values = np.asarray(value, dtype=np.float64)
    return float(values.mean()), float(values.std())


class OutputAffine(nnx.Module):
    """``flat = (base if warm start else shift) + scale * raw`` over the generator's output."""

    def __init__(self, layout: Layout, scales: Sequence[float], shifts: Sequence[float], base: Optional[np.ndarray],
                 dtype: Any):  # fmt: skip
        self.layout = layout
        self.scale = StartMap(jnp.asarray(scales, dtype))
        self.shift = StartMap(jnp.asarray(shifts, dtype))
        self.base = None if base is None else StartMap(jnp.asarray(base, dtype))

    def __call__(self, raw: jax.Array) -> jax.Array:
        base = None if self.base is None else self.base[...]
        return start_map(raw, self.layout, self.scale[...], self.shift[...], base)


def build_output_affine(layout: Layout, raw: jax.Array, targets: Sequence[TargetInit], *, init: str,
                        start: Optional[Mapping[str, Any]] = None) -> Optional[OutputAffine]:  # fmt: skip
    """The map for a generator whose raw flat output at construction is ``raw``;
    ``None`` when nothing changes (``init="default"`` without warm start)."""
    values = None if start is None else {name: np.asarray(v, dtype=np.float64) for name, v in start.items()}
    plan = plan_output_affine(layout, np.asarray(raw, dtype=np.float64), targets, init=init, start=values)
    if plan is None:
        return None
    return OutputAffine(layout, plan.scales, plan.shifts, plan.base, raw.dtype)


def _last_linear(generator: nnx.Module, chunk_dim: int) -> Optional[nnx.Linear]:
    layers = [node for _, node in nnx.graph.iter_graph(generator)
              if isinstance(node, nnx.Linear) and node.out_features == chunk_dim]  # fmt: skip
    return layers[-1] if layers else None


def fold_common_scale(generator: nnx.Module, chunk_dim: int, factor: float, raw: jax.Array,
                      probe: Callable[[], jax.Array]) -> jax.Array:  # fmt: skip
    """Multiply the kernel and bias of the generator's last ``nnx.Linear`` by ``factor`` when
    that scales its output by ``factor`` (checked with ``probe``; otherwise restored);
    returns the raw output the generator now gives."""
    layer = _last_linear(generator, chunk_dim)
    if layer is None or factor == 1.0:
        return raw
    params = [p for p in (layer.kernel, layer.bias) if p is not None]
    saved = [p[...] for p in params]
    for p, value in zip(params, saved):
        p[...] = value * factor
    scaled = probe()
    tolerance = 100 * float(jnp.finfo(raw.dtype).eps)
    if np.allclose(scaled, factor * raw, rtol=tolerance, atol=tolerance * factor * float(jnp.abs(raw).max())):
        return scaled
    for p, value in zip(params, saved):  # the output is not linear in that layer: keep the map only
        p[...] = value
    return raw
