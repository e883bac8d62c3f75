"""Put generated tensors into the target's parameter slots for one call, then empty them.

The selected parameters of :attr:`HypernetizedModule.target_network` are ``None`` in their
modules' ``_parameters``; for a call, :class:`ParameterSlots` writes the generated tensors
there directly and writes back what the slot held (``None``, or a low-rank layer's frozen
``W0``) in ``finally``. That is the work
``torch.func.functional_call`` does, without its per-call name resolution, which costs
more than the model's own forward for models with many small tensors. The owners of the
slots are resolved once per target object.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1, bias=False)
    >>> model._parameters["weight"] = None
    >>> slots = ParameterSlots()
    >>> with slots.filled(model, {"weight": torch.ones(1, 2)}):
    ...     model(torch.ones(1, 2))
    tensor([[2.]])
    >>> model.weight is None
    True
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn

__all__ = ["FilledSlots", "ParameterSlots"]

#: ``(a module's _parameters, attribute, tensor)``: one slot and what goes into it
Binding = Tuple[Dict[str, Optional[torch.Tensor]], str, torch.Tensor]


class FilledSlots:
    """``with FilledSlots(bindings):`` writes every tensor into its slot, and back what the
    slot held (``None``, or a low-rank layer's frozen ``W0``) on exit. One per call; the
    bindings may be kept: eval-mode reuse keeps them with the generated tensors, so that a
    reused call does no name lookups."""

    __slots__ = ("bindings", "held")

    def __init__(self, bindings: List[Binding]) -> None:
        self.bindings = bindings
        self.held: List[Optional[torch.Tensor]] = []

    def __enter__(self) -> None:
        self.held = [parameters.get(attribute) for parameters, attribute, _ in self.bindings]
        try:
            for parameters, attribute, tensor in self.bindings:
                parameters[attribute] = tensor
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: Any) -> None:
        for (parameters, attribute, _), value in zip(self.bindings, self.held):
            parameters[attribute] = value


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

    def bindings(self, target: nn.Module, tensors: Mapping[str, torch.Tensor]) -> List[Binding]:
        """``target``'s slots paired with ``tensors`` (by dotted name), for :class:`FilledSlots`."""
        return [(parameters, attribute, tensors[name]) for parameters, attribute, name in self._resolve(target, tuple(tensors))]

    @contextlib.contextmanager
    def filled(self, target: nn.Module, tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """``target``'s empty parameter slots hold ``tensors`` (by dotted name) inside the block."""
        slots = self._resolve(target, tuple(tensors))
        # what the slots held: None, or a frozen low-rank ``W0`` that a merged weight replaces
        held = [parameters.get(attribute) for parameters, attribute, _ in slots]
        try:
            for parameters, attribute, name in slots:
                parameters[attribute] = tensors[name]
            yield
        finally:
            for (parameters, attribute, _), value in zip(slots, held):
                parameters[attribute] = value

    def __getstate__(self) -> Dict[str, object]:
        return {"_key": None, "_slots": []}  # resolved again after unpickling / copying

    def __deepcopy__(self, memo: Dict[int, object]) -> "ParameterSlots":
        return ParameterSlots()
