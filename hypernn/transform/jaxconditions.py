"""Condition checks of dynamic JAX hypernetworks (linen and NNX; imports jax only).

A condition is a float vector ``(C,)`` (one weight set for the batch), a float batch
``(B, C)`` (one weight set per sample), or with ``num_conditions=T`` integer ids of shape
``()`` or ``(B,)``.

    >>> import jax.numpy as jnp
    >>> check_condition(jnp.ones((4, 3)), condition_dim=3, num_conditions=None).shape
    (4, 3)
    >>> check_condition(jnp.ones(2), condition_dim=3, num_conditions=None)
    Traceback (most recent call last):
    ...
    hypernn.errors.ConditionError: `condition` must have shape (3,) for one weight set or (B, 3) for one per sample; got (2,).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConditionError, ConditionTypeError

__all__ = ["check_condition", "missing_condition"]


def missing_condition() -> ConditionError:
    return ConditionError(
        "a dynamic hypernetwork needs a condition: call it with `condition=c` (or pass "
        "`generate_params_kwargs={'condition': c}`)."
    )


def check_condition(condition: Any, *, condition_dim: int, num_conditions: Optional[int]) -> jax.Array:
    """The condition as an array, after checking its type, shape and (when concrete) ids."""
    if condition is None:
        raise missing_condition()
    if not isinstance(condition, (jax.Array, np.ndarray, int, float, list, tuple)):
        raise ConditionTypeError(f"`condition` must be a jax array; got {type(condition).__name__}.")
    array = jnp.asarray(condition)
    if num_conditions is not None:
        return _check_ids(array, num_conditions)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise ConditionTypeError(
            f"`condition` must be a floating-point array of width condition_dim={condition_dim}; got dtype {array.dtype}."
        )
    if array.ndim not in (1, 2) or array.shape[-1] != condition_dim:
        raise ConditionError(
            f"`condition` must have shape ({condition_dim},) for one weight set or (B, {condition_dim}) "
            f"for one per sample; got {tuple(array.shape)}."
        )
    return array


def _check_ids(ids: jax.Array, num_conditions: int) -> jax.Array:
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ConditionTypeError(f"`condition` must hold integer ids (num_conditions={num_conditions}); got dtype {ids.dtype}.")
    if ids.ndim > 1:
        raise ConditionError(f"`condition` ids must have shape () or (B,); got {tuple(ids.shape)}.")
    if not isinstance(ids, jax.core.Tracer) and ids.size:
        values = np.asarray(ids)  # numpy: no jax op that a surrounding trace would capture
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= num_conditions:
            raise ConditionError(f"`condition` ids must lie in [0, {num_conditions}); got values from {low} to {high}.")
    return ids
