"""Batched forwards of common layers whose parameters differ per sample.

Each function takes the module, its parameters (a tensor with a leading batch dimension
``B`` where generated per sample, else the module's own tensor) and the module's call
arguments, and computes what running the module with weight set ``i`` on sample ``i``
gives, for all ``i`` at once (batched matmuls, grouped convolutions). BatchNorm is
conditional batch norm: statistics over the whole batch, per-sample scale and shift.

    >>> import torch
    >>> from torch import nn
    >>> layer = nn.Linear(3, 2)
    >>> w, b = torch.randn(4, 2, 3), torch.randn(4, 2)
    >>> x = torch.randn(4, 3)
    >>> out = linear(layer, {"weight": w, "bias": b}, {"weight", "bias"}, x)
    >>> torch.allclose(out[1], x[1] @ w[1].T + b[1])
    True
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Set

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConditionError

__all__ = ["LAYERS", "batch_norm", "conv", "embedding", "group_norm", "layer_norm", "linear"]

Params = Dict[str, Any]


def _batched_like(value: torch.Tensor, x: torch.Tensor, ndim: int, where: str, channel_dim: int = -1) -> torch.Tensor:
    """View a per-sample ``(B, C)`` (or shared ``(C,)``) vector to broadcast over ``ndim`` dims
    (checking that the input ``x`` has ``B`` samples)."""
    shape = [1] * ndim
    if value.dim() == 2:
        check_batch(x, value.shape[0], where)
        shape[0] = value.shape[0]
    shape[channel_dim] = value.shape[-1]
    return value.reshape(shape)


def check_batch(x: torch.Tensor, batch: int, where: str, dim: int = 0) -> None:
    if x.dim() <= dim or x.shape[dim] != batch:
        got = tuple(x.shape)
        raise ConditionError(
            f"per-sample weights for {batch} samples, but {where} received an input of shape {got} "
            f"(its batch dimension {dim} must be {batch}: one sample per weight set)."
        )


def linear(module: nn.Linear, params: Params, batched: Set[str], x: torch.Tensor) -> torch.Tensor:
    """``y_i = x_i W_i^T + b_i`` with one ``bmm`` (``x`` of shape ``(B, ..., in)``); a
    low-rank layer adds ``(x_i B_i^T) A_i^T`` without building ``W0 + A_i B_i``."""
    if "lora_A" in batched:
        return _linear(module, params, batched, x) + _low_rank_delta(params["lora_A"], params["lora_B"], x)
    return _linear(module, params, batched, x)


def _low_rank_delta(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(x_i @ B_i^T) @ A_i^T`` per sample, with two ``bmm``; ``A``: ``(B, out, r)``, ``B``: ``(B, r, in)``."""
    batch = a.shape[0]
    check_batch(x, batch, "nn.Linear")
    flat = x.reshape(batch, -1, x.shape[-1])
    return torch.bmm(torch.bmm(flat, b.transpose(1, 2)), a.transpose(1, 2)).reshape(*x.shape[:-1], -1)


def _linear(module: nn.Linear, params: Params, batched: Set[str], x: torch.Tensor) -> torch.Tensor:
    weight, bias = params["weight"], params.get("bias")
    if "weight" not in batched:
        out = F.linear(x, weight)
    else:
        batch = weight.shape[0]
        check_batch(x, batch, "nn.Linear")
        flat = x.reshape(batch, -1, x.shape[-1])
        if bias is not None and "bias" in batched:
            out = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2)).reshape(*x.shape[:-1], -1)
            return out
        out = torch.bmm(flat, weight.transpose(1, 2)).reshape(*x.shape[:-1], -1)
    if bias is not None:
        out = out + (_batched_like(bias, x, out.dim(), "nn.Linear") if "bias" in batched else bias)
    return out


