"""Read a torch module into :class:`~hypernn.specs.ParamSpec`, and cut parameters out of it.

    >>> import torch.nn as nn
    >>> [s.name for s in param_specs(nn.Linear(2, 3))]
    ['weight', 'bias']
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import torch
from torch import nn

from ...specs import ModuleChain, ParamSpec

__all__ = ["copy_without", "param_specs", "refresh_derived_state", "remove_parameters"]


def _chain(name: str, module_types: Dict[str, type]) -> ModuleChain:
    parts = name.split(".")[:-1]
    prefixes = [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]
    return tuple((prefix, module_types[prefix]) for prefix in prefixes)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _specs(named: Iterable, kind: str, module_types: Dict[str, type]) -> List[ParamSpec]:
    groups: Dict[int, List] = {}
    for name, tensor in named:
        if tensor is None:
            continue
        groups.setdefault(id(tensor), [tensor, []])[1].append(name)
    specs = []
    for tensor, names in groups.values():
        specs.append(
            ParamSpec(
                name=names[0],
                aliases=tuple(names[1:]),
                shape=tuple(tensor.shape),
                dtype=_dtype_name(tensor.dtype),
                module_chains=tuple(_chain(n, module_types) for n in names),
                is_floating=tensor.is_floating_point(),
                requires_grad=bool(tensor.requires_grad),
                kind=kind,
                value=tensor,
            )
        )
    return specs


def param_specs(model: nn.Module) -> List[ParamSpec]:
    """Every parameter (tied ones once, with aliases) and every buffer of ``model``."""
    module_types = {name: type(m) for name, m in model.named_modules(remove_duplicate=False)}
    params = _specs(model.named_parameters(remove_duplicate=False), "parameter", module_types)
    buffers = _specs(model.named_buffers(remove_duplicate=False), "buffer", module_types)
    return params + buffers


def copy_without(model: nn.Module, specs: Sequence[ParamSpec]) -> nn.Module:
    """A deep copy of ``model`` that does not copy the tensors of ``specs``.

    Their places hold empty ``meta`` placeholders, removed by :func:`remove_parameters`.
    """
    memo = {id(spec.value): nn.Parameter(torch.empty(0, device="meta"), requires_grad=False) for spec in specs}
    return copy.deepcopy(model, memo)


def remove_parameters(model: nn.Module, names: Iterable[str]) -> Tuple[str, ...]:
    """Set the parameters ``names`` (all aliases) of ``model``'s modules to ``None``.

    ``None`` is how torch marks an absent parameter (like ``Linear(bias=False)``): it
    leaves ``parameters()`` and ``state_dict()``, ``.to()`` skips it, and
    ``functional_call`` can still swap a tensor in. Returns the names of recurrent
    modules among the owners; see :func:`track_generated_weights`.
    """
    recurrent = []
    for name in names:
        owner_name, _, attribute = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        owner._parameters[attribute] = None
        if isinstance(owner, nn.RNNBase) and owner_name not in recurrent:
            recurrent.append(owner_name)
    for owner_name in recurrent:
        track_generated_weights(model.get_submodule(owner_name))
    return tuple(recurrent)


def _refresh_flat_weights(module: nn.RNNBase, args: Any) -> None:
    module._init_flat_weights()


def track_generated_weights(module: nn.RNNBase) -> None:
    """Make a recurrent module read its (swapped-in) weights at every call.

    ``nn.RNNBase`` caches its weights in ``_flat_weights``; a forward pre-hook rebuilds the
    cache from the current attributes, and :func:`refresh_derived_state` clears it again
    after the call so no generated tensor (and its autograd graph) outlives the call.
    """
    module.register_forward_pre_hook(_refresh_flat_weights)
    module._init_flat_weights()


def untrack_generated_weights(module: nn.RNNBase) -> None:
    """Remove the hook of :func:`track_generated_weights` (for materialized copies)."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if hook is _refresh_flat_weights:
            del module._forward_pre_hooks[key]


def refresh_derived_state(model: nn.Module, owner_names: Iterable[str]) -> None:
    """Rebuild ``nn.RNNBase._flat_weights`` of the named modules from their attributes."""
    for owner_name in owner_names:
        model.get_submodule(owner_name)._init_flat_weights()
