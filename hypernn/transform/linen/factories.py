"""Default embedding and weight-generator factories for the flax linen backend.

    >>> from hypernn import mlp_generator
    >>> resolve(mlp_generator((16,)))(4, 10).features
    (16, 10)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax

from ...factories import MLPGeneratorSpec, resolve_factory
from ..jaxutil import JAX_ACTIVATIONS

__all__ = ["MLPGenerator", "default_embedding", "default_generator", "resolve"]


def default_embedding(num_embeddings: int, embedding_dim: int) -> nn.Module:
    """``nn.Embed(num_embeddings, embedding_dim)``."""
    return nn.Embed(num_embeddings, embedding_dim)


def default_generator(embedding_dim: int, chunk_dim: int) -> nn.Module:
    """``nn.Dense(chunk_dim)`` (its input width is inferred)."""
    return nn.Dense(chunk_dim)


class MLPGenerator(nn.Module):
    """A multi-layer perceptron; ``features`` are the widths of its layers, output last."""

    features: Sequence[int]
    activation: Callable = jax.nn.relu

    @nn.compact
    def __call__(self, embedding):
        for width in self.features[:-1]:
            embedding = self.activation(nn.Dense(width)(embedding))
        return nn.Dense(self.features[-1])(embedding)


def _from_spec(spec: MLPGeneratorSpec) -> Callable[[int, int], nn.Module]:
    return functools.partial(_mlp, hidden_dims=spec.hidden_dims, activation=JAX_ACTIVATIONS[spec.activation])


def resolve(factory: Any) -> Any:
    """The linen factory for a neutral spec (:mod:`hypernn.factories`); callables unchanged."""
    return resolve_factory(factory, {MLPGeneratorSpec: _from_spec})


def _mlp(embedding_dim: int, chunk_dim: int, *, hidden_dims: Sequence[int], activation: Callable) -> nn.Module:
    return MLPGenerator(features=(*hidden_dims, chunk_dim), activation=activation)