_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def conv(module: nn.Module, params: Params, batched: Set[str], x: torch.Tensor) -> torch.Tensor:
    """Per-sample convolution kernels as one grouped convolution over ``(1, B * C, ...)``."""
    weight, bias = params["weight"], params.get("bias")
    function = _CONV[type(module)]
    if module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding: Any = 0
    else:
        padding = module.padding
    if "weight" not in batched:
        out = function(x, weight, None, module.stride, padding, module.dilation, module.groups)
    else:
        batch = weight.shape[0]
        check_batch(x, batch, type(module).__name__)
        merged = x.reshape(1, batch * x.shape[1], *x.shape[2:])
        kernels = weight.reshape(batch * weight.shape[1], *weight.shape[2:])
        # the bias goes into the grouped convolution too: one (B * C_out,) vector
        merged_bias = None if bias is None else (bias.reshape(-1) if bias.dim() == 2 else bias.repeat(batch))
        out = function(merged, kernels, merged_bias, module.stride, padding, module.dilation, module.groups * batch)
        return out.reshape(batch, weight.shape[1], *out.shape[2:])
    if bias is not None:
        out = out + _batched_like(bias, x, out.dim(), type(module).__name__, channel_dim=1)
    return out


def batch_norm(module: nn.modules.batchnorm._BatchNorm, params: Params, batched: Set[str], x: torch.Tensor) -> torch.Tensor:
    """Conditional batch norm: the module's own normalisation and running-stat update
    (once, over the whole batch), then per-sample scale and shift."""
    factor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        factor = 1.0 / float(module.num_batches_tracked) if module.momentum is None else module.momentum
    use_batch_stats = module.training or (module.running_mean is None and module.running_var is None)
    keep_running = not module.training or module.track_running_stats
    normalized = F.batch_norm(
        x,
        module.running_mean if keep_running else None,
        module.running_var if keep_running else None,
        None,
        None,
        use_batch_stats,
        factor,
        module.eps,
    )
    for name, combine in (("weight", torch.mul), ("bias", torch.add)):
        value = params.get(name)
        if value is not None:
            normalized = combine(normalized, _batched_like(value, x, x.dim(), type(module).__name__, channel_dim=1))
    return normalized


def layer_norm(module: nn.LayerNorm, params: Params, batched: Set[str], x: torch.Tensor) -> torch.Tensor:
    """Normalise, then per-sample elementwise affine over ``normalized_shape``."""
    out = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    dims = len(module.normalized_shape)
    for name, combine in (("weight", torch.mul), ("bias", torch.add)):
        value = params.get(name)
        if value is None:
            continue
        if name in batched:
            check_batch(x, value.shape[0], "nn.LayerNorm")
            value = value.reshape(value.shape[0], *([1] * (x.dim() - 1 - dims)), *value.shape[1:])
        out = combine(out, value)
    return out


def group_norm(module: nn.GroupNorm, params: Params, batched: Set[str], x: torch.Tensor) -> torch.Tensor:
    """Group-normalise, then per-sample per-channel affine."""
    out = F.group_norm(x, module.num_groups, None, None, module.eps)
    for name, combine in (("weight", torch.mul), ("bias", torch.add)):
        value = params.get(name)
        if value is not None:
            out = combine(out, _batched_like(value, x, x.dim(), "nn.GroupNorm", channel_dim=1))
    return out


def embedding(module: nn.Embedding, params: Params, batched: Set[str], indices: torch.Tensor) -> torch.Tensor:
    """Look sample ``i``'s indices up in sample ``i``'s table."""
    if module.max_norm is not None:
        raise ConditionError("per-sample weights for nn.Embedding with `max_norm` (which renormalises the table in place) are not supported.")
    table = params["weight"]
    if "weight" not in batched:
        return F.embedding(indices, table, module.padding_idx)
    check_batch(indices, table.shape[0], "nn.Embedding")
    rows = torch.arange(table.shape[0], device=indices.device).reshape(-1, *([1] * (indices.dim() - 1)))
    out = table[rows, indices]
    if module.padding_idx is not None:  # like F.embedding: no gradient into the padding row
        out = torch.where((indices == module.padding_idx).unsqueeze(-1), out.detach(), out)
    return out


#: exact module types with a batched implementation here (subclasses may override
#: ``forward``, so they fall back to ``torch.func.vmap``).
LAYERS: Dict[type, Callable[..., Any]] = {
    nn.Linear: linear,
    nn.Conv1d: conv,
    nn.Conv2d: conv,
    nn.Conv3d: conv,
    nn.BatchNorm1d: batch_norm,
    nn.BatchNorm2d: batch_norm,
    nn.BatchNorm3d: batch_norm,
    nn.LayerNorm: layer_norm,
    nn.GroupNorm: group_norm,
    nn.Embedding: embedding,
}
