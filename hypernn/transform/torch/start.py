"""Where generated torch weights start: the :mod:`hypernn.init` affine map as a module.

    >>> import torch
    >>> from hypernn.layout import plan_layout
    >>> from hypernn.default_inits import TargetInit
    >>> layout = plan_layout([("w", (4, 25)), ("b", (4,))], kind="global", num_embeddings=4)
    >>> raw = torch.randn(layout.generated_size)
    >>> affine = build_output_affine(layout, raw, [TargetInit(0.2), TargetInit(0.0)], init="hyperfan")
    >>> round(affine(raw)[:100].std(unbiased=False).item(), 4)
    0.2
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ...default_inits import TargetInit
from ...init import piece_slots, plan_output_affine
from ...layout import Layout

__all__ = ["OutputAffine", "build_output_affine", "fold_common_scale", "measure", "numpy_of"]


def numpy_of(tensor: torch.Tensor) -> np.ndarray:
    """A float64 NumPy copy of ``tensor`` (any device or dtype)."""
    return tensor.detach().to("cpu", torch.float64).numpy()


def measure(tensor: torch.Tensor) -> Optional[Tuple[float, float]]:
    """``(mean, std)`` of a tensor's values (population std), for unknown layers; ``None``
    on the meta device (no values)."""
    if tensor.is_meta:
        return None
    values = numpy_of(tensor)
    return float(values.mean()), float(values.std())


class _PerElement:
    """The per-element ``(scale, shift)`` vectors of the last call and the tensors they came
    from: spreading the per-tensor values over the flat output (two ``repeat_interleave``)
    costs more than the map itself, so it is done again only when ``scale`` or ``shift``
    changes (another tensor: ``.to()``, ``load_state_dict(assign=True)``; or an in-place
    update, which bumps its version counter: ``load_state_dict``, ``copy_``). Writes through
    ``.data`` bypass version counters: call :meth:`OutputAffine.clear_cache` after them
    (``hnet.clear_generated_cache()`` does). Copies and pickles start empty."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.sources: Tuple[Any, ...] = ()
        self.vectors: Tuple[Optional[torch.Tensor], ...] = ()

    def __getstate__(self) -> Dict[str, Any]:
        return {"sources": (), "vectors": ()}

    def __deepcopy__(self, memo: Dict[int, Any]) -> "_PerElement":
        return _PerElement()


