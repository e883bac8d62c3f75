"""flax pieces shared by the JAX examples (imports jax and flax; torch examples never import it)."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as linen
import jax
import numpy as np
from flax import nnx

__all__ = ["count_values", "scaled_dense_generator", "scaled_nnx_generator"]


def _kernel_std(init_std: float, embedding_dim: int, embedding_std: float | None) -> float:
    """The generator kernel's std that gives generated values of std ``init_std``.

    flax's ``Embed`` starts its rows with variance ``1 / embedding_dim``
    (``embedding_std=None``); other embeddings pass their own std.
    """
    spread = embedding_std * embedding_dim**0.5 if embedding_std is not None else 1.0
    return init_std / spread


def scaled_dense_generator(init_std: float, embedding_std: float | None = None) -> Callable[[int, int], linen.Module]:
    """A linen ``generator_factory``: ``Dense(chunk_dim)`` whose outputs start with std
    ``init_std`` (zero bias), instead of the default generator's larger values."""

    def factory(embedding_dim: int, chunk_dim: int) -> linen.Module:
        std = _kernel_std(init_std, embedding_dim, embedding_std)
        return linen.Dense(chunk_dim, kernel_init=linen.initializers.normal(std))

    return factory


def scaled_nnx_generator(init_std: float, embedding_std: float | None = None) -> Callable[..., nnx.Module]:
    """An NNX ``generator_factory``: ``nnx.Linear`` whose outputs start with std ``init_std``."""

    def factory(embedding_dim: int, chunk_dim: int, *, rngs: nnx.Rngs) -> nnx.Module:
        std = _kernel_std(init_std, embedding_dim, embedding_std)
        return nnx.Linear(embedding_dim, chunk_dim, kernel_init=nnx.initializers.normal(std), rngs=rngs)

    return factory


def count_values(tree: Any) -> int:
    """Number of values in a pytree of arrays (linen params, an ``nnx.State``)."""
    return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(tree))
