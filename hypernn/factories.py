"""Framework-neutral factory specs: one spelling that every backend turns into its module.

    >>> spec = mlp_generator((32,), activation="tanh")
    >>> spec
    MLPGeneratorSpec(hidden_dims=(32,), activation='tanh')

Pass it as ``generator_factory=`` to :func:`hypernn.hypernetize` for a torch, linen or
NNX model; the backend builds its own MLP (torch ``nn.Linear`` layers, linen ``nn.Dense``,
NNX ``nnx.Linear``) with these hidden widths and activation between them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence, Tuple

from .errors import ConfigurationError

__all__ = ["ACTIVATIONS", "MLPGeneratorSpec", "mlp_generator", "resolve_factory"]

ACTIVATIONS = ("relu", "tanh", "gelu", "silu", "sigmoid", "identity")


@dataclasses.dataclass(frozen=True)
class MLPGeneratorSpec:
    """An MLP weight generator: hidden widths and the activation between layers."""

    hidden_dims: Tuple[int, ...] = (64,)
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigurationError(f"`activation` must be one of {ACTIVATIONS}; got {self.activation!r}.")
        if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in self.hidden_dims):
            raise ConfigurationError(f"`hidden_dims` must be positive ints; got {self.hidden_dims!r}.")


def mlp_generator(hidden_dims: Sequence[int] = (64,), activation: str = "relu") -> MLPGeneratorSpec:
    """A ``generator_factory`` for any backend: an MLP with these hidden layers."""
    return MLPGeneratorSpec(tuple(hidden_dims), activation)


def resolve_factory(factory: Any, builders: dict) -> Callable[..., Any]:
    """Turn a neutral spec into the backend's factory (``builders[type(spec)](spec)``);
    other callables pass through unchanged."""
    builder = builders.get(type(factory))
    return builder(factory) if builder is not None else factory
