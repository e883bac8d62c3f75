"""Linen modules for the conditioning specs of :mod:`hypernn.conditioning`.

A conditioning module maps the chunk embeddings ``(N, D)`` and a condition ``(..., C)``
to per-sample chunk embeddings ``(..., N, output_dim)`` and an ``aux`` dict.

    >>> import jax, jax.numpy as jnp
    >>> film = FiLM(condition_dim=3, num_embeddings=4, embedding_dim=5)
    >>> (embeddings, aux), _ = film.init_with_output(jax.random.key(0), jnp.ones((4, 5)), jnp.ones((2, 3)))
    >>> embeddings.shape, film.output_dim
    ((2, 4, 5), 5)
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ...conditioning import ConcatConditioning, FiLMConditioning, RecurrentConditioning

__all__ = ["Concat", "FiLM", "Recurrent", "resolve"]

Output = Tuple[jax.Array, Dict[str, jax.Array]]


class FiLM(nn.Module):
    """``E * (1 + scale(c)) + shift(c)``; zero-initialised, so it starts as the identity."""

    condition_dim: int
    num_embeddings: int
    embedding_dim: int

    @property
    def output_dim(self) -> int:
        return self.embedding_dim

    @nn.compact
    def __call__(self, embedding: jax.Array, condition: jax.Array) -> Output:
        to_scale_shift = nn.Dense(2 * self.embedding_dim, kernel_init=nn.initializers.zeros, name="to_scale_shift")
        scale, shift = jnp.split(to_scale_shift(condition)[..., None, :], 2, axis=-1)
        return embedding * (1 + scale) + shift, {}


class Concat(nn.Module):
    """``[E, proj(c)]`` for every chunk; the generator sees ``embedding_dim + projection_dim``."""

    condition_dim: int
    num_embeddings: int
    embedding_dim: int
    projection_dim: Optional[int] = None

    @property
    def output_dim(self) -> int:
        return self.embedding_dim + (self.projection_dim or self.embedding_dim)

    @nn.compact
    def __call__(self, embedding: jax.Array, condition: jax.Array) -> Output:
        width = self.projection_dim or self.embedding_dim
        # zero-initialised (like FiLM): starts condition-independent
        projected = nn.Dense(width, kernel_init=nn.initializers.zeros, name="projection")(condition)[..., None, :]
        lead = projected.shape[:-2]
        tiled = jnp.broadcast_to(projected, (*lead, embedding.shape[0], width))
        return jnp.concatenate([jnp.broadcast_to(embedding, (*lead, *embedding.shape)), tiled], axis=-1), {}


class Recurrent(nn.Module):
    """hyper-nn's dynamic embedding: ``h = tanh(W_i c + W_h h + b)`` (one unit per chunk)
    gates ``E``. The new state is returned in ``aux["hidden_state"]``; pass it back with
    ``generate_params_kwargs={"hidden_state": h}`` for the next step."""

    condition_dim: int
    num_embeddings: int
    embedding_dim: int

    @property
    def output_dim(self) -> int:
        return self.embedding_dim

    def init_hidden(self, batch_shape: Tuple[int, ...] = ()) -> jax.Array:
        """A zero state: ``(*batch_shape, num_embeddings)``."""
        return jnp.zeros((*batch_shape, self.num_embeddings))

    @nn.compact
    def __call__(self, embedding: jax.Array, condition: jax.Array, hidden_state: Optional[jax.Array] = None) -> Output:
        if hidden_state is None:
            hidden_state = self.init_hidden(tuple(condition.shape[:-1]))
        state = jnp.tanh(nn.Dense(self.num_embeddings, name="input")(condition)
                         + nn.Dense(self.num_embeddings, use_bias=False, name="hidden")(hidden_state))  # fmt: skip
        return embedding * state[..., None], {"hidden_state": state}


def resolve(factory: Any) -> Callable[..., nn.Module]:
    """The linen conditioning factory for a spec (default FiLM); callables unchanged."""
    if factory is None or isinstance(factory, FiLMConditioning):
        return FiLM
    if isinstance(factory, ConcatConditioning):
        return lambda c, n, d: Concat(c, n, d, factory.projection_dim)
    if isinstance(factory, RecurrentConditioning):
        return Recurrent
    return factory
