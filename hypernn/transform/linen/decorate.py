"""``@hypernetize(...)`` on a linen ``Module`` class: every instance is a hypernetwork.

The returned class has the original's fields (so ``Net(width=16)`` still works); the
variable structure is traced at the first ``init``/``apply`` from its arguments.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from hypernn import hypernetize
    >>> @hypernetize(embedding_dim=2, num_embeddings=4)
    ... class Net(nn.Module):
    ...     width: int = 3
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return nn.Dense(self.width)(x)
    >>> net = Net(width=5)
    >>> variables = net.init(jax.random.key(0), jnp.ones((1, 2)))
    >>> isinstance(net, Net), net.apply(variables, jnp.ones((4, 2))).shape
    (True, (4, 5))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

import flax.linen as nn

from ...errors import UnsupportedModelError
from ...options import HypernetizeOptions
from .dynamic import LinenDynamicHypernetwork, check_dynamic_call_signature
from .module import LinenHypernetwork, check_call_signature

__all__ = ["decorate"]

_LINEN_FIELDS = ("parent", "name")


def _copied_fields(cls: type) -> Dict[str, Any]:
    namespace: Dict[str, Any] = {"__annotations__": {}}
    for field in dataclasses.fields(cls):
        if field.name in _LINEN_FIELDS:
            continue
        namespace["__annotations__"][field.name] = field.type
        if field.default is not dataclasses.MISSING:
            namespace[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            namespace[field.name] = dataclasses.field(default_factory=field.default_factory)
    return namespace


def decorate(cls: type, options: HypernetizeOptions) -> type:
    """A linen hypernetwork class with ``cls``'s fields that generates ``cls``'s params."""
    if issubclass(cls, LinenHypernetwork):
        raise UnsupportedModelError(f"{cls.__name__} is already a hypernetwork class; decorate the model class itself.")
    if options.dynamic:
        check_dynamic_call_signature(cls, options.condition_keyword)
    else:
        check_call_signature(cls)
    options.reject_unused("flax linen", used=("example_inputs", "init_kwargs", "variables"))
    names = [f.name for f in dataclasses.fields(cls) if f.name not in _LINEN_FIELDS]

    def hypernn_target(self) -> nn.Module:
        return cls(**{name: getattr(self, name) for name in names}, parent=None)

    def hypernn_options(self) -> HypernetizeOptions:
        return options

    namespace = _copied_fields(cls)
    namespace.update(hypernn_target=hypernn_target, hypernn_options=hypernn_options, __module__=cls.__module__,
                     __qualname__=cls.__qualname__, __doc__=cls.__doc__, __wrapped__=cls)  # fmt: skip
    base = LinenDynamicHypernetwork if options.dynamic else LinenHypernetwork
    return type(cls.__name__, (base,), namespace)
