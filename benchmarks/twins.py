"""Hand-written twins of hypernetworks, shared by the benchmark scripts.

Imports torch only (never ``hypernn``), so that the peers' processes
(``peer_step.py``, run in virtual environments where ``hypernn`` is hyper-nn 0.2.2) can
use them too. Every twin re-derives its layout from the layer sizes: weight then bias per
layer, end to end (hyper-nn's global layout), cut into ``num_embeddings`` chunks of
``ceil(P / num_embeddings)`` values, the surplus at the end unused.

hypernn's default ``init="hyperfan"`` passes the generator's flat output through a fixed
per-tensor affine map, ``flat = shift + scale * raw`` (``hypernn/init.py``). A twin takes
that map by hand (:meth:`HandWrittenHypernet.set_start_map`, the per-tensor values copied
with :func:`copy_start_map`): per-element ``scale``/``shift`` vectors built once, then
``shift + scale * raw`` per call. Without a map (the peers, which have none), a twin outputs the
generator's values unchanged.

    >>> import torch
    >>> hand = HandWrittenHypernet(4, 8, sizes=(3, 5, 2))
    >>> hand.split_sizes, hand(torch.randn(6, 3)).shape
    ((15, 5, 10, 2), torch.Size([6, 2]))
    >>> twin = SameModelTwin(build_mlp((3, 5, 2)), 4, 8)
    >>> twin(torch.randn(6, 3)).shape, sorted(n for n, _ in twin.named_parameters())
    (torch.Size([6, 2]), ['embedding.weight', 'generator.bias', 'generator.weight'])
    >>> start_map_vectors((2, 3, 1), [2.0, 0.5], [1.0, 0.0])
    (tensor([2.0000, 2.0000, 0.5000, 0.5000, 0.5000, 1.0000]), tensor([1., 1., 0., 0., 0., 0.]))
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CUTS", "SIZES", "HandWrittenHypernet", "SameModelTwin", "StartMapMixin", "build_mlp", "copy_start_map",
           "mlp_shapes", "split_sizes", "start_map_vectors"]

SIZES = (784, 256, 256, 10)
CUTS = {"split": "one torch.split", "slice": "flat[a:b] slices"}  # how a twin cuts the vector


def build_mlp(sizes: Sequence[int] = SIZES, final_relu: bool = False) -> nn.Sequential:
    """``Linear, ReLU, Linear, ..., Linear`` over ``sizes`` (and a last ReLU if ``final_relu``)."""
    layers: List[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    if final_relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mlp_shapes(sizes: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    """``(weight, bias)`` shapes of every Linear of :func:`build_mlp`, in order."""
    return tuple(shape for fan_in, fan_out in zip(sizes[:-1], sizes[1:]) for shape in ((fan_out, fan_in), (fan_out,)))


def split_sizes(shapes: Sequence[Tuple[int, ...]], num_embeddings: int) -> Tuple[Tuple[int, ...], int]:
    """``(sizes for one torch.split of the flat vector, chunk_dim)``: every tensor's size,
    then the unused surplus, if any."""
    total = sum(math.prod(s) for s in shapes)
    chunk_dim = math.ceil(total / num_embeddings)
    padding = num_embeddings * chunk_dim - total
    return tuple(math.prod(s) for s in shapes) + ((padding,) if padding else ()), chunk_dim


def start_map_vectors(split_sizes: Sequence[int], scales: Sequence[float], shifts: Sequence[float],
                      dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per-element ``(scale, shift)`` vectors over the flat vector cut at ``split_sizes``:
    tensor ``i`` gets ``scales[i]``/``shifts[i]``; the unused surplus (the last size, when
    there is one more size than scales) gets scale 1, shift 0."""
    if len(split_sizes) not in (len(scales), len(scales) + 1) or len(scales) != len(shifts):
        raise ValueError(f"{len(scales)} scales and {len(shifts)} shifts for {len(split_sizes)} pieces")
    extra = len(split_sizes) - len(scales)
    sizes = torch.tensor(list(split_sizes))
    scale = torch.repeat_interleave(torch.tensor([*scales] + [1.0] * extra, dtype=torch.float64), sizes)
    shift = torch.repeat_interleave(torch.tensor([*shifts] + [0.0] * extra, dtype=torch.float64), sizes)
    return scale.to(dtype), shift.to(dtype)


def copy_start_map(hnet: nn.Module, twin: "StartMapMixin") -> None:
    """Give ``twin`` the start map of the hypernetwork ``hnet`` (hypernn's ``hnet.output_affine``:
    per-tensor ``scale``/``shift`` buffers, in layout order; ``None`` with ``init="default"``,
    then the twin keeps none). Read by attribute, so this module need not import hypernn."""
    affine = getattr(hnet, "output_affine", None)
    if affine is None:
        twin.set_start_map(None)
        return
    if getattr(affine, "base", None) is not None:
        raise NotImplementedError("warm start (a full base vector) is not written in the twins")
    twin.set_start_map(affine.scale.tolist(), affine.shift.tolist())


