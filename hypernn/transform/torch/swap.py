"""Put generated tensors into the target's parameter slots for one call, then empty them.

The selected parameters of :attr:`HypernetizedModule.target_network` are ``None`` in their
modules' ``_parameters``; for a call, :class:`ParameterSlots` writes the generated tensors
there directly and writes ``None`` back in ``finally``. That is the work
``torch.func.functional_call`` does, without its per-call name resolution, which costs
more than the model's own forward for models with many small tensors. The owners of the
slots are resolved once per target object.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1)
    >>> model._parameters["weight"] = None
    >>> slots = ParameterSlots()
    >>> with slots.filled(model, {"weight": torch.ones(1, 2)}):
    ...     model(torch.ones(1, 2)) - model.bias
    tensor([[2.]], grad_fn=<SubBackward0>)
    >>> model.weight is None
    True
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn

__all__ = ["ParameterSlots"]


class ParameterSlots:
    """The ``(module, attribute)`` slot of every generated name, resolved once per target."""

    def __init__(self) -> None:
        self._key: Optional[Tuple[nn.Module, Tuple[str, ...]]] = None
        self._slots: List[Tuple[Dict[str, Optional[torch.Tensor]], str, str]] = []

    def _resolve(self, target: nn.Module, names: Tuple[str, ...]) -> List[Tuple[Dict[str, Optional[torch.Tensor]], str, str]]:
        if self._key is None or self._key[0] is not target or self._key[1] != names:
            slots = []
            for name in names:
                owner, _, attribute = name.rpartition(".")
                slots.append((target.get_submodule(owner)._parameters, attribute, name))
            self._key, self._slots = (target, names), slots
        return self._slots

    @contextlib.contextmanager
    def filled(self, target: nn.Module, tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """``target``'s empty parameter slots hold ``tensors`` (by dotted name) inside the block."""
        slots = self._resolve(target, tuple(tensors))
        try:
            for parameters, attribute, name in slots:
                parameters[attribute] = tensors[name]
            yield
        finally:
            for parameters, attribute, _ in slots:
                parameters[attribute] = None

    def __getstate__(self) -> Dict[str, object]:
        return {"_key": None, "_slots": []}  # resolved again after unpickling / copying

    def __deepcopy__(self, memo: Dict[int, object]) -> "ParameterSlots":
        return ParameterSlots()
