"""The flax linen backend of :func:`hypernn.hypernetize` (imports jax and flax).

    >>> import jax.numpy as jnp, flax.linen as nn
    >>> options = HypernetizeOptions(embedding_dim=2, num_embeddings=2, example_inputs=(jnp.ones((1, 3)),))
    >>> hypernetize(nn.Dense(2), options=options).layout.num_params
    8
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

import flax.linen as nn

from ...errors import OptionTypeError
from ...options import INIT_OPTIONS, HypernetizeOptions
from ...specs import ParamSpec
from .decorate import decorate as decorate
from .export import materialize as materialize
from .export import summary as summary
from .dynamic import DynamicHypernetizedLinen as DynamicHypernetizedLinen
from .dynamic import LinenDynamicHypernetwork as LinenDynamicHypernetwork
from .dynamic import check_dynamic_call_signature
from .factories import MLPGenerator as MLPGenerator
from .factories import default_embedding as default_embedding
from .factories import default_generator as default_generator
from .introspect import trace_structure
from .module import HypernetizedLinen as HypernetizedLinen
from .module import LinenHypernetwork as LinenHypernetwork
from .module import Opaque, check_model, make_plan

_USED = ("example_inputs", "init_kwargs", "variables")


def hypernetize(model: nn.Module, *, options: HypernetizeOptions) -> HypernetizedLinen:
    """Build a :class:`HypernetizedLinen` (a :class:`DynamicHypernetizedLinen` with
    ``condition_dim``/``num_conditions``) for ``model``; plan now if the structure is known."""
    options.reject_unused("flax linen", used=_USED + INIT_OPTIONS)
    check_model(model)
    if options.dynamic:
        check_dynamic_call_signature(type(model), options.condition_keyword)
    kind = DynamicHypernetizedLinen if options.dynamic else HypernetizedLinen
    hnet = kind(target=Opaque(model), options=Opaque(options))
    if options.example_inputs is not None or options.variables is not None:
        hnet = hnet.clone(hypernn_plan=make_plan(model, options))
        hnet._probe()
    return hnet


def param_specs(
    model: nn.Module,
    *,
    example_inputs: Optional[Sequence[Any]] = None,
    init_kwargs: Optional[Mapping[str, Any]] = None,
    variables: Any = None,
) -> List[ParamSpec]:
    """Every variable of ``model`` (see :mod:`hypernn.specs`), traced as for hypernetize."""
    if example_inputs is None and variables is None:
        raise OptionTypeError(
            f"selecting from a flax linen module needs its variable structure: pass `example_inputs=(x, ...)` "
            f"(and `init_kwargs=` such as `{{'train': False}}`) or `variables=` to select({type(model).__name__}(), ...)."
        )
    return list(trace_structure(model, example_inputs=example_inputs, init_kwargs=init_kwargs, variables=variables).specs)
