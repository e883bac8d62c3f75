"""Where generated linen weights start: the :mod:`hypernn.init` map, computed inside ``init``.

A linen module holds no values, so the start map is measured when the hypernetwork's
variables are created (inside ``hnet.init``, traced, with ``jax.numpy``) and kept in its
own collection, :data:`COLLECTION` (``"hypernn"``), next to ``params``: the per-tensor
``scale``/``shift``, the warm-start ``base`` and the frozen low-rank ``W0`` of each adapted
kernel. Optimisers that update ``variables["params"]`` leave it alone; pass it back to
``apply`` with the other collections (``{**variables, "params": params}``).

    >>> import jax.numpy as jnp
    >>> from hypernn.layout import plan_layout
    >>> from hypernn.default_inits import TargetInit
    >>> layout = plan_layout([("w", (4, 25)), ("b", (4,))], kind="global", num_embeddings=4)
    >>> raw = jnp.linspace(-3.0, 5.0, layout.generated_size)
    >>> state = start_state(layout, raw, [TargetInit(0.2), TargetInit(0.0)], init="hyperfan", start=None)
    >>> round(float(apply_start(raw, layout, state)[:100].std()), 4)
    0.2
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ...default_inits import TargetInit
from ...init import calibrate
from ...layout import Layout
from ..jaxstart import per_element, start_map

__all__ = ["COLLECTION", "apply_start", "measure", "start_state"]

#: the linen collection holding the start map and frozen low-rank weights
COLLECTION = "hypernn"


def measure(value: Any) -> Optional[tuple]:
    """``(mean, std)`` of concrete values; ``None`` for abstract ones (traced structure)."""
    if isinstance(value, jax.ShapeDtypeStruct):
        return None
    values = np.asarray(value, dtype=np.float64)
    return float(values.mean()), float(values.std())


def start_state(layout: Layout, raw: jax.Array, targets: Sequence[TargetInit], *, init: str,
                start: Optional[Mapping[str, jax.Array]]) -> Dict[str, jax.Array]:  # fmt: skip
    """``{"scale", "shift"[, "base"]}`` for a generator whose raw flat output is ``raw``."""
    if init == "hyperfan":
        scale, shift = calibrate(layout, raw, targets, xp=jnp)
    else:
        scale, shift = jnp.ones(len(layout.slots), raw.dtype), jnp.zeros(len(layout.slots), raw.dtype)
    state = {"scale": scale.astype(raw.dtype), "shift": shift.astype(raw.dtype)}
    if start:
        base = per_element(state["shift"], layout, 0.0)
        for index, slot in enumerate(layout.slots):
            if slot.name in start:
                window = slice(slot.offset, slot.offset + slot.size)
                values = jnp.asarray(start[slot.name], raw.dtype).reshape(-1)
                base = base.at[window].set(values - state["scale"][index] * raw[window])
        state["base"] = base
    return state


def apply_start(raw: jax.Array, layout: Layout, state: Optional[Mapping[str, jax.Array]]) -> jax.Array:
    """The map on the raw flat output (identity without a state)."""
    if state is None:
        return raw
    return start_map(raw, layout, state["scale"], state["shift"], state.get("base"))
