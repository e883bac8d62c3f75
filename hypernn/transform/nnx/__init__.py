"""The flax NNX backend of :func:`hypernn.hypernetize` (imports jax and flax).

    >>> from flax import nnx
    >>> options = HypernetizeOptions(embedding_dim=2, num_embeddings=2, rngs=nnx.Rngs(0))
    >>> type(hypernetize(nnx.Linear(3, 2, rngs=nnx.Rngs(1)), options=options)).__name__
    'HypernetizedNNX'
"""

from __future__ import annotations

from typing import List

from flax import nnx

from ...options import HypernetizeOptions
from ...specs import ParamSpec
from .decorate import decorate as decorate
from .dynamic import DynamicHypernetizedNNX as DynamicHypernetizedNNX
from .factories import MLPGenerator as MLPGenerator
from .factories import default_embedding as default_embedding
from .factories import default_generator as default_generator
from .introspect import GeneratedSlot as GeneratedSlot
from .introspect import param_specs as _param_specs
from .module import HypernetizedNNX as HypernetizedNNX


def hypernetize(model: nnx.Module, *, options: HypernetizeOptions) -> HypernetizedNNX:
    """Build a :class:`HypernetizedNNX` (a :class:`DynamicHypernetizedNNX` with
    ``condition_dim``/``num_conditions``) for ``model`` from validated ``options``."""
    options.reject_unused("flax NNX", used=("rngs",))
    if options.dynamic:
        return DynamicHypernetizedNNX(model, **options.common_kwargs(), **options.dynamic_kwargs(), rngs=options.rngs)
    return HypernetizedNNX(model, **options.common_kwargs(), rngs=options.rngs)


def param_specs(model: nnx.Module) -> List[ParamSpec]:
    """Every variable of ``model`` (see :mod:`hypernn.specs`)."""
    return _param_specs(model)
