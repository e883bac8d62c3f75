"""The torch backend of :func:`hypernn.hypernetize` (imports torch).

    >>> import torch.nn as nn
    >>> hnet = hypernetize(nn.Linear(3, 2), options=HypernetizeOptions(embedding_dim=2, num_embeddings=2))
    >>> type(hnet).__name__
    'HypernetizedModule'
"""

from __future__ import annotations

from typing import Any, List

from torch import nn

from ...export import dispatch_method
from ...options import INIT_OPTIONS, HypernetizeOptions
from ...specs import ParamSpec
from .decorate import decorate as decorate
from .dynamic import DynamicHypernetizedModule as DynamicHypernetizedModule
from .factories import MLPGenerator as MLPGenerator
from .factories import default_embedding as default_embedding
from .factories import default_generator as default_generator
from .introspect import param_specs as _param_specs
from .module import HypernetizedModule as HypernetizedModule


def hypernetize(model: nn.Module, *, options: HypernetizeOptions) -> HypernetizedModule:
    """Build a :class:`HypernetizedModule` for ``model`` from validated ``options``."""
    options.reject_unused("torch", used=INIT_OPTIONS)
    if options.dynamic:
        return DynamicHypernetizedModule(model, **options.common_kwargs(), **options.dynamic_kwargs(),
                                         **options.start_kwargs())  # fmt: skip
    return HypernetizedModule(model, **options.common_kwargs(), **options.start_kwargs())


def _unwrapped(hnet: Any) -> Any:
    """The hypernetwork inside ``torch.compile`` (``_orig_mod``) or DDP/FSDP (``module``) wrappers."""
    while not isinstance(hnet, HypernetizedModule) and isinstance(getattr(hnet, "_orig_mod", getattr(hnet, "module", None)), nn.Module):
        hnet = getattr(hnet, "_orig_mod", None) or hnet.module
    return hnet


def materialize(hnet: nn.Module, variables: Any = None, *, condition: Any = None, **generate_params_kwargs: Any) -> nn.Module:
    """See :func:`hypernn.materialize`: a plain model of the original class."""
    return dispatch_method(_unwrapped(hnet), "materialize", static_type=HypernetizedModule,
                           dynamic_type=DynamicHypernetizedModule, framework="torch", given=hnet, variables=variables,
                           condition=condition, generate_params_kwargs=generate_params_kwargs)  # fmt: skip


def summary(hnet: nn.Module, variables: Any = None, *, condition: Any = None, **generate_params_kwargs: Any) -> Any:
    """See :func:`hypernn.summary`: ``hnet.summary()``."""
    return dispatch_method(_unwrapped(hnet), "summary", static_type=HypernetizedModule,
                           dynamic_type=DynamicHypernetizedModule, framework="torch", given=hnet, variables=variables,
                           condition=condition, generate_params_kwargs=generate_params_kwargs)  # fmt: skip


def param_specs(model: nn.Module) -> List[ParamSpec]:
    """Every parameter and buffer of ``model`` (see :mod:`hypernn.specs`)."""
    return _param_specs(model)
