"""Where generated linen weights start: the :mod:`hypernn.init` map for stateless modules.

A linen module keeps no values of its own, so its hyperfan scales cannot be measured on the
generator that ``hnet.init(key, ...)`` will draw. They are measured once per model
structure, when the hypernetwork is planned, on :data:`DRAWS` initialisations of the
embedding and generator with fixed keys (pooled per tensor: the scales give every tensor
its target mean and std *in expectation*), and become constants of the plan: ``init``
returns the same collections as without them.

Warm start and low rank keep frozen arrays, in their own collection :data:`COLLECTION`
(``"hypernn"``) next to ``params``: the warm-start ``base`` (measured on the generator
``init`` draws, so ``hnet.apply(variables, x) == model.apply(pretrained, x)`` at step 0)
and each adapted kernel's ``W0``. Optimisers that update ``variables["params"]`` leave it
alone; pass it back to ``apply`` (``{**variables, "params": params}``).

    >>> import jax.numpy as jnp
    >>> from hypernn.layout import plan_layout
    >>> layout = plan_layout([("w", (2, 2)), ("b", (2,))], kind="global", num_embeddings=2)
    >>> raw = jnp.arange(6.0)
    >>> base = warm_base(layout, raw, (2.0, 1.0), (0.0, 0.0), {"w": jnp.ones(4)})
    >>> apply_start(raw, layout, (2.0, 1.0), (0.0, 0.0), base)
    Array([1., 1., 1., 1., 4., 5.], dtype=float32)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ...layout import Layout
from ..jaxstart import start_map
from ..jaxstart import warm_base as warm_base

__all__ = ["COLLECTION", "DRAWS", "apply_start", "measure", "warm_base"]

#: the linen collection holding frozen arrays (warm-start base, low-rank ``W0``)
COLLECTION = "hypernn"

#: generator initialisations the plan-time hyperfan scales are measured on
DRAWS = 8


def measure(value: Any) -> Optional[tuple]:
    """``(mean, std)`` of concrete values; ``None`` for abstract ones (traced structure)."""
    if isinstance(value, jax.ShapeDtypeStruct):
        return None
    values = np.asarray(value, dtype=np.float64)
    return float(values.mean()), float(values.std())


def apply_start(raw: jax.Array, layout: Layout, scales: Optional[Sequence[float]], shifts: Sequence[float],
                base: Optional[jax.Array] = None) -> jax.Array:  # fmt: skip
    """The map on the raw flat output (identity without scales)."""
    if scales is None:
        return raw
    return start_map(raw, layout, jnp.asarray(scales, raw.dtype), jnp.asarray(shifts, raw.dtype), base)
