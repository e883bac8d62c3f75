"""Low-rank deltas on torch layers: ``W0 + scale * A @ B`` with ``W0`` frozen.

The target network keeps each adapted weight ``W0`` where it was, as a frozen parameter
(``requires_grad=False``, like PEFT's base weights: it follows ``.to()``, is saved in the
``state_dict``, DDP does not broadcast it and FSDP shards it). Per call the generated
factors become what the layer runs with:

* an ``nn.Linear`` called through its own ``forward`` (not tied, not inside a
  ``MultiheadAttention``, which reads its ``out_proj`` weight directly) never builds the
  full matrix: it receives ``lora_A = scale * A`` and ``lora_B = B`` and a forward hook adds
  ``(x @ lora_B.T) @ lora_A.T`` to ``x @ W0.T + b`` (like PEFT, code that reads such a
  layer's ``.weight`` directly sees ``W0``);
* every other adapted weight (convolutions, tied or attention weights) is passed as the
  full ``W0 + scale * (A @ B).reshape(W0.shape)``.

    >>> import torch
    >>> from torch import nn
    >>> layer = nn.Linear(6, 4)
    >>> add_low_rank_slots(layer)
    >>> A, B, x = torch.randn(4, 2), torch.randn(2, 6), torch.randn(3, 6)
    >>> out = torch.func.functional_call(layer, {"lora_A": A, "lora_B": B}, (x,))
    >>> torch.allclose(out, x @ (layer.weight + A @ B).T + layer.bias, atol=1e-6)
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...lowrank import LowRankWeight

__all__ = ["LowRankDelta", "Adapted", "add_low_rank_slots", "compose", "merged_weight", "remove_low_rank_slots"]

FACTORS = ("lora_A", "lora_B")


class LowRankDelta:
    """Forward hook of a low-rank ``nn.Linear``: adds ``(x @ lora_B.T) @ lora_A.T`` when the
    call provides the factors (a plain call of the layer leaves its output as is)."""

    def __call__(self, module: nn.Module, args: Tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        a, b = module._parameters.get("lora_A"), module._parameters.get("lora_B")
        if a is None or b is None:
            return output
        return output + F.linear(F.linear(args[0], b), a)


def add_low_rank_slots(layer: nn.Linear) -> None:
    """Give ``layer`` absent ``lora_A``/``lora_B`` parameters and the delta hook."""
    for name in FACTORS:
        layer._parameters[name] = None
    layer.register_forward_hook(LowRankDelta())


def remove_low_rank_slots(layer: nn.Module) -> None:
    """Undo :func:`add_low_rank_slots` (for materialized copies)."""
    for name in FACTORS:
        layer._parameters.pop(name, None)
    for key, hook in list(layer._forward_hooks.items()):
        if isinstance(hook, LowRankDelta):
            del layer._forward_hooks[key]


@dataclasses.dataclass(frozen=True)
class Adapted:
    """One low-rank weight of the target and how it runs."""

    weight: LowRankWeight
    owner: str
    #: run through the hook with the factors (an ``nn.Linear`` called normally)
    factored: bool


def merged_weight(w0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``W0 + scale * (A @ B)``, shaped like ``W0``; leading (per-sample) dims kept."""
    lead = tuple(a.shape[:-2])
    return w0 + scale * torch.matmul(a, b).reshape(*lead, *w0.shape)


def compose(
    target: nn.Module, tensors: Mapping[str, torch.Tensor], adapted: Tuple[Adapted, ...], scale: float
) -> Dict[str, torch.Tensor]:
    """Turn generated factors into what the target runs with (see the module docstring)."""
    out = dict(tensors)
    for item in adapted:
        name_a, name_b = item.weight.factor_names
        a, b = out.pop(name_a), out.pop(name_b)
        if item.factored:
            prefix = f"{item.owner}." if item.owner else ""
            out[prefix + "lora_A"], out[prefix + "lora_B"] = scale * a, b
            continue
        weight = merged_weight(target.get_parameter(item.weight.name), a, b, scale)
        for name in (item.weight.name,) + item.weight.aliases:
            out[name] = weight
    return out
