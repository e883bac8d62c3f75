"""Run a JAX model with a different generated weight set for every sample of a batch.

``jax.vmap`` over the model's functional call (linen ``apply``, NNX ``merge`` + call),
never a Python loop. The rules, the same for linen and NNX:

- every array argument with at least one dimension is batched along axis 0 (its size
  must be the number of weight sets ``B``); sample ``i`` sees ``x[i:i+1]``, a batch of
  one, so the model runs exactly as for one sample;
- other arguments (Python values, 0-d arrays) are shared by all samples;
- output leaves lose that batch axis of size 1 again (``(B, ...)``); a leaf without it
  (say a scalar loss) comes back stacked, one per sample;
- random streams (dropout) are split, so every sample draws its own mask;
- the vmap axis is named :data:`SAMPLE_AXIS`; batch norm layers in training mode reduce
  over it, so they act as conditional batch norm: statistics over the whole batch,
  per-sample scale and shift when those are generated.

    >>> import jax.numpy as jnp
    >>> def model(weights, x):
    ...     return x @ weights, {}
    >>> w = jnp.stack([jnp.eye(2), 2 * jnp.eye(2)])
    >>> map_samples(model, w, (jnp.ones((2, 2)),), {}, batch=2)[0]
    Array([[1., 1.],
           [2., 2.]], dtype=float32)
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConditionError

__all__ = ["SAMPLE_AXIS", "drop_sample_batch_axis", "map_samples", "split_keys", "with_sample_axis"]

#: the name of the vmap axis over samples (batch norm layers reduce over it)
SAMPLE_AXIS = "hypernn_sample"


def _is_batched(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray)) and np.ndim(leaf) >= 1


def with_sample_axis(axis_name: Any) -> Any:
    """A layer's ``axis_name`` extended by :data:`SAMPLE_AXIS` (kept if already there)."""
    if axis_name is None:
        return SAMPLE_AXIS
    names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    return names if SAMPLE_AXIS in names else (*names, SAMPLE_AXIS)


def split_keys(keys: Mapping[str, jax.Array], batch: int) -> Dict[str, jax.Array]:
    """One independent key per sample for every named random stream."""
    return {name: jax.random.split(key, batch) for name, key in keys.items()}


def _argument_name(path: Tuple[Any, ...]) -> str:
    """``(0, 2, ...)`` -> ``"positional argument 2"``; ``(1, "mask", ...)`` -> ``"`mask`"``."""
    rest = jax.tree_util.keystr(path[2:])
    head = f"positional argument {path[1].idx}" if path[0].idx == 0 else f"`{path[1].key}`"
    return head + rest


def _check_batched(leaves: List[Any], positions: List[int], spec: Any, batch: int) -> None:
    bad = [i for i in positions if leaves[i].shape[0] != batch]
    if bad:
        indexed = jax.tree_util.tree_unflatten(spec, list(range(len(leaves))))
        names = [_argument_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(indexed)[0]]
        shapes = ", ".join(f"{names[i]} has shape {tuple(leaves[i].shape)}" for i in bad)
        raise ConditionError(
            f"per-sample weights: {batch} weight sets (a condition of batch {batch}), but these array arguments do "
            f"not have {batch} samples along axis 0: {shapes}. Every array argument is split along axis 0, one "
            f"slice per weight set; pass one condition (shape (C,)) to use one weight set for the whole batch."
        )


def map_samples(
    run: Callable[..., Any],
    per_sample: Any,
    args: Tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    batch: int,
    shared: Any = None,
) -> Any:
    """``run(per_sample_i, *args_i, **kwargs_i) -> (output, extras)`` for every sample
    ``i``, under ``jax.vmap``.

    ``per_sample`` is a pytree with a leading axis of size ``batch`` (the weight sets, split
    random keys, ...); ``shared`` (if given) is passed as ``run(..., shared=shared)`` to
    every sample unbatched. Returns ``(output, extras)``: the output with the per-sample
    batch axis of size 1 removed (see the module docstring), the extras (updated state)
    stacked as they are, ``(batch, ...)``.
    """
    leaves, spec = jax.tree_util.tree_flatten((args, dict(kwargs)))
    positions = [i for i, leaf in enumerate(leaves) if _is_batched(leaf)]
    _check_batched(leaves, positions, spec, batch)

    def one(sample: Any, batched: List[Any], shared_values: Any) -> Any:
        items = list(leaves)
        for i, value in zip(positions, batched):
            items[i] = value[None]
        call_args, call_kwargs = jax.tree_util.tree_unflatten(spec, items)
        extra = {} if shared is None else {"shared": shared_values}
        return run(sample, *call_args, **call_kwargs, **extra)

    mapped = jax.vmap(one, in_axes=(0, 0, None), axis_name=SAMPLE_AXIS)
    output, extras = mapped(per_sample, [leaves[i] for i in positions], shared)
    return jax.tree_util.tree_map(drop_sample_batch_axis, output), extras


def drop_sample_batch_axis(leaf: Any) -> Any:
    """``(B, 1, ...)`` -> ``(B, ...)``: one sample's batch axis of size 1 removed."""
    if isinstance(leaf, jax.Array) and leaf.ndim >= 2 and leaf.shape[1] == 1:
        return jnp.squeeze(leaf, axis=1)
    return leaf