def _sources(tensors: Sequence[torch.Tensor]) -> Optional[Tuple[Any, ...]]:
    """What the per-element vectors of ``tensors`` depend on (the tensors themselves, held so
    that their ids are not reused, and their versions); ``None`` when they may not be cached:
    while tracing or compiling, under a torch.func transform, in inference mode (its vectors
    could not be saved for a later backward), for tensors that require grad (a scale being
    trained), subclasses (e.g. fake tensors) or inference tensors (no version counter)."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._are_functorch_transforms_active()
            or torch.is_inference_mode_enabled()):  # fmt: skip
        return None
    key: Tuple[Any, ...] = ()
    for tensor in tensors:
        if type(tensor) is not torch.Tensor or tensor.requires_grad or tensor.is_inference():
            return None
        key += (tensor, tensor._version)
    return key


class OutputAffine(nn.Module):
    """``flat = (base if warm start else shift) + scale * raw`` on the generator's flat output.

    Attributes:
        scale, shift: per generated tensor (buffers, saved with the hypernetwork).
        base: with warm start, the full ``(generated_size,)`` offset (a frozen parameter,
            like PEFT's base weights); else ``None``.

    The per-element vectors spread from ``scale``/``shift`` are kept between calls (two
    ``(generated_size,)`` vectors, like a hand-written implementation would precompute) and
    made again when ``scale`` or ``shift`` changes (see :class:`_PerElement`).
    """

    def __init__(self, layout: Layout, scales: Sequence[float], shifts: Sequence[float],
                 base: Optional[np.ndarray], *, dtype: torch.dtype, device: Any):  # fmt: skip
        super().__init__()
        sizes, slots = piece_slots(layout)
        placement = dict(dtype=dtype, device=device)
        self.register_buffer("scale", torch.tensor(scales, **placement))
        self.register_buffer("shift", torch.tensor(shifts, **placement))
        self.register_buffer("_piece_sizes", torch.tensor(sizes, dtype=torch.int64, device=device), persistent=False)
        self.register_buffer("_piece_slots", torch.tensor(slots, dtype=torch.int64, device=device), persistent=False)
        self.generated_size = layout.generated_size
        self._pieces = tuple(zip(sizes, slots))  # static, for the compiled spread (see per_element)
        base_tensor = None if base is None else nn.Parameter(torch.tensor(base, **placement), requires_grad=False)
        self.register_parameter("base", base_tensor)

    def per_element(self, values: torch.Tensor, gap: float) -> torch.Tensor:
        """A per-tensor vector spread over the flat output (``gap`` in unused places).

        Eagerly one ``repeat_interleave``; while compiling, one broadcast per piece of the
        layout (static sizes), which the compiler fuses into the map's kernel instead of
        running ``repeat_interleave`` (a data-dependent op it cannot fuse) every step."""
        extended = torch.cat([values, values.new_full((1,), gap)])
        pieces = getattr(self, "_pieces", None)  # (older pickled modules have none)
        if torch.compiler.is_compiling() and pieces is not None:
            return torch.cat([extended[slot].expand(size) for size, slot in pieces])
        return torch.repeat_interleave(extended[self._piece_slots], self._piece_sizes, output_size=self.generated_size)

    def _vectors(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per-element ``(scale, shift)`` (shift ``None`` with warm start, which adds ``base``)."""
        sources = _sources((self.scale, self.shift, self._piece_sizes, self._piece_slots))
        if sources is not None:
            sources += (self.base is None,)
        cache = self.__dict__.get("_per_element_cache")
        if cache is None:  # (made here, not in __init__, so that older pickled modules get one too)
            cache = self.__dict__["_per_element_cache"] = _PerElement()
        if sources is not None and len(sources) == len(cache.sources) and all(
                a is b if isinstance(a, torch.Tensor) else a == b for a, b in zip(sources, cache.sources)):  # fmt: skip
            return cache.vectors  # type: ignore[return-value]
        cache.clear()  # free the old vectors before making new ones
        vectors = (self.per_element(self.scale, 1.0), None if self.base is not None else self.per_element(self.shift, 0.0))
        if sources is not None:
            cache.sources, cache.vectors = sources, vectors
        return vectors

    def clear_cache(self) -> None:
        """Forget the per-element vectors (needed only after edits through ``scale.data``)."""
        cache = self.__dict__.get("_per_element_cache")
        if cache is not None:
            cache.clear()

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        scale, shift = self._vectors()
        offset = self.base if self.base is not None else shift
        return offset + scale * raw

    def extra_repr(self) -> str:
        return f"{len(self.scale)} tensors, {self.generated_size} values, warm start={self.base is not None}"


def _last_linear(generator: nn.Module, chunk_dim: int) -> Optional[nn.Linear]:
    """The generator's last ``nn.Linear`` with ``chunk_dim`` outputs (in module order)."""
    layers = [m for m in generator.modules() if isinstance(m, nn.Linear) and m.out_features == chunk_dim]
    return layers[-1] if layers else None


@torch.no_grad()
def fold_common_scale(generator: nn.Module, chunk_dim: int, factor: float, raw: torch.Tensor,
                      probe: Callable[[], torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """Multiply the weight and bias of the generator's last linear layer by ``factor`` when
    that scales its output by ``factor`` (checked by running ``probe`` again; otherwise the
    layer is restored); returns the raw output the generator now gives."""
    layer = _last_linear(generator, chunk_dim)
    if layer is None or factor == 1.0 or raw.is_meta:
        return raw
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    saved = [p.clone() for p in params]
    for p in params:
        p.mul_(factor)
    scaled = probe()
    tolerance = 100 * torch.finfo(raw.dtype).eps
    if torch.allclose(scaled, factor * raw, rtol=tolerance, atol=tolerance * factor * float(raw.abs().max())):
        return scaled
    for p, value in zip(params, saved):  # the output is not linear in that layer: keep the affine map only
        p.copy_(value)
    return raw


def build_output_affine(
    layout: Layout,
    raw: torch.Tensor,
    targets: Sequence[TargetInit],
    *,
    init: str,
    start: Optional[Mapping[str, torch.Tensor]] = None,
) -> Optional[OutputAffine]:
    """The map for a generator whose raw flat output at construction is ``raw``;
    ``None`` when nothing changes (``init="default"`` without warm start). On the meta
    device (no values to measure) the map is a placeholder of the right shapes (scale 1,
    shift 0), to be filled by ``load_state_dict``."""
    if raw.is_meta:
        if init == "default" and not start:
            return None
        count = len(layout.slots)
        base = np.zeros(layout.generated_size) if start else None
        affine = OutputAffine(layout, [1.0] * count, [0.0] * count, base, dtype=raw.dtype, device="cpu")
        return affine.to("meta")
    values = None if start is None else {name: numpy_of(torch.as_tensor(t)) for name, t in start.items()}
    plan = plan_output_affine(layout, numpy_of(raw), targets, init=init, start=values)
    if plan is None:
        return None
    return OutputAffine(layout, plan.scales, plan.shifts, plan.base, dtype=raw.dtype, device=raw.device)
