"""Every error hypernn raises on purpose.

Each class subclasses :class:`HypernnError` *and* the built-in exception a user would
expect, so both ``except HypernnError`` and ``except ValueError`` work::

    >>> from hypernn.errors import SelectionError
    >>> issubclass(SelectionError, ValueError)
    True
"""

from __future__ import annotations

__all__ = [
    "CheckpointMismatchError",
    "ConditionError",
    "ConditionTypeError",
    "ConfigurationError",
    "GeneratedParamsError",
    "GeneratedParamsTypeError",
    "GeneratorOutputError",
    "HypernnError",
    "MissingDependencyError",
    "OptionTypeError",
    "ReservedArgumentError",
    "SelectionError",
    "UnsupportedModelError",
]


class HypernnError(Exception):
    """Base class of every error raised by hypernn on purpose."""


class ConfigurationError(HypernnError, ValueError):
    """An option has a valid type but an invalid value (e.g. ``num_embeddings=0``)."""


class OptionTypeError(HypernnError, TypeError):
    """An option has the wrong type (e.g. ``embedding_dim=2.5``)."""


class SelectionError(HypernnError, ValueError):
    """``targets=`` / ``exclude=`` selected nothing, named something unknown, or chose
    something that cannot be generated (a buffer, an integer parameter)."""


class UnsupportedModelError(HypernnError, TypeError):
    """The object to hypernetize is not a model of a supported framework."""


class ReservedArgumentError(HypernnError, TypeError):
    """The model's ``forward`` takes an argument name the hypernetwork reserves."""


class GeneratorOutputError(HypernnError, ValueError):
    """The weight generator (or embedding module) produced a tensor of the wrong shape."""


class GeneratedParamsError(HypernnError, ValueError):
    """``generated_params`` has the wrong size or number of dimensions."""


class GeneratedParamsTypeError(HypernnError, TypeError):
    """``generated_params`` is not a floating-point tensor."""


class MissingDependencyError(HypernnError, ImportError):
    """A framework needed for this call is not installed."""


class CheckpointMismatchError(HypernnError, RuntimeError):
    """A checkpoint does not fit the hypernetwork (other model or selection); nothing was loaded.

    A ``RuntimeError`` like torch's own ``load_state_dict`` errors.
    """


class ConditionError(HypernnError, ValueError):
    """A dynamic hypernetwork's condition (or the per-sample batch it implies) does not fit."""


class ConditionTypeError(HypernnError, TypeError):
    """A dynamic hypernetwork's condition has the wrong type or dtype."""