class StartMapMixin:
    """The start map by hand: ``flat = shift + scale * raw`` with per-element vectors (buffers
    ``start_scale``/``start_shift``, ``None`` without a map) precomputed once from the
    per-tensor values; needs ``split_sizes`` (the twin's own cut of the flat vector)."""

    split_sizes: Tuple[int, ...]

    def _no_start_map(self) -> None:
        self.register_buffer("start_scale", None)
        self.register_buffer("start_shift", None)

    def set_start_map(self, scales: Optional[Sequence[float]], shifts: Optional[Sequence[float]] = None) -> None:
        """Per-tensor ``scales``/``shifts`` in layout order (``None``: no map)."""
        if scales is None:
            self.start_scale = self.start_shift = None
            return
        dtype = self.generator.weight.dtype
        scale, shift = start_map_vectors(self.split_sizes, scales, shifts, dtype)
        device = self.generator.weight.device
        self.start_scale, self.start_shift = scale.to(device), shift.to(device)

    def start_map(self, raw: torch.Tensor) -> torch.Tensor:
        """``shift + scale * raw`` (leading batch dims broadcast), or ``raw``.

        Written as hypernn rounds it (a multiply, then an add): ``torch.addcmul`` rounds once
        instead of twice, and Adam turns those last-bit differences in near-zero gradients
        into visibly different parameters (up to ``lr`` per step) within 3 steps."""
        if self.start_scale is None:
            return raw
        return self.start_shift + self.start_scale * raw


class HandWrittenHypernet(StartMapMixin, nn.Module):
    """A static MLP hypernetwork written by hand: embed, generate, cut, ``F.linear``.

    ``cut="split"`` (default) cuts the flat vector with one ``torch.split`` at fixed
    sizes; ``cut="slice"`` indexes ``flat[a:b]`` per tensor. Both are plain hand-written
    code, but slicing is much slower to train: each slice's backward materialises a
    zero-filled gradient of the whole flat vector, and autograd sums them.
    ``final_relu`` adds a ReLU after the last Linear (``Linear+ReLU`` pairs).
    A start map (:class:`StartMapMixin`) applies to the flat vector before the cut.
    """

    def __init__(self, embedding_dim: int, num_embeddings: int, sizes: Sequence[int] = SIZES, cut: str = "split",
                 final_relu: bool = False):  # fmt: skip
        super().__init__()
        if cut not in CUTS:
            raise ValueError(f"cut must be one of {tuple(CUTS)}; got {cut!r}")
        self.cut, self.final_relu = cut, final_relu
        self.shapes = mlp_shapes(sizes)
        self.split_sizes, chunk_dim = split_sizes(self.shapes, num_embeddings)
        self.offsets = tuple(itertools.accumulate((math.prod(s) for s in self.shapes), initial=0))
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.generator = nn.Linear(embedding_dim, chunk_dim)
        self.register_buffer("index", torch.arange(num_embeddings), persistent=False)
        self._no_start_map()

    def generated_tensors(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """Cut ``flat`` into ``[w1, b1, w2, b2, ...]`` at the fixed offsets."""
        if self.cut == "split":
            pieces = torch.split(flat, self.split_sizes)
            return [piece.view(shape) for piece, shape in zip(pieces, self.shapes)]
        return [flat[a:b].view(shape) for a, b, shape in zip(self.offsets, self.offsets[1:], self.shapes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.start_map(self.generator(self.embedding(self.index)).reshape(-1))
        tensors = self.generated_tensors(flat)
        layers = len(tensors) // 2
        for i in range(layers):
            x = F.linear(x, tensors[2 * i], tensors[2 * i + 1])
            if i != layers - 1 or self.final_relu:
                x = F.relu(x)
        return x


class SameModelTwin(StartMapMixin, nn.Module):
    """Generate by hand, then run the user's own model with the generated tensors written by
    hand into its parameter slots (``module._parameters[name] = tensor``).

    This twin pays the model's own ``nn.Module`` call overhead, as a hypernetwork that runs
    the user's model must, so hypernn's ratio against it isolates hypernn's own per-call and
    per-tensor work. ``names``: the generated parameters in layout order (default: all of
    the model's, in ``named_parameters`` order). The model is held outside the module tree
    (its slots hold non-leaf tensors between calls, which ``parameters()`` would list);
    its other parameters are registered here under ``model_params`` (``other_names`` names them).
    A start map (:class:`StartMapMixin`) applies to the flat vector before the cut.
    """

    def __init__(self, model: nn.Module, embedding_dim: int, num_embeddings: int, names: Optional[Sequence[str]] = None):
        super().__init__()
        named = dict(model.named_parameters())
        self.names = tuple(named) if names is None else tuple(names)
        self.shapes = tuple(tuple(named[name].shape) for name in self.names)
        self.split_sizes, chunk_dim = split_sizes(self.shapes, num_embeddings)
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.generator = nn.Linear(embedding_dim, chunk_dim)
        self.register_buffer("index", torch.arange(num_embeddings), persistent=False)
        self._no_start_map()
        self.slots: List[Tuple[Dict[str, Optional[torch.Tensor]], str]] = []
        for name in self.names:
            owner, _, attribute = name.rpartition(".")
            module = model.get_submodule(owner)
            module._parameters[attribute] = None
            self.slots.append((module._parameters, attribute))
        self.other_names = tuple(name for name in named if name not in self.names)
        self.model_params = nn.ParameterList([named[name] for name in self.other_names])
        self.__dict__["model"] = model

    def train(self, mode: bool = True) -> "SameModelTwin":
        self.model.train(mode)
        return super().train(mode)

    def forward(self, *args, **kwargs):
        flat = self.start_map(self.generator(self.embedding(self.index)).reshape(-1))
        for (parameters, attribute), piece, shape in zip(self.slots, torch.split(flat, self.split_sizes), self.shapes):
            parameters[attribute] = piece.view(shape)
        return self.model(*args, **kwargs)
