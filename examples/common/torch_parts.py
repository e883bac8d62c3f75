"""torch pieces shared by the torch examples (imports torch: JAX examples never import it)."""

from __future__ import annotations

from typing import Callable

from torch import nn

__all__ = ["count_trainable", "scaled_linear_generator"]


def scaled_linear_generator(init_std: float) -> Callable[[int, int], nn.Module]:
    """A ``generator_factory``: ``nn.Linear(embedding_dim, chunk_dim)`` whose outputs start
    with standard deviation ``init_std`` when its inputs have unit variance.

    Why: hypernn's default generator (hyper-nn's plain ``nn.Linear`` on N(0, 1) embeddings)
    starts the generated weights at a standard deviation of about 0.58, far above what
    the target layers are usually initialised with. Weights drawn from
    N(0, init_std**2 / embedding_dim) and a zero bias put them at ``init_std`` instead.
    """

    def factory(embedding_dim: int, chunk_dim: int) -> nn.Module:
        layer = nn.Linear(embedding_dim, chunk_dim)
        nn.init.normal_(layer.weight, std=init_std / embedding_dim**0.5)
        nn.init.zeros_(layer.bias)
        return layer

    return factory


def count_trainable(module: nn.Module) -> int:
    """Trainable values of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
