"""How a condition enters a dynamic hypernetwork: framework-neutral specs.

A dynamic hypernetwork (``hypernetize(..., condition_dim=C)``) turns its ``N`` learned
chunk embeddings ``E`` (``N x D``) and a condition ``c`` into per-sample chunk
embeddings, which the weight generator maps to per-sample weights:

=========================  ==================================================================
:func:`film` (default)     modulation: ``E * (1 + scale(c)) + shift(c)``, with ``scale``
                           and ``shift`` linear in ``c`` (FiLM; zero-initialised, so a
                           fresh hypernetwork starts condition-independent)
:func:`concat`             concatenation: ``[E, proj(c)]`` per chunk (the generator's
                           input width becomes ``D + projection_dim``; ``proj`` is
                           zero-initialised, so it also starts condition-independent)
:func:`recurrent`          hyper-nn's dynamic hypernetwork: an RNN cell over ``c`` whose
                           state ``h`` (one unit per chunk) gates the embeddings,
                           ``E * h[:, None]``; the state travels through ``aux``
                           (``generate_params_kwargs={"hidden_state": h}``)
=========================  ==================================================================

Pass a spec (or a backend module factory) as ``condition_factory=``.

    >>> film()
    FiLMConditioning()
    >>> concat(projection_dim=8).projection_dim
    8
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from .errors import ConfigurationError

__all__ = ["ConcatConditioning", "FiLMConditioning", "RecurrentConditioning", "concat", "film", "recurrent"]


@dataclasses.dataclass(frozen=True)
class FiLMConditioning:
    """Modulate chunk embeddings by the condition (the default)."""


@dataclasses.dataclass(frozen=True)
class ConcatConditioning:
    """Concatenate a projection of the condition to every chunk embedding."""

    projection_dim: Optional[int] = None  # default: embedding_dim

    def __post_init__(self) -> None:
        if self.projection_dim is not None and (not isinstance(self.projection_dim, int) or self.projection_dim <= 0):
            raise ConfigurationError(f"`projection_dim` must be a positive int or None; got {self.projection_dim!r}.")


@dataclasses.dataclass(frozen=True)
class RecurrentConditioning:
    """hyper-nn's recurrent gating: an RNN cell's state (one unit per chunk) gates embeddings."""


def film() -> FiLMConditioning:
    """The default conditioning: ``E * (1 + scale(c)) + shift(c)``."""
    return FiLMConditioning()


def concat(projection_dim: Optional[int] = None) -> ConcatConditioning:
    """Concatenate ``proj(c)`` (``projection_dim`` wide) to every chunk embedding."""
    return ConcatConditioning(projection_dim)


def recurrent() -> RecurrentConditioning:
    """hyper-nn's recurrent conditioning (RNN cell state gates the chunk embeddings)."""
    return RecurrentConditioning()


CONDITIONING_SPECS = (FiLMConditioning, ConcatConditioning, RecurrentConditioning)
