"""Default embedding and weight-generator factories for the torch backend.

A factory is any callable; the hypernetwork calls
``embedding_factory(num_embeddings, embedding_dim)`` and
``generator_factory(embedding_dim, chunk_dim)`` and expects ``nn.Module`` back. The
generator maps ``(num_embeddings, embedding_dim)`` to ``(num_embeddings, chunk_dim)``.

    >>> from hypernn import mlp_generator
    >>> factory = resolve(mlp_generator(hidden_dims=(16,)))
    >>> factory(4, 10)
    MLPGenerator(
      (layers): Sequential(
        (0): Linear(in_features=4, out_features=16, bias=True)
        (1): ReLU()
        (2): Linear(in_features=16, out_features=10, bias=True)
      )
    )
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

from torch import nn

from ...factories import MLPGeneratorSpec, resolve_factory

__all__ = ["MLPGenerator", "default_embedding", "default_generator", "resolve"]


def default_embedding(num_embeddings: int, embedding_dim: int) -> nn.Module:
    """hyper-nn's embedding: ``nn.Embedding(num_embeddings, embedding_dim)``, N(0, 1) init."""
    return nn.Embedding(num_embeddings, embedding_dim)


def default_generator(embedding_dim: int, chunk_dim: int) -> nn.Module:
    """hyper-nn's generator: ``nn.Linear(embedding_dim, chunk_dim)``."""
    return nn.Linear(embedding_dim, chunk_dim)


class MLPGenerator(nn.Module):
    """A multi-layer perceptron from chunk embeddings to chunks of generated weights.

    Args:
        embedding_dim: input width.
        chunk_dim: output width (values per generated chunk).
        hidden_dims: widths of the hidden layers.
        activation: module class placed after every hidden layer.
    """

    def __init__(
        self,
        embedding_dim: int,
        chunk_dim: int,
        hidden_dims: Sequence[int] = (64,),
        activation: Callable[[], nn.Module] = nn.ReLU,
    ):
        super().__init__()
        layers, width = [], embedding_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), activation()]
            width = hidden
        layers.append(nn.Linear(width, chunk_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, embedding):
        return self.layers(embedding)


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
                "identity": nn.Identity}  # fmt: skip


def _from_spec(spec: MLPGeneratorSpec) -> Callable[[int, int], nn.Module]:
    return functools.partial(MLPGenerator, hidden_dims=spec.hidden_dims, activation=_ACTIVATIONS[spec.activation])


def resolve(factory: Any) -> Any:
    """The torch factory for a neutral spec (:mod:`hypernn.factories`); callables unchanged."""
    return resolve_factory(factory, {MLPGeneratorSpec: _from_spec})
