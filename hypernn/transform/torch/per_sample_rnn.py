"""Recurrent layers (``nn.LSTM``/``GRU``/``RNN`` and their cells) with per-sample weights.

``torch.func.vmap`` cannot batch torch's fused recurrent kernels, so these run the
recurrence themselves with batched matmuls: the input projection of every time step in
one ``bmm``, then one ``bmm`` per step for the hidden state. Gate order and equations
follow torch's (LSTM: i, f, g, o; GRU: r, z, n).

    >>> import torch
    >>> from torch import nn
    >>> lstm = nn.LSTM(3, 4, batch_first=True)
    >>> params = {k: v.detach().expand(2, *v.shape) for k, v in lstm.named_parameters()}
    >>> x = torch.randn(2, 5, 3)
    >>> out, _ = recurrent(lstm, params, set(params), x)
    >>> torch.allclose(out, lstm(x)[0], atol=1e-6)
    True
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConditionError
from .per_sample_layers import check_batch

__all__ = ["CELLS", "RECURRENT", "cell", "recurrent"]

Params = Dict[str, Any]


def _per_sample(value: Optional[torch.Tensor], batch: int, batched: bool) -> Optional[torch.Tensor]:
    if value is None:
        return None
    return value if batched else value.unsqueeze(0).expand(batch, *value.shape)


def _step(kind: str, gates_x: torch.Tensor, h: torch.Tensor, c: Optional[torch.Tensor], w_hh, b_hh, nonlinearity: str):
    """One time step from the precomputed input projection ``gates_x`` (``(B, G*H)``)."""
    gates_h = torch.bmm(h.unsqueeze(1), w_hh.transpose(1, 2)).squeeze(1)
    if b_hh is not None:
        gates_h = gates_h + b_hh
    if kind == "LSTM":
        i, f, g, o = (gates_x + gates_h).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if kind == "GRU":
        x_r, x_z, x_n = gates_x.chunk(3, dim=-1)
        h_r, h_z, h_n = gates_h.chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h, None
    activation = torch.tanh if nonlinearity == "tanh" else torch.relu
    return activation(gates_x + gates_h), None


def _kind(module: nn.Module) -> str:
    for kind, types in (("LSTM", (nn.LSTM, nn.LSTMCell)), ("GRU", (nn.GRU, nn.GRUCell))):
        if isinstance(module, types):
            return kind
    return "RNN"


def _weights(params: Params, batched: Set[str], batch: int, suffix: str):
    return [_per_sample(params.get(f"{name}{suffix}"), batch, f"{name}{suffix}" in batched)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]  # fmt: skip


def _run_direction(kind, module, params, batched, suffix, x, h, c):
    """Run one layer in one direction over ``x`` (``(B, L, I)``); returns outputs and state."""
    batch = x.shape[0]
    w_ih, w_hh, b_ih, b_hh = _weights(params, batched, batch, suffix)
    projected = torch.bmm(x, w_ih.transpose(1, 2))
    if b_ih is not None:
        projected = projected + b_ih.unsqueeze(1)
    outputs = []
    for t in range(x.shape[1]):
        h, c = _step(kind, projected[:, t], h, c, w_hh, b_hh, getattr(module, "nonlinearity", "tanh"))
        outputs.append(h)
    return torch.stack(outputs, dim=1), h, c


def recurrent(module: nn.RNNBase, params: Params, batched: Set[str], x: Any, hx: Any = None) -> Tuple[torch.Tensor, Any]:
    """``nn.LSTM``/``GRU``/``RNN`` forward with per-sample weights (batched input only)."""
    if isinstance(x, nn.utils.rnn.PackedSequence):
        raise ConditionError("per-sample weights for recurrent layers do not support PackedSequence inputs; pad the batch.")
    if getattr(module, "proj_size", 0):
        raise ConditionError("per-sample weights for nn.LSTM with `proj_size` are not supported.")
    kind = _kind(module)
    batch = next(params[n] for n in batched).shape[0]
    if x.dim() != 3:
        raise ConditionError(f"per-sample weights for nn.{kind} need a batched 3-D input; got shape {tuple(x.shape)}.")
    sequence = x if module.batch_first else x.transpose(0, 1)
    check_batch(sequence, batch, f"nn.{kind}")
    directions = 2 if module.bidirectional else 1
    hidden = module.hidden_size
    if hx is None:
        zeros = sequence.new_zeros(module.num_layers * directions, batch, hidden)
        hx = (zeros, zeros) if kind == "LSTM" else zeros
    h0, c0 = hx if kind == "LSTM" else (hx, None)
    last_h, last_c, layer_input = [], [], sequence
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            inputs = layer_input.flip(1) if direction else layer_input
            out, h, c = _run_direction(kind, module, params, batched, suffix, inputs, h0[index],
                                       None if c0 is None else c0[index])  # fmt: skip
            outputs.append(out.flip(1) if direction else out)
            last_h.append(h)
            last_c.append(c)
        layer_input = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
        if module.dropout and module.training and layer < module.num_layers - 1:
            layer_input = F.dropout(layer_input, module.dropout, training=True)
    output = layer_input if module.batch_first else layer_input.transpose(0, 1)
    h_n = torch.stack(last_h)
    return output, ((h_n, torch.stack(last_c)) if kind == "LSTM" else h_n)


def cell(module: nn.RNNCellBase, params: Params, batched: Set[str], x: torch.Tensor, hx: Any = None) -> Any:
    """``nn.LSTMCell``/``GRUCell``/``RNNCell`` forward with per-sample weights."""
    kind = _kind(module)
    batch = next(params[n] for n in batched).shape[0]
    check_batch(x, batch, f"nn.{kind}Cell")
    if hx is None:
        zeros = x.new_zeros(batch, module.hidden_size)
        hx = (zeros, zeros) if kind == "LSTM" else zeros
    h, c = hx if kind == "LSTM" else (hx, None)
    w_ih, w_hh, b_ih, b_hh = _weights(params, batched, batch, "")
    projected = torch.bmm(x.unsqueeze(1), w_ih.transpose(1, 2)).squeeze(1)
    if b_ih is not None:
        projected = projected + b_ih
    h, c = _step(kind, projected, h, c, w_hh, b_hh, getattr(module, "nonlinearity", "tanh"))
    return (h, c) if kind == "LSTM" else h


RECURRENT = {nn.LSTM: recurrent, nn.GRU: recurrent, nn.RNN: recurrent}
CELLS = {nn.LSTMCell: cell, nn.GRUCell: cell, nn.RNNCell: cell}
