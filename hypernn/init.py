"""Where generated weights start: the hyperfan init and warm start, as one affine map.

The weight generator's raw output ``raw`` (the flat ``(num_chunks * chunk_dim,)`` vector)
passes through a fixed, per-tensor affine map before it is cut into tensors::

    flat = shift + scale * raw            (init="hyperfan")
    flat = base + scale * raw             (warm_start=True)

* ``init="hyperfan"`` (the default): for every generated tensor, ``scale`` and ``shift``
  are chosen at construction from the generator's *measured* raw output on that tensor's
  values, so that the tensor starts with exactly the mean and standard deviation of its own
  layer's default init (:mod:`hypernn.default_inits`: e.g. variance ``1/(3 fan_in)`` for a
  torch ``Linear`` weight, ``1/fan_in`` for a flax ``Dense`` kernel). A tensor whose init
  is a constant (norm scales, flax biases) starts at that constant with a small spread
  (:data:`CONSTANT_STD`) so that it still trains. Measuring instead of deriving makes it work
  for any generator (MLPs, custom factories) and any chunk layout: in the ``global``
  layout one chunk may span several tensors, each with its own scale. A tensor whose raw
  values do not vary (one value, or a generator that outputs constants) is measured
  against the spread of the whole raw vector instead.
* ``init="default"``: hyper-nn's plain framework defaults; no map at all (``flat = raw``).
* ``warm_start=True``: ``base = start - scale * raw0`` with ``raw0`` the raw output at
  construction, so the generated tensors equal ``start`` (the model's current weights)
  exactly at step 0 and move from there, at the hyperfan scale (or 1 with
  ``init="default"``), as the generator trains.

``scale`` and ``shift`` are per tensor (a few numbers, saved with the hypernetwork);
``base`` is a full vector (the model's weights). Unused (padding) values pass through.

A fixed multiplier after the generator also scales how fast an optimiser such as Adam
moves the generated weights (its steps are normalised in the generator's parameters, then
multiplied by ``scale``). So backends first fold the :func:`common_scale` (the
size-weighted geometric mean of the per-tensor scales) into the *parameters* of the
generator's last linear layer, as Chang et al.'s hyperfan init does, and the map keeps
only each tensor's ratio to it, close to 1 for most values.

    >>> import numpy as np
    >>> from hypernn.layout import plan_layout
    >>> from hypernn.default_inits import TargetInit
    >>> layout = plan_layout([("w", (2, 50)), ("b", (2,))], kind="global", num_embeddings=4)
    >>> raw = np.random.default_rng(0).normal(3.0, 2.0, layout.generated_size)
    >>> plan = plan_output_affine(layout, raw, [TargetInit(0.1), TargetInit(0.0, 1.0)], init="hyperfan")
    >>> w, b = slot_values(layout, plan.apply(raw))
    >>> round(float(w.std()), 6), round(float(w.mean()), 6), round(float(b.mean()), 6)
    (0.1, 0.0, 1.0)
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .default_inits import TargetInit
from .layout import Layout

__all__ = ["CONSTANT_STD", "INITS", "OutputAffine", "calibrate", "common_scale", "common_scale_of",
           "piece_slots", "plan_output_affine", "slot_values"]

INITS = ("hyperfan", "default")

#: starting spread of tensors whose default init is a constant (norm scales, zero biases):
#: small enough to start near the constant, large enough that gradients reach them
CONSTANT_STD = 0.01


def slot_values(layout: Layout, flat: np.ndarray) -> List[np.ndarray]:
    """The values of every slot in a full (``generated_size``) vector, in slot order."""
    return [flat[slot.offset : slot.offset + slot.size] for slot in layout.slots]


def piece_slots(layout: Layout) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """``(sizes, slot index)`` of the pieces of :attr:`Layout.full_plan`; gaps get index
    ``len(layout.slots)`` (for per-element vectors built with ``repeat_interleave``)."""
    sizes = layout.full_plan.sizes
    slots = [len(layout.slots)] * len(sizes)
    for index, piece in enumerate(layout.full_plan.keep):
        slots[piece] = index
    return tuple(sizes), tuple(slots)


@dataclasses.dataclass(frozen=True)
class OutputAffine:
    """``flat = (base if given else shift) + scale * raw``, per slot (gaps unchanged)."""

    layout: Layout
    scales: Tuple[float, ...]
    shifts: Tuple[float, ...]
    base: Optional[np.ndarray] = dataclasses.field(default=None, compare=False)

    def per_element(self, values: Sequence[float], gap: float) -> np.ndarray:
        """A per-slot sequence spread over the full vector (``gap`` in unused places)."""
        sizes, slots = piece_slots(self.layout)
        return np.repeat(np.asarray([*values, gap], dtype=np.float64)[list(slots)], sizes)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """The map in NumPy (backends run it in their own framework)."""
        offset = self.base if self.base is not None else self.per_element(self.shifts, 0.0)
        return offset + self.per_element(self.scales, 1.0) * raw


def calibrate(layout: Layout, raw: Any, targets: Sequence[TargetInit], xp: Any = np) -> Tuple[Any, Any]:
    """Per-slot ``(scales, shifts)`` (arrays) that give each slot its target mean and std.

    Written with array operations only (no branching on values), so ``xp`` may be
    ``numpy`` or ``jax.numpy`` (also under a trace).
    """
    return _calibrate_pieces(slot_values(layout, raw), targets, xp, raw.dtype)


def _calibrate_pieces(pieces: Sequence[Any], targets: Sequence[TargetInit], xp: Any, dtype: Any) -> Tuple[Any, Any]:
    nonempty = [p for p in pieces if p.size > 0]
    overall = xp.std(xp.concatenate(nonempty)) if nonempty else xp.zeros((), dtype)
    scales, shifts = [], []
    for values, target in zip(pieces, targets):
        if values.size == 0:  # nothing to measure: leave the tensor as generated
            scales.append(xp.ones((), dtype))
            shifts.append(xp.zeros((), dtype))
            continue
        own = xp.std(values) if values.size > 1 else xp.zeros((), dtype)
        spread = xp.where(own > 0, own, overall)  # one value, or constant values: the whole spread
        measurable = spread > 0
        wanted = target.std if target.std > 0 else CONSTANT_STD
        scale = xp.where(measurable, wanted / xp.where(measurable, spread, 1.0), 1.0)
        scales.append(scale)
        shifts.append(xp.where(measurable, target.mean - scale * xp.mean(values), 0.0))
    return xp.stack(scales), xp.stack(shifts)


def _calibrate(layout: Layout, raw: np.ndarray, targets: Sequence[TargetInit]) -> Tuple[List[float], List[float]]:
    scales, shifts = calibrate(layout, raw, targets)
    return [float(s) for s in scales], [float(s) for s in shifts]


def common_scale_of(layout: Layout, scales: Any, xp: Any = np) -> Any:
    """The size-weighted geometric mean of per-slot ``scales``."""
    sizes = [slot.size for slot in layout.slots]
    if not sum(sizes):
        return xp.ones(())
    return xp.exp(sum(n * xp.log(s) for n, s in zip(sizes, scales)) / sum(sizes))


def common_scale(layout: Layout, raw: np.ndarray, targets: Sequence[TargetInit]) -> float:
    """The size-weighted geometric mean of the hyperfan scales: the part of the map that a
    backend may fold into the generator's last linear layer (see the module docstring)."""
    raw = np.asarray(raw, dtype=np.float64).reshape(-1)
    scales, _ = calibrate(layout, raw, targets)
    return float(common_scale_of(layout, scales))


