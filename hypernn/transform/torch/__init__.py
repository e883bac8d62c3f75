"""The torch backend of :func:`hypernn.hypernetize` (imports torch).

    >>> import torch.nn as nn
    >>> hnet = hypernetize(nn.Linear(3, 2), options=HypernetizeOptions(embedding_dim=2, num_embeddings=2))
    >>> type(hnet).__name__
    'HypernetizedModule'
"""

from __future__ import annotations

from typing import List

from torch import nn

from ...options import HypernetizeOptions
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
    options.reject_unused("torch")
    if options.dynamic:
        return DynamicHypernetizedModule(model, **options.common_kwargs(), **options.dynamic_kwargs())
    return HypernetizedModule(model, **options.common_kwargs())


def param_specs(model: nn.Module) -> List[ParamSpec]:
    """Every parameter and buffer of ``model`` (see :mod:`hypernn.specs`)."""
    return _param_specs(model)
