"""``@hypernetize(...)`` on an ``nnx.Module`` subclass: every instance is a hypernetwork.

The instance is built with the constructor's arguments, then hypernetized; the
hypernetwork's own modules draw from ``hypernetize(..., rngs=...)`` if given, else from
the constructor's ``rngs=`` argument.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from hypernn import hypernetize
    >>> @hypernetize(embedding_dim=2, num_embeddings=4)
    ... class Net(nnx.Module):
    ...     def __init__(self, width, *, rngs):
    ...         self.fc = nnx.Linear(width, 2, rngs=rngs)
    ...     def __call__(self, x):
    ...         return self.fc(x)
    >>> net = Net(3, rngs=nnx.Rngs(0))
    >>> isinstance(net, Net), net(jnp.ones((1, 3))).shape
    (True, (1, 2))
"""

from __future__ import annotations

from typing import Any


from ...errors import OptionTypeError, UnsupportedModelError
from ...options import HypernetizeOptions
from .dynamic import DynamicHypernetizedNNX
from .module import HypernetizedNNX

__all__ = ["decorate"]


def decorate(cls: type, options: HypernetizeOptions) -> type:
    """A ``HypernetizedNNX`` (or ``DynamicHypernetizedNNX``) subclass that builds ``cls(*args, **kwargs)`` and hypernetizes it."""
    if issubclass(cls, HypernetizedNNX):
        raise UnsupportedModelError(f"{cls.__name__} is already a hypernetwork class; decorate the model class itself.")
    options.reject_unused("flax NNX", used=("rngs",))
    kwargs = {**options.common_kwargs(), "inplace": True}
    base = DynamicHypernetizedNNX if options.dynamic else HypernetizedNNX
    if options.dynamic:
        kwargs.update(options.dynamic_kwargs())

    def __init__(self, *args: Any, **init_kwargs: Any) -> None:
        rngs = options.rngs if options.rngs is not None else init_kwargs.get("rngs")
        if rngs is None:
            raise OptionTypeError(
                f"{cls.__name__} is hypernetized: pass `rngs=nnx.Rngs(...)` to its constructor or to `hypernetize`."
            )
        base.__init__(self, cls(*args, **init_kwargs), rngs=rngs, **kwargs)

    namespace = {"__init__": __init__, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                 "__doc__": cls.__doc__, "__wrapped__": cls}  # fmt: skip
    return type(cls.__name__, (base,), namespace)
