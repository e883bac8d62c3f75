"""Torch modules for the conditioning specs of :mod:`hypernn.conditioning`.

A conditioning module maps the chunk embeddings ``(N, D)`` and a condition ``(..., C)``
to per-sample chunk embeddings ``(..., N, output_dim)`` and an ``aux`` dict.

    >>> import torch
    >>> film = FiLM(condition_dim=3, num_embeddings=4, embedding_dim=5)
    >>> embeddings, aux = film(torch.randn(4, 5), torch.randn(2, 3))
    >>> embeddings.shape, film.output_dim
    (torch.Size([2, 4, 5]), 5)
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from ...conditioning import ConcatConditioning, FiLMConditioning, RecurrentConditioning

__all__ = ["Concat", "FiLM", "Recurrent", "resolve"]

Output = Tuple[torch.Tensor, Dict[str, torch.Tensor]]


class FiLM(nn.Module):
    """``E * (1 + scale(c)) + shift(c)``; zero-initialised, so it starts as the identity."""

    def __init__(self, condition_dim: int, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.to_scale_shift = nn.Linear(condition_dim, 2 * embedding_dim)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)
        self.output_dim = embedding_dim

    def forward(self, embedding: torch.Tensor, condition: torch.Tensor) -> Output:
        scale, shift = self.to_scale_shift(condition).unsqueeze(-2).chunk(2, dim=-1)
        return embedding * (1 + scale) + shift, {}


class Concat(nn.Module):
    """``[E, proj(c)]`` for every chunk; the generator sees ``embedding_dim + projection_dim``.
    ``proj`` is zero-initialised (like FiLM), so it starts condition-independent."""

    def __init__(self, condition_dim: int, num_embeddings: int, embedding_dim: int, projection_dim: Optional[int] = None):
        super().__init__()
        width = projection_dim or embedding_dim
        self.projection = nn.Linear(condition_dim, width)
        nn.init.zeros_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)
        self.output_dim = embedding_dim + width

    def forward(self, embedding: torch.Tensor, condition: torch.Tensor) -> Output:
        projected = self.projection(condition).unsqueeze(-2)
        lead = projected.shape[:-2]
        tiled = projected.expand(*lead, embedding.shape[0], projected.shape[-1])
        return torch.cat([embedding.expand(*lead, *embedding.shape), tiled], dim=-1), {}


class Recurrent(nn.Module):
    """hyper-nn's dynamic embedding: ``h = RNNCell(c, h)`` (one unit per chunk) gates ``E``.

    The new state is returned in ``aux["hidden_state"]``; pass it back with
    ``generate_params_kwargs={"hidden_state": h}`` for the next step.
    """

    def __init__(self, condition_dim: int, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.rnn_cell = nn.RNNCell(condition_dim, num_embeddings)
        self.output_dim = embedding_dim

    def init_hidden(self, batch_shape: Tuple[int, ...] = ()) -> torch.Tensor:
        """A zero state: ``(*batch_shape, num_embeddings)``."""
        weight = self.rnn_cell.weight_hh
        return weight.new_zeros(*batch_shape, self.rnn_cell.hidden_size)

    def forward(self, embedding: torch.Tensor, condition: torch.Tensor, hidden_state: Optional[torch.Tensor] = None) -> Output:
        if hidden_state is None:
            hidden_state = self.init_hidden(tuple(condition.shape[:-1]))
        state = self.rnn_cell(condition, hidden_state)
        return embedding * state.unsqueeze(-1), {"hidden_state": state}


def resolve(factory: Any) -> Callable[..., nn.Module]:
    """The torch conditioning factory for a spec (default FiLM); callables unchanged."""
    if factory is None or isinstance(factory, FiLMConditioning):
        return FiLM
    if isinstance(factory, ConcatConditioning):
        return lambda c, n, d: Concat(c, n, d, factory.projection_dim)
    if isinstance(factory, RecurrentConditioning):
        return Recurrent
    return factory
