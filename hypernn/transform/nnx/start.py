"""Where generated NNX weights start: the :mod:`hypernn.init` map as an NNX module.

Everything here is ``jax.numpy``, so a hypernetwork can also be built abstractly
(``nnx.eval_shape(lambda: hypernetize(...))``, e.g. to restore a checkpoint into it).

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
from ...init import calibrate
from ...layout import Layout
from ..jaxstart import start_map, warm_base

__all__ = ["OutputAffine", "StartMap", "build_output_affine", "fold_common_scale", "is_traced", "measure"]


class StartMap(nnx.Variable):
    """The fixed per-tensor ``scale``/``shift`` (and warm-start ``base``) of the start map.
    Not an ``nnx.Param``: optimizers leave it alone; ``nnx.state(hnet)`` saves it."""


def is_traced(value: Any) -> bool:
    """Whether ``value`` has no concrete data (built under ``nnx.eval_shape``/``jit``)."""
    return isinstance(value, (jax.core.Tracer, jax.ShapeDtypeStruct))


def measure(value: Any) -> Optional[tuple]:
    """``(mean, std)`` of concrete values (``None`` when traced), for layers without an init rule."""
    if is_traced(value):
        return None
    values = np.asarray(value, dtype=np.float64)
    return float(values.mean()), float(values.std())


class OutputAffine(nnx.Module):
    """``flat = (base if warm start else shift) + scale * raw`` over the generator's output."""

    def __init__(self, layout: Layout, scales: jax.Array, shifts: jax.Array, base: Optional[jax.Array]):
        self.layout = layout
        self.scale = StartMap(scales)
        self.shift = StartMap(shifts)
        self.base = None if base is None else StartMap(base)

    def __call__(self, raw: jax.Array) -> jax.Array:
        base = None if self.base is None else self.base[...]
        return start_map(raw, self.layout, self.scale[...], self.shift[...], base)


def build_output_affine(layout: Layout, raw: jax.Array, targets: Sequence[TargetInit], *, init: str,
                        start: Optional[Mapping[str, Any]] = None) -> Optional[OutputAffine]:  # fmt: skip
    """The map for a generator whose raw flat output at construction is ``raw``;
    ``None`` when nothing changes (``init="default"`` without warm start)."""
    if init == "default" and not start:
        return None
    count = len(layout.slots)
    if init == "hyperfan":
        scales, shifts = calibrate(layout, raw, targets, xp=jnp)
    else:
        scales, shifts = jnp.ones(count, raw.dtype), jnp.zeros(count, raw.dtype)
    scales, shifts = scales.astype(raw.dtype), shifts.astype(raw.dtype)
    base = warm_base(layout, raw, scales, shifts, start) if start else None
    return OutputAffine(layout, scales, shifts, base)


def _last_linear(generator: nnx.Module, chunk_dim: int) -> Optional[nnx.Linear]:
    layers = [node for _, node in nnx.graph.iter_graph(generator)
              if isinstance(node, nnx.Linear) and node.out_features == chunk_dim]  # fmt: skip
    return layers[-1] if layers else None


def fold_common_scale(generator: nnx.Module, chunk_dim: int, factor: jax.Array, raw: jax.Array,
                      probe: Callable[[], jax.Array], *, linear: bool) -> jax.Array:  # fmt: skip
    """Multiply the kernel and bias of the generator's last ``nnx.Linear`` by ``factor``;
    returns the raw output the generator now gives. ``linear``: the output is known to be
    linear in that layer (the library's generators); otherwise that is checked on concrete
    values (and the layer restored if not), and nothing is folded while tracing."""
    layer = _last_linear(generator, chunk_dim)
    if layer is None or (not linear and is_traced(raw)):
        return raw
    params = [p for p in (layer.kernel, layer.bias) if p is not None]
    saved = [p[...] for p in params]
    for p, value in zip(params, saved):
        p[...] = value * factor.astype(value.dtype)
    scaled = probe()
    if linear:
        return scaled
    tolerance = 100 * float(jnp.finfo(raw.dtype).eps)
    if np.allclose(scaled, factor * raw, rtol=tolerance, atol=tolerance * float(factor) * float(jnp.abs(raw).max())):
        return scaled
    for p, value in zip(params, saved):  # the output is not linear in that layer: keep the map only
        p[...] = value
    return raw
