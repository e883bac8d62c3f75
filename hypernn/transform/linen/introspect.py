"""Trace a linen module's variable structure into :class:`~hypernn.specs.ParamSpec`.

Linen modules hold no variables, so their structure comes from tracing ``init`` on
example inputs (abstractly, with :func:`jax.eval_shape`: nothing is computed), or from an
existing variable tree. Leaves of ``params`` are parameters named by their path inside
``params`` (``"Dense_0.kernel"``); leaves of other collections are buffers named
``"batch_stats.BatchNorm_0.mean"`` (with the in-collection path as an alias).

    >>> import jax.numpy as jnp, flax.linen as nn
    >>> structure = trace_structure(nn.Dense(3), example_inputs=(jnp.ones((1, 2)),))
    >>> [s.name for s in structure.specs]
    ['bias', 'kernel']
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax

from ...errors import ConfigurationError
from ...specs import ParamSpec
from ..jaxutil import dotted, dtype_name, is_floating

__all__ = ["Structure", "trace_structure"]

Path = Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Structure:
    """What hypernetization needs to know of a linen module's variables."""

    specs: Tuple[ParamSpec, ...]
    #: ``(collection, top-level keys)`` of every collection other than ``params``.
    collections: Tuple[Tuple[str, Tuple[str, ...]], ...]
    #: ``(name, path inside params)`` of every parameter.
    param_paths: Tuple[Tuple[str, Path], ...]


def _module_types(module: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Tuple[Dict[Path, type], Any]:
    """Abstractly run ``module.init``, recording the class of every module on the way."""
    seen: Dict[Path, type] = {}

    def record(next_fun, call_args, call_kwargs, context):
        seen.setdefault(tuple(context.module.scope.path), type(context.module))
        return next_fun(*call_args, **call_kwargs)

    def init():
        with nn.intercept_methods(record):
            return module.init(jax.random.key(0), *args, **kwargs)

    try:
        shapes = jax.eval_shape(init)
    except Exception as err:
        raise ConfigurationError(
            f"tracing {type(module).__name__}.init with `example_inputs` and `init_kwargs` failed: "
            f"{type(err).__name__}: {err}"
        ) from err
    return seen, shapes


def _chain(path: Path, module_types: Dict[Path, type]):
    """The modules above a leaf: every prefix of its path (so names select even when only
    ``variables`` gave the structure); a class that was not traced is ``object``."""
    prefixes = [tuple(path[:i]) for i in range(len(path))]
    return tuple((dotted(prefix), module_types.get(prefix, object)) for prefix in prefixes)


def _leaves(tree: Any) -> List[Tuple[Path, Any]]:
    return [(tuple(str(getattr(k, "key", k)) for k in path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def trace_structure(
    module: nn.Module,
    *,
    example_inputs: Optional[Sequence[Any]] = None,
    init_kwargs: Optional[Mapping[str, Any]] = None,
    variables: Any = None,
) -> Structure:
    """The variable structure of ``module``, from example inputs and/or a variable tree.

    With only ``variables``, module classes are unknown below the root, so selecting by
    module class needs ``example_inputs`` too.
    """
    module_types: Dict[Path, type] = {(): type(module)}
    shapes = variables
    if example_inputs is not None:
        module_types, traced = _module_types(module, tuple(example_inputs), dict(init_kwargs or {}))
        shapes = variables if variables is not None else traced
    if not isinstance(shapes, Mapping):
        raise ConfigurationError(f"`variables` must be a flax variable dict like {{'params': ...}}; got {type(shapes).__name__}.")
    specs, param_paths = [], []
    for collection in sorted(shapes):
        for path, leaf in _leaves(shapes[collection]):
            inner = dotted(path)
            is_param = collection == "params"
            specs.append(
                ParamSpec(
                    name=inner if is_param else f"{collection}.{inner}",
                    aliases=() if is_param else (inner,),
                    shape=tuple(leaf.shape),
                    dtype=dtype_name(leaf.dtype),
                    module_chains=(_chain(path, module_types),) * (1 if is_param else 2),
                    is_floating=is_floating(leaf.dtype),
                    kind="parameter" if is_param else "buffer",
                    value=leaf,
                )
            )
            if is_param:
                param_paths.append((inner, path))
    collections = tuple((c, tuple(sorted(shapes[c]))) for c in sorted(shapes) if c != "params")
    return Structure(tuple(specs), collections, tuple(param_paths))
