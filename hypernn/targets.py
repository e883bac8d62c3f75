"""Per-slot start targets, shared by the backends: what each generated slot should start as.

* :func:`slot_targets`: the hyperfan target of every slot (the layer's own init, or for
  low-rank factors the factor targets of :func:`hypernn.lowrank.factor_inits`);
* :func:`start_values`: warm start: the values slots must equal at step 0 (the model's
  weights; a zero ``A`` factor in low-rank mode, so the delta starts at zero);
* :func:`start_targets`: what ``summary()`` compares with (warm-started slots: their values).

    >>> import numpy as np
    >>> from hypernn.specs import ParamSpec
    >>> Linear = type("Linear", (), {})
    >>> spec = ParamSpec("fc.weight", (4, 3), "float32", ((("", object), ("fc", Linear)),), value=np.ones((4, 3)))
    >>> [round(t.std, 4) for t in slot_targets([spec], [spec], (), convention="torch", measure=None)]
    [0.3333]
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .default_inits import Measure, TargetInit, target_init
from .layout import Layout
from .lowrank import LowRankWeight, factor_inits
from .specs import ParamSpec

__all__ = ["slot_targets", "start_targets", "start_values"]


def slot_targets(
    specs: Sequence[ParamSpec],
    chosen: Sequence[ParamSpec],
    weights: Sequence[LowRankWeight],
    *,
    convention: str,
    measure: Optional[Measure],
) -> Tuple[TargetInit, ...]:
    """Each slot's hyperfan target, in layout order (factors ``A``, ``B`` per low-rank weight)."""
    shapes = {n: s.shape for s in specs for n in s.names}
    inits = [target_init(s, convention=convention, shapes=shapes, measure=measure) for s in chosen]
    if not weights:
        return tuple(inits)
    return tuple(t for weight, init in zip(weights, inits) for t in factor_inits(weight, init))


def start_values(chosen: Sequence[ParamSpec], weights: Sequence[LowRankWeight]) -> Dict[str, Any]:
    """Warm start: ``{slot name: values}`` (framework arrays or NumPy) at step 0."""
    if not weights:
        return {s.name: s.value for s in chosen}
    return {w.factor_names[0]: np.zeros(w.factor_shapes[0]) for w in weights}


def start_targets(
    layout: Layout, targets: Sequence[TargetInit], start: Optional[Mapping[str, np.ndarray]], *, low_rank: bool
) -> Tuple[TargetInit, ...]:
    """What a summary compares each slot with: warm-started slots start at their values."""
    if not start:
        return tuple(targets)
    rule = "warm start: zero, so the delta starts at 0" if low_rank else "warm start: the model's values"
    out = []
    for slot, target in zip(layout.slots, targets):
        if slot.name in start:
            values = np.asarray(start[slot.name], dtype=np.float64)
            target = TargetInit(float(values.std()), float(values.mean()), rule)
        out.append(target)
    return tuple(out)
