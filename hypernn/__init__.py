"""hypernn: turn any PyTorch or Flax model into a hypernetwork with one call.

``import hypernn`` imports no framework; backends load when a model of theirs arrives.

    >>> import sys, hypernn
    >>> hypernn.hypernetize(embedding_dim=4, num_embeddings=2)
    Hypernetize(embedding_dim=4, num_embeddings=2)
"""

from __future__ import annotations

from typing import Any

from . import conditioning as conditioning
from . import errors as errors
from .errors import (
    CheckpointMismatchError as CheckpointMismatchError,
    ConditionError as ConditionError,
    ConditionTypeError as ConditionTypeError,
    ConfigurationError as ConfigurationError,
    GeneratedParamsError as GeneratedParamsError,
    GeneratedParamsTypeError as GeneratedParamsTypeError,
    GeneratorOutputError as GeneratorOutputError,
    HypernnError as HypernnError,
    MissingDependencyError as MissingDependencyError,
    OptionTypeError as OptionTypeError,
    ReservedArgumentError as ReservedArgumentError,
    SelectionError as SelectionError,
    UnsupportedModelError as UnsupportedModelError,
)
from .factories import MLPGeneratorSpec as MLPGeneratorSpec, mlp_generator as mlp_generator
from .layout import Layout as Layout, plan_layout as plan_layout
from .options import HypernetizeOptions as HypernetizeOptions
from .selection import Selection as Selection
from .transform import Hypernetize as Hypernetize, hypernetize as hypernetize, select as select

__version__ = "0.3.0.dev0"

#: names served lazily from a backend, so ``import hypernn`` stays framework-free.
_LAZY = {
    "HypernetizedModule": "torch",
    "DynamicHypernetizedModule": "torch",
    "HypernetizedNNX": "nnx",
    "DynamicHypernetizedNNX": "nnx",
    "HypernetizedLinen": "linen",
    "DynamicHypernetizedLinen": "linen",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from .transform.backends import load_backend

        return getattr(load_backend(_LAZY[name]), name)
    raise AttributeError(f"module 'hypernn' has no attribute {name!r}")


__all__ = sorted(
    [
        "CheckpointMismatchError", "ConditionError", "ConditionTypeError", "ConfigurationError", "GeneratedParamsError", "GeneratedParamsTypeError", "GeneratorOutputError",
        "Hypernetize", "HypernetizeOptions", "HypernnError", "Layout", "MLPGeneratorSpec", "MissingDependencyError",
        "OptionTypeError", "ReservedArgumentError", "Selection", "SelectionError", "UnsupportedModelError",
        "conditioning", "errors", "hypernetize", "mlp_generator", "plan_layout", "select", *_LAZY,
    ]
)  # fmt: skip
