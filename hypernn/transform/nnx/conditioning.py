"""NNX modules for the conditioning specs of :mod:`hypernn.conditioning`.

A conditioning module maps the chunk embeddings ``(N, D)`` and a condition ``(..., C)``
to per-sample chunk embeddings ``(..., N, output_dim)`` and an ``aux`` dict. NNX
conditioning factories take ``rngs=``: ``(condition_dim, num_embeddings, embedding_dim, *, rngs)``.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> film = FiLM(3, 4, 5, rngs=nnx.Rngs(0))
    >>> embeddings, aux = film(jnp.ones((4, 5)), jnp.ones((2, 3)))
    >>> embeddings.shape, film.output_dim
    ((2, 4, 5), 5)
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from ...conditioning import ConcatConditioning, FiLMConditioning, RecurrentConditioning

__all__ = ["Concat", "FiLM", "Recurrent", "resolve"]

Output = Tuple[jax.Array, Dict[str, jax.Array]]


class FiLM(nnx.Module):
    """``E * (1 + scale(c)) + shift(c)``; zero-initialised, so it starts as the identity."""

    def __init__(self, condition_dim: int, num_embeddings: int, embedding_dim: int, *, rngs: nnx.Rngs):
        self.to_scale_shift = nnx.Linear(condition_dim, 2 * embedding_dim, kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.output_dim = embedding_dim

    def __call__(self, embedding: jax.Array, condition: jax.Array) -> Output:
        scale, shift = jnp.split(self.to_scale_shift(condition)[..., None, :], 2, axis=-1)
        return embedding * (1 + scale) + shift, {}


class Concat(nnx.Module):
    """``[E, proj(c)]`` for every chunk; the generator sees ``embedding_dim + projection_dim``.
    ``proj`` is zero-initialised (like FiLM), so it starts condition-independent."""

    def __init__(self, condition_dim: int, num_embeddings: int, embedding_dim: int,
                 projection_dim: Optional[int] = None, *, rngs: nnx.Rngs):  # fmt: skip
        width = projection_dim or embedding_dim
        self.projection = nnx.Linear(condition_dim, width, kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.output_dim = embedding_dim + width

    def __call__(self, embedding: jax.Array, condition: jax.Array) -> Output:
        projected = self.projection(condition)[..., None, :]
        lead = projected.shape[:-2]
        tiled = jnp.broadcast_to(projected, (*lead, embedding.shape[0], projected.shape[-1]))
        return jnp.concatenate([jnp.broadcast_to(embedding, (*lead, *embedding.shape)), tiled], axis=-1), {}


class Recurrent(nnx.Module):
    """hyper-nn's dynamic embedding: ``h = tanh(W_i c + W_h h + b)`` (one unit per chunk)
    gates ``E``. The new state is returned in ``aux["hidden_state"]``; pass it back with
    ``generate_params_kwargs={"hidden_state": h}`` for the next step."""

    def __init__(self, condition_dim: int, num_embeddings: int, embedding_dim: int, *, rngs: nnx.Rngs):
        self.input = nnx.Linear(condition_dim, num_embeddings, rngs=rngs)
        self.hidden = nnx.Linear(num_embeddings, num_embeddings, use_bias=False, rngs=rngs)
        self.num_embeddings = num_embeddings
        self.output_dim = embedding_dim

    def init_hidden(self, batch_shape: Tuple[int, ...] = ()) -> jax.Array:
        """A zero state: ``(*batch_shape, num_embeddings)``."""
        return jnp.zeros((*batch_shape, self.num_embeddings))

    def __call__(self, embedding: jax.Array, condition: jax.Array, hidden_state: Optional[jax.Array] = None) -> Output:
        if hidden_state is None:
            hidden_state = self.init_hidden(tuple(condition.shape[:-1]))
        state = jnp.tanh(self.input(condition) + self.hidden(hidden_state))
        return embedding * state[..., None], {"hidden_state": state}


def resolve(factory: Any) -> Callable[..., nnx.Module]:
    """The NNX conditioning factory for a spec (default FiLM); callables unchanged."""
    if factory is None or isinstance(factory, FiLMConditioning):
        return FiLM
    if isinstance(factory, ConcatConditioning):
        return lambda c, n, d, *, rngs: Concat(c, n, d, factory.projection_dim, rngs=rngs)
    if isinstance(factory, RecurrentConditioning):
        return Recurrent
    return factory
