"""The start map (:mod:`hypernn.init`) and low-rank merging in JAX, for linen and NNX.

    >>> import jax.numpy as jnp
    >>> from hypernn.layout import plan_layout
    >>> layout = plan_layout([("w", (2, 2)), ("b", (2,))], kind="per_tensor", chunk_dim=3)
    >>> raw = jnp.arange(layout.generated_size, dtype=jnp.float32)
    >>> start_map(raw, layout, jnp.array([2.0, 10.0]), jnp.array([0.0, 1.0]))
    Array([ 0.,  2.,  4.,  6.,  4.,  5., 61., 71.,  8.], dtype=float32)
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..init import piece_slots
from ..layout import Layout
from ..lowrank import LowRankWeight

__all__ = ["merged_kernel", "merge_low_rank", "per_element", "start_map", "warm_base"]


def per_element(values: jax.Array, layout: Layout, gap: float) -> jax.Array:
    """Per-slot ``values`` spread over the flat generated vector (``gap`` where unused): one
    broadcast per piece of the layout, which XLA fuses into the map (a ``jnp.repeat`` costs
    seconds of constant folding at compile time on large layouts)."""
    sizes, slots = piece_slots(layout)
    extended = jnp.concatenate([values, jnp.full((1,), gap, values.dtype)])
    return jnp.concatenate([jnp.broadcast_to(extended[slot], (size,)) for size, slot in zip(sizes, slots)])


@functools.lru_cache(maxsize=64)
def _piece_index(layout: Layout) -> np.ndarray:
    """For every value of the flat vector, the index of its slot (``len(slots)`` where unused)."""
    sizes, slots = piece_slots(layout)
    return np.repeat(np.asarray(slots, dtype=np.int32), sizes)


def start_map(raw: jax.Array, layout: Layout, scale: jax.Array, shift: jax.Array, base: Optional[jax.Array] = None) -> jax.Array:
    """``(base if given else shift) + scale * raw`` per slot (unused places: ``raw``, plus
    ``base`` if given); leading (per-sample) dims kept.

    Under a trace (``jax.jit``, ``grad``, ``vmap``) it is written piece by piece (each
    slot's slice times its own scalar), so that XLA fuses the map into whatever consumes each
    generated tensor: no full-size scale or shift vector is built inside a jitted step.
    Eagerly (one op dispatch per piece would cost milliseconds on a many-layer model) it
    gathers the per-tensor values with one cached index instead."""
    if not any(isinstance(v, jax.core.Tracer) for v in (raw, scale, shift, base)):
        index = _piece_index(layout)
        spread_scale = jnp.concatenate([scale, jnp.ones((1,), scale.dtype)])[index]
        offset = base if base is not None else jnp.concatenate([shift, jnp.zeros((1,), shift.dtype)])[index]
        return (offset + spread_scale * raw).astype(raw.dtype)
    sizes, slots = piece_slots(layout)
    cuts = np.cumsum(sizes)[:-1]
    parts = jnp.split(raw, cuts, axis=-1)  # one split (its transpose is one concatenate), not a slice each
    bases = jnp.split(base, cuts) if base is not None else [None] * len(parts)
    count, pieces = len(layout.slots), []
    for part, start, slot in zip(parts, bases, slots):
        if slot < count:
            part = (start if start is not None else shift[slot]) + scale[slot] * part
        elif start is not None:  # unused places: base + raw, like the gather
            part = start + part
        pieces.append(part)
    return jnp.concatenate(pieces, axis=-1).astype(raw.dtype)


def warm_base(layout: Layout, raw: jax.Array, scales: Sequence[float], shifts: Sequence[float],
              start: Mapping[str, jax.Array]) -> jax.Array:  # fmt: skip
    """``start - scale * raw`` on the started slots, ``shift`` on the others (see :mod:`hypernn.init`)."""
    scale = jnp.asarray(scales, raw.dtype)
    base = per_element(jnp.asarray(shifts, raw.dtype), layout, 0.0)
    for index, slot in enumerate(layout.slots):
        if slot.name in start:
            window = slice(slot.offset, slot.offset + slot.size)
            values = jnp.asarray(start[slot.name], raw.dtype).reshape(-1)
            base = base.at[window].set(values - scale[index] * raw[window])
    return base


def merged_kernel(w0: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """A flax kernel ``(*window, in, out)`` plus ``scale * (A @ B).T`` laid out like it
    (``A``: ``(..., out, r)``, ``B``: ``(..., r, in)``); leading dims kept."""
    delta = jnp.swapaxes(jnp.matmul(a, b), -1, -2)
    return w0 + scale * delta.reshape(*a.shape[:-2], *w0.shape)


def merge_low_rank(tensors: Mapping[str, jax.Array], weights: Sequence[LowRankWeight], bases: Mapping[str, jax.Array],
                   scale: float) -> Dict[str, Any]:  # fmt: skip
    """Replace each weight's factors in ``tensors`` by its merged kernel (under all its names)."""
    out = dict(tensors)
    for weight in weights:
        name_a, name_b = weight.factor_names
        merged = merged_kernel(bases[weight.name], out.pop(name_a), out.pop(name_b), scale)
        out.update({name: merged for name in (weight.name,) + weight.aliases})
    return out
