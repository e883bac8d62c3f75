"""Read an NNX module into :class:`~hypernn.specs.ParamSpec`, and swap parameters for slots.

    >>> from flax import nnx
    >>> [s.name for s in param_specs(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))]
    ['bias', 'kernel']
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import jax
from flax import nnx

from ...specs import ParamSpec
from ..jaxutil import dotted, dtype_name, is_floating

__all__ = ["FrozenWeight", "GeneratedSlot", "freeze_weights", "param_specs", "replace_with_slots", "slot_paths"]

Path = Tuple[Any, ...]


class GeneratedSlot(nnx.Variable):
    """Stands where a generated parameter was; holds a zero scalar between calls (not an
    empty array: checkpointers such as orbax refuse zero-size arrays).

    Not an ``nnx.Param``, so optimizers and ``nnx.state(hnet, nnx.Param)`` skip it.
    """


class FrozenWeight(nnx.Variable):
    """A low-rank layer's frozen ``W0`` where its kernel was (``low_rank=``); each call puts
    ``W0 + scale * (A @ B).T`` there. Not an ``nnx.Param``, so optimizers skip it."""


def _variable_paths(model: nnx.Module) -> Tuple[Dict[int, List[Path]], Dict[int, nnx.Variable], Dict[Path, type]]:
    """Every path to every variable (shared ones under all their paths), and module types."""
    paths: Dict[int, List[Path]] = {}
    variables: Dict[int, nnx.Variable] = {}
    module_types: Dict[Path, type] = {}
    for path, node in nnx.graph.iter_graph(model):
        if isinstance(node, nnx.Variable):
            paths.setdefault(id(node), []).append(tuple(path))
            variables[id(node)] = node
        elif isinstance(node, nnx.Module):
            module_types[tuple(path)] = type(node)
            for name, value in vars(node).items():
                if isinstance(value, nnx.Variable) and tuple(path) + (name,) not in paths.get(id(value), []):
                    paths.setdefault(id(value), []).append(tuple(path) + (name,))
                    variables[id(value)] = value
    return paths, variables, module_types


def _chain(path: Path, module_types: Dict[Path, type]):
    prefixes = [tuple(path[:i]) for i in range(len(path))]
    return tuple((dotted(prefix), module_types[prefix]) for prefix in prefixes if prefix in module_types)


def param_specs(model: nnx.Module) -> List[ParamSpec]:
    """Every variable of ``model``: ``nnx.Param`` as parameters, the rest as buffers."""
    paths, variables, module_types = _variable_paths(model)
    specs = []
    for key, variable_paths in paths.items():
        variable = variables[key]
        if isinstance(variable, (GeneratedSlot, FrozenWeight)):
            continue
        value = variable.get_value() if hasattr(variable, "get_value") else variable.value
        if not hasattr(value, "shape"):
            continue
        specs.append(
            ParamSpec(
                name=dotted(variable_paths[0]),
                aliases=tuple(dotted(p) for p in variable_paths[1:]),
                shape=tuple(value.shape),
                dtype=_dtype_name(value.dtype),
                module_chains=tuple(_chain(p, module_types) for p in variable_paths),
                is_floating=is_floating(value.dtype),
                kind="parameter" if isinstance(variable, nnx.Param) else "buffer",
                value=value,
            )
        )
    return specs


def _dtype_name(dtype: Any) -> str:
    # typed PRNG keys (``nnx.Rngs`` state, e.g. in ``nnx.RNN`` or ``nnx.Dropout``) have no numpy dtype
    return str(dtype) if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) else dtype_name(dtype)


def _owner_and_key(model: nnx.Module, path: Path) -> Tuple[Any, Any]:
    owner: Any = model
    for key in path[:-1]:
        owner = owner[key] if isinstance(key, int) else getattr(owner, key)
    return owner, path[-1]


def replace_with_slots(model: nnx.Module, specs: Sequence[ParamSpec]) -> None:
    """Put one :class:`GeneratedSlot` (shared by all aliases) where each selected Param was."""
    paths, variables, _ = _variable_paths(model)
    by_name = {dotted(p): p for variable_paths in paths.values() for p in variable_paths}
    for spec in specs:
        slot = GeneratedSlot(_empty_like(spec.value), slot_name=spec.name)
        for name in spec.names:
            owner, key = _owner_and_key(model, by_name[name])
            if isinstance(key, int):
                owner[key] = slot
            else:
                setattr(owner, key, slot)


def _empty_like(value: Any) -> Any:
    import jax.numpy as jnp

    return jnp.zeros((), dtype=value.dtype)


def slot_paths(model: nnx.Module) -> Tuple[Tuple[Path, str], ...]:
    """``(path in nnx.split's state, generated name)`` for every slot of ``model``."""
    _, state = nnx.split(model)
    found = []
    for path, variable in nnx.to_flat_state(state):
        if isinstance(variable, (GeneratedSlot, FrozenWeight)):
            found.append((tuple(path), variable.get_metadata()["slot_name"]))
    return tuple(found)


def freeze_weights(model: nnx.Module, specs: Sequence[ParamSpec]) -> None:
    """Put one :class:`FrozenWeight` holding the current value where each Param of ``specs`` was."""
    paths, _, _ = _variable_paths(model)
    by_name = {dotted(p): p for variable_paths in paths.values() for p in variable_paths}
    for spec in specs:
        frozen = FrozenWeight(spec.value, slot_name=spec.name)
        for name in spec.names:
            owner, key = _owner_and_key(model, by_name[name])
            if isinstance(key, int):
                owner[key] = frozen
            else:
                setattr(owner, key, frozen)
