"""``nn.MultiheadAttention`` with per-sample projection weights, as batched matmuls.

Follows ``F.multi_head_attention_forward``: in-projection (packed or separate q/k/v
weights), boolean or additive ``attn_mask`` (shared, 2-D) and ``key_padding_mask`` (per
sample), softmax attention with dropout in training, the out-projection, and the same
outputs (``(attn_output, weights)``; weights averaged over heads unless
``average_attn_weights=False``, ``None`` unless ``need_weights``).

    >>> import torch
    >>> from torch import nn
    >>> mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    >>> params = {k: v.detach().expand(3, *v.shape) for k, v in mha.named_parameters()}
    >>> x = torch.randn(3, 5, 8)
    >>> out, weights = multihead_attention(mha, params, set(params), x, x, x)
    >>> torch.allclose(out, mha(x, x, x)[0], atol=1e-6)
    True
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConditionError
from .per_sample_layers import check_batch

__all__ = ["multihead_attention"]


def _project(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``x @ W^T + b`` with ``W`` shared ``(out, in)`` or per sample ``(B, out, in)``."""
    out = torch.bmm(x, weight.transpose(1, 2)) if weight.dim() == 3 else F.linear(x, weight)
    if bias is not None:
        out = out + (bias.unsqueeze(1) if bias.dim() == 2 else bias)
    return out


def _in_projections(module: nn.MultiheadAttention, params: Dict[str, Any], q, k, v):
    width = module.embed_dim
    bias = params.get("in_proj_bias")
    biases = [None if bias is None else bias.narrow(-1, i * width, width) for i in range(3)]
    if module._qkv_same_embed_dim:
        weight = params["in_proj_weight"]
        weights = [weight.narrow(-2, i * width, width) for i in range(3)]
    else:
        weights = [params["q_proj_weight"], params["k_proj_weight"], params["v_proj_weight"]]
    return [_project(x, w, b) for x, w, b in zip((q, k, v), weights, biases)]


def _float_mask(mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def multihead_attention(
    module: nn.MultiheadAttention,
    params: Dict[str, Any],
    batched: Set[str],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor] = None,
    need_weights: bool = True,
    attn_mask: Optional[torch.Tensor] = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    # ``bias_k``/``bias_v`` may be generated (then the module's own attribute is None)
    if params.get("bias_k") is not None or params.get("bias_v") is not None or module.add_zero_attn:
        raise ConditionError("per-sample weights for nn.MultiheadAttention with add_bias_kv or add_zero_attn are not supported.")
    if query.dim() != 3:
        raise ConditionError(f"per-sample weights for nn.MultiheadAttention need batched 3-D inputs; got {tuple(query.shape)}.")
    if attn_mask is not None and attn_mask.dim() != 2:
        raise ConditionError("per-sample weights for nn.MultiheadAttention take a 2-D `attn_mask` only (shared by all samples).")
    if not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    batch, length, _ = query.shape
    check_batch(query, next(params[n] for n in batched).shape[0], "nn.MultiheadAttention")
    heads, head_dim = module.num_heads, module.head_dim
    q, k, v = _in_projections(module, params, query, key, value)
    q, k, v = (t.reshape(batch, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    mask = _float_mask(attn_mask, q.dtype)
    padding = _float_mask(key_padding_mask, q.dtype)
    if padding is not None:
        padding = padding.reshape(batch, 1, 1, -1)
        mask = padding if mask is None else mask + padding
    dropout = module.dropout if module.training else 0.0
    if need_weights:
        scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        if dropout > 0:
            weights = F.dropout(weights, dropout, training=True)
        attended = weights @ v
    else:
        causal = is_causal and mask is None
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        weights = None
    attended = attended.transpose(1, 2).reshape(batch, length, module.embed_dim)
    out = _project(attended, params["out_proj.weight"], params.get("out_proj.bias"))
    if not module.batch_first:
        out = out.transpose(0, 1)
    if weights is not None and average_attn_weights:
        weights = weights.mean(dim=1)
    return out, weights
