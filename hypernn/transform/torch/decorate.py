"""``@hypernetize(...)`` on an ``nn.Module`` subclass: every instance is a hypernetwork.

    >>> import torch, torch.nn as nn
    >>> from hypernn import hypernetize
    >>> @hypernetize(embedding_dim=4, num_embeddings=8)
    ... class Net(nn.Module):
    ...     def __init__(self, width):
    ...         super().__init__()
    ...         self.fc = nn.Linear(width, 2)
    ...     def forward(self, x):
    ...         return self.fc(x)
    >>> net = Net(3)
    >>> isinstance(net, Net), type(net.target_network) is Net.__wrapped__
    (True, True)
"""

from __future__ import annotations

import sys
import weakref
from typing import Any, List, Tuple

from torch import nn

from ...errors import UnsupportedModelError
from ...options import DYNAMIC_OPTIONS, INIT_OPTIONS, HypernetizeOptions
from .dynamic import DynamicHypernetizedModule
from .module import HypernetizedModule

__all__ = ["decorate"]

_CLASSES: "weakref.WeakKeyDictionary[type, List[Tuple[HypernetizeOptions, type]]]" = weakref.WeakKeyDictionary()


def _bound_to_name(cls: type) -> bool:
    """Whether ``cls`` is reachable under its own module and qualified name."""
    obj: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is cls


def _rebuild(cls: type, options: HypernetizeOptions) -> "HypernetizedModule":
    """Pickle support: an empty instance of the decorated class of ``cls``."""
    decorated = decorate(cls, options)
    return decorated.__new__(decorated)


def decorate(cls: type, options: HypernetizeOptions) -> type:
    """A ``HypernetizedModule`` subclass that builds ``cls(*args, **kwargs)`` and hypernetizes it.

    The returned class takes ``cls``'s name, qualified name and docstring and keeps
    ``cls`` as ``__wrapped__``. Under decorator syntax the original class is renamed
    ``<Name>.__wrapped__`` so instances of both stay picklable.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UnsupportedModelError(f"`@hypernetize` decorates torch.nn.Module subclasses; got {cls!r}.")
    if issubclass(cls, HypernetizedModule):
        raise UnsupportedModelError(f"{cls.__name__} is already a hypernetwork class; decorate the model class itself.")
    for known, decorated in _CLASSES.get(cls, []):
        if known == options:
            return decorated
    options.reject_unused("torch", used=DYNAMIC_OPTIONS + INIT_OPTIONS)
    kwargs = {**options.common_kwargs(), **options.start_kwargs(), "inplace": True}
    base = HypernetizedModule
    if options.dynamic:
        base = DynamicHypernetizedModule
        kwargs.update(options.dynamic_kwargs())

    def __init__(self, *args: Any, **init_kwargs: Any) -> None:
        base.__init__(self, cls(*args, **init_kwargs), **kwargs)

    def __reduce_ex__(self, protocol: int) -> Any:
        return _rebuild, (cls, options), self.__getstate__()

    name, qualname = cls.__name__, cls.__qualname__
    namespace = {"__init__": __init__, "__reduce_ex__": __reduce_ex__, "__module__": cls.__module__,
                 "__qualname__": qualname, "__doc__": cls.__doc__, "__wrapped__": cls}  # fmt: skip
    decorated = type(name, (base,), namespace)
    if not _bound_to_name(cls):  # decorator syntax: the name will point at `decorated`
        cls.__qualname__ = f"{qualname}.__wrapped__"
    _CLASSES.setdefault(cls, []).append((options, decorated))
    return decorated
