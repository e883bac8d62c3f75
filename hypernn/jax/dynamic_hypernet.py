"""hyper-nn's dynamic JAX hypernetwork: weights generated from the input, now per sample.

An RNN cell over the input ``x`` keeps one hidden unit per chunk; its state gates learned
chunk embeddings, which a dense generator turns into the target's weights. Where hyper-nn
took one sample per call, a batch ``x`` of shape ``(B, input_dim)`` now generates one
weight set per sample and applies the target to sample ``i`` with weight set ``i`` (under
``jax.vmap``: hypernn's linen dynamic backend); a batch of one behaves as in hyper-nn (one
weight vector). hyper-nn's README imports ``JaxHyperNetwork`` from this module too.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> target = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(4)])
    >>> hnet = JaxDynamicHyperNetwork.from_target(target, input_dim=8, embedding_dim=4, num_embeddings=8,
    ...                                           inputs=jnp.zeros((1, 8)))
    >>> x = jnp.ones((5, 8))
    >>> variables = hnet.init(jax.random.key(0), x)
    >>> output, generated_params, aux = hnet.apply(variables, x, has_aux=True)
    >>> output.shape, generated_params.shape, aux["hidden_state"].shape
    ((5, 4), (5, 216), (5, 8))
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..errors import ConditionError, ConditionTypeError
from ..transform.jaxutil import is_floating
from ..transform.linen.dynamic import LinenDynamicHypernetwork
from ..transform.linen.module import LinenHypernetwork
from .hypernet import JaxHyperNetwork as JaxHyperNetwork

__all__ = ["JaxDynamicEmbeddingModule", "JaxDynamicHyperNetwork", "JaxHyperNetwork", "RNNCell"]


class RNNCell(nn.Module):
    """hyper-nn's cell: ``tanh(Dense(hidden_dim)(concat(x, h)))``."""

    hidden_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, hidden_state: jax.Array) -> jax.Array:
        return jnp.tanh(nn.Dense(self.hidden_dim)(jnp.concatenate([x, hidden_state], axis=-1)))


class JaxDynamicEmbeddingModule(nn.Module):
    """hyper-nn's dynamic embedding: ``h = RNNCell(x, h)``, then ``embedding * h`` per chunk.

    ``__call__(x, hidden_state=None)`` takes ``x`` of shape ``(B, input_dim)`` and a state
    of shape ``(1, num_embeddings)`` (shared) or ``(B, num_embeddings)``; it returns
    ``(embedding, h)``: for ``B == 1`` hyper-nn's ``(num_embeddings, embedding_dim)``
    embedding and ``(1, num_embeddings)`` state, else ``(B, num_embeddings, embedding_dim)``
    and ``(B, num_embeddings)``.

        >>> module = JaxDynamicEmbeddingModule(input_dim=3, embedding_dim=2, num_embeddings=4)
        >>> (embedding, h), _ = module.init_with_output(jax.random.key(0), jnp.ones((6, 3)))
        >>> embedding.shape, h.shape
        ((6, 4, 2), (6, 4))
    """

    input_dim: int
    embedding_dim: int
    num_embeddings: int

    def setup(self) -> None:
        self.embedding = nn.Embed(self.num_embeddings, self.embedding_dim, embedding_init=jax.nn.initializers.uniform())
        self.rnn_cell = RNNCell(self.num_embeddings)

    def init_hidden(self) -> jax.Array:
        """hyper-nn's initial state: zeros of shape ``(1, num_embeddings)``."""
        return jnp.zeros((1, self.num_embeddings))

    def _check(self, x: Any, hidden_state: Any) -> None:
        if not hasattr(x, "shape") or not is_floating(x.dtype):
            given = getattr(x, "dtype", type(x).__name__)
            raise ConditionTypeError(f"`x` must be a floating-point array of shape (batch, input_dim={self.input_dim}); got {given}.")
        if x.ndim != 2 or (self.input_dim and x.shape[-1] != self.input_dim):
            raise ConditionError(
                f"`x` must have shape (batch, input_dim={self.input_dim}), one row per sample; got {tuple(x.shape)}."
            )
        shape = tuple(getattr(hidden_state, "shape", ()))
        if len(shape) != 2 or shape[0] not in (1, x.shape[0]) or shape[1] != self.num_embeddings:
            raise ConditionError(
                f"`hidden_state` must have shape (1, {self.num_embeddings}) or ({x.shape[0]}, {self.num_embeddings}) "
                f"for x of shape {tuple(x.shape)}; got {shape}."
            )

    def __call__(self, x: jax.Array, hidden_state: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
        if hidden_state is None:
            hidden_state = self.init_hidden()
        self._check(x, hidden_state)
        hidden = self.rnn_cell(x, jnp.broadcast_to(hidden_state, (x.shape[0], self.num_embeddings)))
        table = self.embedding(jnp.arange(self.num_embeddings))
        if x.shape[0] == 1:
            return table * hidden.reshape(self.num_embeddings, 1), hidden
        return table * hidden[..., None], hidden


class JaxDynamicHyperNetwork(JaxHyperNetwork, LinenDynamicHypernetwork):
    """hyper-nn's dynamic linen hypernetwork: ``generate_params(x, hidden_state=None)``.

    ``hnet.apply(variables, x)`` conditions on the target's own input (``forward`` passes
    it on); pass another input, or the previous step's state, with
    ``generate_params_kwargs=dict(x=..., hidden_state=aux["hidden_state"])``. ``input_dim``
    (a field, passed to :meth:`from_target` by keyword) is the width of ``x``; the other
    fields are those of :class:`~hypernn.jax.hypernet.JaxHyperNetwork`. A ``(B, n)`` batch
    of generated vectors applies the target to sample ``i`` with vector ``i``.
    """

    input_dim: int = 0

    def _own_keywords(self) -> Tuple[str, ...]:
        # the condition is `x` (a generate_params argument), not a `condition=` keyword
        return LinenHypernetwork._own_keywords(self)

    def _probe_arguments(self) -> Tuple[Any, ...]:
        return (jnp.zeros((1, self.input_dim)),)

    def _probe(self) -> None:
        if self.input_dim:  # hyper-nn allowed leaving it 0 (the cell infers it): nothing to probe with then
            super()._probe()

    def make_embedding_module(self) -> nn.Module:
        """``JaxDynamicEmbeddingModule(input_dim, embedding_dim, num_embeddings)``."""
        return JaxDynamicEmbeddingModule(self.input_dim, self.embedding_dim, self.num_embeddings)

    def generate_params(self, x: jax.Array, hidden_state: Optional[jax.Array] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
        """``(params, {"embedding": ..., "hidden_state": h})`` from ``x`` of shape
        ``(B, input_dim)``: ``params`` is one vector for ``B == 1`` (hyper-nn), else
        ``(B, num_embeddings * weight_chunk_dim)``."""
        embedding, hidden = self.embedding_module(x, hidden_state)
        chunks = self.weight_generator(embedding)
        lead = tuple(chunks.shape[:-2]) if hasattr(chunks, "shape") else ()
        self._check_chunks(chunks, lead)
        return chunks.reshape(*lead, -1), {"embedding": embedding, "hidden_state": hidden}

    def assert_parameter_shapes(self, generated_params: Any) -> None:
        """Like the static check; a ``(B, n)`` batch of vectors is valid too."""
        self._check_vector(generated_params, max_dims=2)
