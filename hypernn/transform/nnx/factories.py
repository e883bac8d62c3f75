"""Default embedding and weight-generator factories for the NNX backend.

NNX factories take ``rngs=`` besides the sizes:
``embedding_factory(num_embeddings, embedding_dim, rngs=rngs)`` and
``generator_factory(embedding_dim, chunk_dim, rngs=rngs)``.

    >>> from flax import nnx

    >>> from hypernn import mlp_generator
    >>> resolve(mlp_generator((16,)))(4, 10, rngs=nnx.Rngs(0)).layers[0].in_features
    4
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
from flax import nnx

from ...factories import MLPGeneratorSpec, resolve_factory
from ..jaxutil import JAX_ACTIVATIONS

__all__ = ["MLPGenerator", "default_embedding", "default_generator", "resolve"]


def default_embedding(num_embeddings: int, embedding_dim: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """``nnx.Embed(num_embeddings, embedding_dim)``."""
    return nnx.Embed(num_embeddings, embedding_dim, rngs=rngs)


def default_generator(embedding_dim: int, chunk_dim: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """``nnx.Linear(embedding_dim, chunk_dim)``."""
    return nnx.Linear(embedding_dim, chunk_dim, rngs=rngs)


class MLPGenerator(nnx.Module):
    """A multi-layer perceptron from chunk embeddings to chunks of generated weights."""

    def __init__(
        self,
        embedding_dim: int,
        chunk_dim: int,
        hidden_dims: Sequence[int] = (64,),
        activation: Callable = jax.nn.relu,
        *,
        rngs: nnx.Rngs,
    ):
        widths = [embedding_dim, *hidden_dims, chunk_dim]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.activation = activation

    def __call__(self, embedding):
        for layer in self.layers[:-1]:
            embedding = self.activation(layer(embedding))
        return self.layers[-1](embedding)


def _from_spec(spec: MLPGeneratorSpec) -> Callable[..., nnx.Module]:
    return functools.partial(MLPGenerator, hidden_dims=spec.hidden_dims, activation=JAX_ACTIVATIONS[spec.activation])


def resolve(factory: Any) -> Any:
    """The NNX factory for a neutral spec (:mod:`hypernn.factories`); callables unchanged."""
    return resolve_factory(factory, {MLPGeneratorSpec: _from_spec})
