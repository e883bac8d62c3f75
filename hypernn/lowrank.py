"""Low-rank delta mode (``low_rank=r``): generate factors, not weights.

For each selected weight ``W0`` of a supported layer (torch ``Linear``/``Conv1d``/
``Conv2d``/``Conv3d``, flax ``Dense``/``Conv``, NNX ``Linear``/``Conv``) the hypernetwork
generates ``A`` of shape ``(out, r)`` and ``B`` of shape ``(r, in)`` and the layer runs
with ``W0 + low_rank_scale * A @ B``, ``W0`` frozen. ``in`` counts everything but the
output dimension: ``in_channels/groups * prod(kernel_size)`` for a convolution. torch
weights are ``(out, in, *window)``; flax kernels ``(*window, in, out)``, whose delta is
``(A @ B).T`` laid out the same way.

Linear layers called through their own forward run it factored,
``x @ W0.T + scale * (x @ B.T) @ A.T``, never building the full matrix (torch:
:mod:`hypernn.transform.torch.low_rank`; flax ``Dense`` and NNX ``Linear``:
:mod:`hypernn.transform.jaxlowrank`); convolutions and tied weights run the merged weight.

The factors are laid out like any generated tensors (named ``<weight>.A`` and
``<weight>.B``), so chunk layouts, init and warm start apply to them unchanged.

    >>> from hypernn.specs import ParamSpec
    >>> Linear = type("Linear", (), {})
    >>> spec = ParamSpec("fc.weight", (64, 32), "float32", ((("", object), ("fc", Linear)),))
    >>> (weight,) = plan_low_rank([spec], rank=4, convention="torch", model_name="MLP")
    >>> weight.factor_shapes, weight.factor_size, weight.size
    (((64, 4), (4, 32)), 384, 2048)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Tuple

from .default_inits import TargetInit
from .errors import SelectionError
from .selection import Selection, Selector, select
from .specs import ParamSpec

__all__ = ["SUPPORTED_LAYERS", "LowRankWeight", "factor_entries", "factor_inits", "is_supported", "plan_low_rank",
           "select_low_rank"]

#: the layers whose weights low-rank mode supports, by framework convention
SUPPORTED_LAYERS = {
    "torch": "torch nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d (and subclasses): their `weight`",
    "flax": "flax linen Dense, Conv and NNX Linear, Conv (and subclasses): their `kernel`",
}


def _owner_names(spec: ParamSpec) -> Tuple[str, ...]:
    chain = spec.module_chains[0] if spec.module_chains else ()
    cls = chain[-1][1] if chain else object
    return tuple(c.__name__ for c in getattr(cls, "__mro__", (cls,)))


def is_supported(spec: ParamSpec, convention: str) -> bool:
    """Whether ``spec`` is the weight of a layer that low-rank mode supports."""
    owner, attribute = set(_owner_names(spec)), spec.name.rpartition(".")[2]
    if len(spec.shape) < 2:
        return False
    if convention == "torch":
        return attribute == "weight" and bool({"Linear", "_ConvNd"} & owner) and "_ConvTransposeNd" not in owner
    return attribute == "kernel" and bool({"Dense", "Conv", "Linear"} & owner)


@dataclasses.dataclass(frozen=True)
class LowRankWeight:
    """One weight generated as a low-rank delta: ``W0 + scale * A @ B``."""

    name: str
    shape: Tuple[int, ...]
    rank: int
    convention: str
    aliases: Tuple[str, ...] = ()

    @property
    def out_features(self) -> int:
        return self.shape[0] if self.convention == "torch" else self.shape[-1]

    @property
    def in_features(self) -> int:
        return math.prod(self.shape) // self.out_features

    @property
    def factor_names(self) -> Tuple[str, str]:
        return f"{self.name}.A", f"{self.name}.B"

    @property
    def factor_shapes(self) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        return (self.out_features, self.rank), (self.rank, self.in_features)

    @property
    def size(self) -> int:
        """Values of the full weight."""
        return math.prod(self.shape)

    @property
    def factor_size(self) -> int:
        """Generated values: ``r * (out + in)``."""
        return self.rank * (self.out_features + self.in_features)


def _describe(spec: ParamSpec) -> str:
    owner = _owner_names(spec)[0]
    return f"{spec.name!r} ({owner})"


def plan_low_rank(specs: Sequence[ParamSpec], *, rank: int, convention: str, model_name: str) -> Tuple[LowRankWeight, ...]:
    """The low-rank weights for a selection; every selected tensor must be supported.

    Raises:
        SelectionError: a selected tensor is not the weight of a supported layer.
    """
    unsupported = [_describe(s) for s in specs if not is_supported(s, convention)]
    if unsupported:
        shown = ", ".join(unsupported[:12]) + (f", ... ({len(unsupported) - 12} more)" if len(unsupported) > 12 else "")
        raise SelectionError(
            f"`low_rank`={rank} generates low-rank deltas for the weights of {SUPPORTED_LAYERS[convention]} only; "
            f"the selection from {model_name} also holds {shown}. Narrow `targets` to those weights (e.g. add "
            f"`exclude=['bias']`), or drop `low_rank` to generate them in full."
        )
    return tuple(LowRankWeight(s.name, tuple(s.shape), rank, convention, s.aliases) for s in specs)


def factor_entries(weights: Sequence[LowRankWeight]) -> Tuple[Tuple[str, Tuple[int, int]], ...]:
    """``(name, shape)`` of every factor, ``A`` then ``B`` per weight, for :func:`plan_layout`."""
    return tuple(entry for w in weights for entry in zip(w.factor_names, w.factor_shapes))


def factor_inits(weight: LowRankWeight, target: TargetInit) -> Tuple[TargetInit, TargetInit]:
    """Hyperfan targets of ``(A, B)``: ``B`` at the weight's own init std ``s_W`` and ``A`` at
    ``1/sqrt(r)``, so ``A @ B`` has std ``s_W`` (the delta is on the layer's own scale)."""
    std = target.std if target.std > 0 else 1.0 / math.sqrt(weight.in_features)
    a = TargetInit(1.0 / math.sqrt(weight.rank), 0.0, f"low-rank A, 1/sqrt(rank={weight.rank})")
    b = TargetInit(std, 0.0, f"low-rank B, std of {weight.name}'s init")
    return a, b


def select_low_rank(
    specs: Sequence[ParamSpec], *, targets: Selector, exclude: Selector, rank: int, convention: str, model_name: str
) -> Tuple[Selection, Tuple[LowRankWeight, ...]]:
    """Select as usual, then plan the low-rank weights. Without ``targets`` every weight
    of a supported layer is adapted; an explicit selection must hold only such weights."""
    selection = select(specs, targets=targets, exclude=exclude, model_name=model_name)
    if targets is None:
        chosen = tuple(s for s in selection.chosen if is_supported(s, convention))
        if not chosen:
            raise SelectionError(
                f"`low_rank`={rank}: {model_name} has no weights of {SUPPORTED_LAYERS[convention]} to adapt "
                f"(after `exclude`); drop `low_rank` to generate its parameters in full."
            )
        selection = Selection(chosen, model_name)
    return selection, plan_low_rank(selection.chosen, rank=rank, convention=convention, model_name=model_name)
