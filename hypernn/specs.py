"""A framework-free description of one tensor of a model.

Backends introspect a model into a list of :class:`ParamSpec`; selection and layout work
on that list only, so they are written once for torch, linen and NNX.

    >>> spec = ParamSpec(name="fc.weight", shape=(3, 2), dtype="float32",
    ...                  module_chains=((("", object), ("fc", object)),))
    >>> spec.size, spec.names
    (6, ('fc.weight',))
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Tuple

__all__ = ["ModuleChain", "ParamSpec"]

#: ``(module_name, module_type)`` from the root (name ``""``) to the tensor's owner.
ModuleChain = Tuple[Tuple[str, type], ...]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One tensor of a model, reachable under one or more dotted names.

    Attributes:
        name: canonical dotted name (the first name the framework reports).
        shape: the tensor's shape.
        dtype: the dtype's name, e.g. ``"float32"``.
        module_chains: for each of :attr:`names`, the modules that lead to it.
        aliases: further names of the same tensor (tied parameters).
        is_floating: whether the dtype is a real floating-point type.
        requires_grad: whether the framework trains it (torch ``requires_grad``).
        kind: ``"parameter"`` or ``"buffer"`` (buffers are never generated).
        value: the framework's tensor; dropped by :meth:`without_value`.
    """

    name: str
    shape: Tuple[int, ...]
    dtype: str
    module_chains: Tuple[ModuleChain, ...]
    aliases: Tuple[str, ...] = ()
    is_floating: bool = True
    requires_grad: bool = True
    kind: Literal["parameter", "buffer"] = "parameter"
    value: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def names(self) -> Tuple[str, ...]:
        """The canonical name followed by the aliases."""
        return (self.name,) + self.aliases

    @property
    def size(self) -> int:
        """Number of scalar values in the tensor."""
        return math.prod(self.shape)

    def without_value(self) -> "ParamSpec":
        """A copy that holds no reference to the framework tensor."""
        return dataclasses.replace(self, value=None)