def plan_output_affine(
    layout: Layout,
    raw: np.ndarray,
    targets: Sequence[TargetInit],
    *,
    init: str,
    start: Optional[Mapping[str, np.ndarray]] = None,
) -> Optional[OutputAffine]:
    """Plan the affine map for a generator whose raw output at construction is ``raw``.

    Args:
        layout: the chunk layout (slots in order).
        raw: the raw generator output, flat, ``layout.generated_size`` values.
        targets: each slot's :class:`TargetInit` (used by ``init="hyperfan"``).
        init: ``"hyperfan"`` or ``"default"``.
        start: warm start: ``{slot name: values}`` the slots must equal at construction
            (slots not named keep their init).

    Returns:
        ``None`` when nothing changes (``init="default"`` without warm start).
    """
    raw = np.asarray(raw, dtype=np.float64).reshape(-1)
    if init == "default":
        if not start:
            return None
        scales, shifts = [1.0] * len(layout.slots), [0.0] * len(layout.slots)
    else:
        scales, shifts = _calibrate(layout, raw, targets)
    affine = OutputAffine(layout, tuple(scales), tuple(shifts))
    if not start:
        return affine
    base = affine.per_element(shifts, 0.0)
    for slot, scale in zip(layout.slots, scales):
        if slot.name in start:
            values = np.asarray(start[slot.name], dtype=np.float64).reshape(-1)
            window = slice(slot.offset, slot.offset + slot.size)
            base[window] = values - scale * raw[window]
    return dataclasses.replace(affine, base=base)
