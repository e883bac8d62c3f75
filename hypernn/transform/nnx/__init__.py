"""The flax NNX backend of :func:`hypernn.hypernetize` (imports jax and flax).

    >>> from flax import nnx
    >>> options = HypernetizeOptions(embedding_dim=2, num_embeddings=2, rngs=nnx.Rngs(0))
    >>> type(hypernetize(nnx.Linear(3, 2, rngs=nnx.Rngs(1)), options=options)).__name__
    'HypernetizedNNX'
"""

from __future__ import annotations

from typing import Any, List

from flax import nnx

from ...export import dispatch_method
from ...options import INIT_OPTIONS, HypernetizeOptions
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
    options.reject_unused("flax NNX", used=("rngs",) + INIT_OPTIONS)
    if options.dynamic:
        return DynamicHypernetizedNNX(model, **options.common_kwargs(), **options.dynamic_kwargs(),
                                      **options.start_kwargs(), rngs=options.rngs)  # fmt: skip
    return HypernetizedNNX(model, **options.common_kwargs(), **options.start_kwargs(), rngs=options.rngs)


def materialize(hnet: nnx.Module, variables: Any = None, *, condition: Any = None, **generate_params_kwargs: Any) -> nnx.Module:
    """See :func:`hypernn.materialize`: a plain NNX module of the original class."""
    return dispatch_method(hnet, "materialize", static_type=HypernetizedNNX, dynamic_type=DynamicHypernetizedNNX,
                           framework="flax NNX", given=hnet, variables=variables, condition=condition,
                           generate_params_kwargs=generate_params_kwargs)  # fmt: skip


def summary(hnet: nnx.Module, variables: Any = None, *, condition: Any = None, **generate_params_kwargs: Any) -> Any:
    """See :func:`hypernn.summary`: ``hnet.summary()``."""
    return dispatch_method(hnet, "summary", static_type=HypernetizedNNX, dynamic_type=DynamicHypernetizedNNX,
                           framework="flax NNX", given=hnet, variables=variables, condition=condition,
                           generate_params_kwargs=generate_params_kwargs)  # fmt: skip


def param_specs(model: nnx.Module) -> List[ParamSpec]:
    """Every variable of ``model`` (see :mod:`hypernn.specs`)."""
    return _param_specs(model)
