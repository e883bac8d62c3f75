"""hyper-nn's JAX helpers: chunk sizes and parameter counts (on today's jax).

    >>> import jax.numpy as jnp, flax.linen as nn
    >>> target = nn.Sequential([nn.Dense(64), nn.relu, nn.Dense(32)])
    >>> count_jax_params(target, inputs=jnp.zeros((2, 32)))      # one array or a list of them
    4192
    >>> count_jax_params(target, input_shape=[(1, 32)]), get_weight_chunk_dims(4192, 32)
    (4192, 131)
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..base import get_weight_chunk_dims
from ..errors import ConfigurationError, UnsupportedModelError

__all__ = ["count_jax_params", "example_inputs", "get_weight_chunk_dims"]


def _is_shape(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in value)


def example_inputs(input_shape: Optional[Sequence[Any]] = None, inputs: Any = None) -> List[Any]:
    """The target's positional inputs: ``inputs`` (one array, or a list/tuple of
    arguments) or zeros of ``input_shape`` (a list of shapes, one per argument, or a
    single shape such as ``(1, 32)``).

        >>> [x.shape for x in example_inputs(input_shape=(2, 3))], len(example_inputs(inputs=[1.0, 2.0]))
        ([(2, 3)], 2)
    """
    if inputs is not None:
        return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if input_shape is None:
        raise ConfigurationError(
            "Input shape or inputs must be specified: pass `inputs=` (an example array, or a list of the "
            "target's positional arguments) or `target_input_shape=`/`input_shape=` (a list of shapes)."
        )
    shapes = [input_shape] if _is_shape(input_shape) else list(input_shape)
    return [jnp.zeros(tuple(shape)) for shape in shapes]


def count_jax_params(
    model: Any,
    input_shape: Optional[Sequence[Any]] = None,
    inputs: Any = None,
    return_variables: bool = False,
    **kwargs: Any,
) -> Any:
    """Number of values in ``model``'s ``params`` (other collections, e.g. ``batch_stats``,
    are not parameters); ``kwargs`` go to ``model.init`` (e.g. ``train=False``).

    With ``return_variables=True`` returns ``(count, variables)`` from a real
    ``model.init(jax.random.key(0), ...)``; otherwise the structure is traced abstractly.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"`model` must be a flax.linen.Module; got {type(model).__name__} ({model!r:.80}).")
    arguments = example_inputs(input_shape, inputs)

    def init() -> Any:
        return model.init(jax.random.key(0), *arguments, **kwargs)

    variables = init() if return_variables else jax.eval_shape(init)
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables.get("params", {})))
    return (count, variables) if return_variables else count
