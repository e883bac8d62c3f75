"""Diagnostics: what a hypernetwork generates, how it starts, what it costs (``hnet.summary()``).

A :class:`HypernetworkSummary` holds one :class:`TensorSummary` per generated tensor
(name, shape, chunks it spans, the generated values' mean and std now, and the target
layer's own init) and the totals (the model's parameters, generated values, the
hypernetwork's trainable parameters, compression ratio). ``print(summary)`` shows a table;
``summary.tensors`` / ``summary.as_dicts()`` give the data.

    >>> import numpy as np
    >>> from hypernn.layout import plan_layout
    >>> from hypernn.default_inits import TargetInit
    >>> layout = plan_layout([("fc.weight", (4, 3)), ("fc.bias", (4,))], kind="global", num_embeddings=2)
    >>> flat = np.linspace(-1.0, 1.0, layout.generated_size)
    >>> summary = summarize(layout, flat, [TargetInit(0.5, rule="kaiming"), TargetInit(0.0, rule="zeros")],
    ...                     model_name="Linear", target_params=16, hypernetwork_params=8, settings="init='hyperfan'")
    >>> summary.compression_ratio, summary.tensors[0].chunks
    (2.0, (0, 1))
    >>> print(summary)  # doctest: +NORMALIZE_WHITESPACE
    Linear hypernetwork: global layout, 2 chunks x 8 values, init='hyperfan'
    tensor     shape   chunks  generated mean  generated std  target init
    fc.weight  (4, 3)  0-1     -0.2667         0.4603         std 0.5 (kaiming)
    fc.bias    (4,)    1-1     0.8000          0.1491         = 0 (zeros)
    target params 16, generated values 16 (0 unused), hypernetwork params 8 trainable; compression 2.0x
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .default_inits import TargetInit
from .layout import Layout

__all__ = ["HypernetworkSummary", "TensorSummary", "summarize"]


@dataclasses.dataclass(frozen=True)
class TensorSummary:
    """One generated tensor (or low-rank factor)."""

    name: str
    shape: Tuple[int, ...]
    size: int
    #: first and last chunk holding its values
    chunks: Tuple[int, int]
    generated_mean: float
    generated_std: float
    #: the target layer's own init: mean, std (0 for a constant) and rule
    target_mean: float
    target_std: float
    target_rule: str

    @property
    def std_ratio(self) -> float:
        """``generated_std / target_std`` (``nan`` for a constant target)."""
        return self.generated_std / self.target_std if self.target_std else float("nan")


@dataclasses.dataclass(frozen=True)
class HypernetworkSummary:
    """The tensors a hypernetwork generates and its parameter totals."""

    model_name: str
    layout_kind: str
    num_chunks: int
    chunk_dim: int
    settings: str
    tensors: Tuple[TensorSummary, ...]
    #: parameters of the original model (tied ones once)
    target_params: int
    #: values the generator emits that tensors use / leaves unused (padding)
    generated_values: int
    unused_values: int
    #: trainable parameters of the hypernetwork (its own and the model's unselected ones)
    hypernetwork_params: int
    #: frozen tensors the hypernetwork keeps (low-rank ``W0``, warm-start base)
    frozen_params: int = 0
    #: with ``low_rank``: values of the full weights that the factors replace
    replaced_values: int = 0

    @property
    def compression_ratio(self) -> float:
        """``target_params / hypernetwork_params``."""
        return self.target_params / self.hypernetwork_params if self.hypernetwork_params else float("inf")

    def as_dicts(self) -> List[Dict[str, Any]]:
        """One plain dict per tensor (e.g. for ``pandas.DataFrame``)."""
        return [dataclasses.asdict(row) for row in self.tensors]

    def totals(self) -> Dict[str, Any]:
        """The totals as a dict."""
        names = ("target_params", "generated_values", "unused_values", "hypernetwork_params", "frozen_params", "replaced_values")
        return {**{n: getattr(self, n) for n in names}, "compression_ratio": self.compression_ratio}

    def __str__(self) -> str:
        header = ("tensor", "shape", "chunks", "generated mean", "generated std", "target init")
        rows = [header] + [_row(t) for t in self.tensors]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [f"{self.model_name} hypernetwork: {self.layout_kind} layout, {self.num_chunks} chunks x "
                 f"{self.chunk_dim} values, {self.settings}"]  # fmt: skip
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join(lines + [self._totals_line()])

    def _totals_line(self) -> str:
        text = f"target params {self.target_params:,}, generated values {self.generated_values:,} ({self.unused_values:,} unused)"
        if self.replaced_values:
            text += f" replacing {self.replaced_values:,} weight values"
        text += f", hypernetwork params {self.hypernetwork_params:,} trainable"
        if self.frozen_params:
            text += f" + {self.frozen_params:,} frozen"
        return text + f"; compression {self.compression_ratio:.1f}x"


def _row(t: TensorSummary) -> Tuple[str, ...]:
    target = f"= {t.target_mean:g}" if t.target_std == 0 else f"std {t.target_std:.4g}"
    return (t.name, str(t.shape), f"{t.chunks[0]}-{t.chunks[1]}", f"{t.generated_mean:.4f}", f"{t.generated_std:.4f}",
            f"{target} ({t.target_rule})" if t.target_rule else target)  # fmt: skip


def summarize(
    layout: Layout,
    flat: np.ndarray,
    targets: Sequence[TargetInit],
    *,
    model_name: str,
    target_params: int,
    hypernetwork_params: int,
    settings: str = "",
    frozen_params: int = 0,
    replaced_values: int = 0,
) -> HypernetworkSummary:
    """Build the summary from the generated vector ``flat`` (full, ``generated_size``)."""
    flat = np.asarray(flat, dtype=np.float64).reshape(-1)
    rows = []
    for slot, target in zip(layout.slots, targets):
        values = flat[slot.offset : slot.offset + slot.size]
        mean, std = (float(values.mean()), float(values.std())) if values.size else (0.0, 0.0)
        rows.append(TensorSummary(slot.name, slot.shape, slot.size, layout.chunk_range(slot), mean, std,
                                  target.mean, target.std, target.rule))  # fmt: skip
    return HypernetworkSummary(
        model_name, layout.kind, layout.num_chunks, layout.chunk_dim, settings, tuple(rows), target_params,
        layout.num_params, layout.unused, hypernetwork_params, frozen_params, replaced_values,
    )  # fmt: skip
