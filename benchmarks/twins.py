"""Hand-written twins of hypernetworks, shared by the benchmark scripts.

Imports torch only (never ``hypernn``), so that the peers' processes
(``peer_step.py``, run in virtual environments where ``hypernn`` is hyper-nn 0.2.2) can
use them too. Every twin re-derives its layout from the layer sizes: weight then bias per
layer, end to end (hyper-nn's global layout), cut into ``num_embeddings`` chunks of
``ceil(P / num_embeddings)`` values, the surplus at the end unused.

    >>> import torch
    >>> hand = HandWrittenHypernet(4, 8, sizes=(3, 5, 2))
    >>> hand.split_sizes, hand(torch.randn(6, 3)).shape
    ((15, 5, 10, 2), torch.Size([6, 2]))
    >>> twin = SameModelTwin(build_mlp((3, 5, 2)), 4, 8)
    >>> twin(torch.randn(6, 3)).shape, sorted(n for n, _ in twin.named_parameters())
    (torch.Size([6, 2]), ['embedding.weight', 'generator.bias', 'generator.weight'])
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CUTS", "SIZES", "HandWrittenHypernet", "SameModelTwin", "build_mlp", "mlp_shapes", "split_sizes"]

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


class HandWrittenHypernet(nn.Module):
    """A static MLP hypernetwork written by hand: embed, generate, cut, ``F.linear``.

    ``cut="split"`` (default) cuts the flat vector with one ``torch.split`` at fixed
    sizes; ``cut="slice"`` indexes ``flat[a:b]`` per tensor. Both are plain hand-written
    code, but slicing is much slower to train: each slice's backward materialises a
    zero-filled gradient of the whole flat vector, and autograd sums them.
    ``final_relu`` adds a ReLU after the last Linear (``Linear+ReLU`` pairs).
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

    def generated_tensors(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """Cut ``flat`` into ``[w1, b1, w2, b2, ...]`` at the fixed offsets."""
        if self.cut == "split":
            pieces = torch.split(flat, self.split_sizes)
            return [piece.view(shape) for piece, shape in zip(pieces, self.shapes)]
        return [flat[a:b].view(shape) for a, b, shape in zip(self.offsets, self.offsets[1:], self.shapes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.generator(self.embedding(self.index)).reshape(-1)
        tensors = self.generated_tensors(flat)
        layers = len(tensors) // 2
        for i in range(layers):
            x = F.linear(x, tensors[2 * i], tensors[2 * i + 1])
            if i != layers - 1 or self.final_relu:
                x = F.relu(x)
        return x


class SameModelTwin(nn.Module):
    """Generate by hand, then run the user's own model with the generated tensors written by
    hand into its parameter slots (``module._parameters[name] = tensor``).

    This twin pays the model's own ``nn.Module`` call overhead, as a hypernetwork that runs
    the user's model must, so hypernn's ratio against it isolates hypernn's own per-call and
    per-tensor work. ``names``: the generated parameters in layout order (default: all of
    the model's, in ``named_parameters`` order). The model is held outside the module tree
    (its slots hold non-leaf tensors between calls, which ``parameters()`` would list);
    its other parameters are registered here under ``model_params`` (``other_names`` names them).
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
        flat = self.generator(self.embedding(self.index)).reshape(-1)
        for (parameters, attribute), piece, shape in zip(self.slots, torch.split(flat, self.split_sizes), self.shapes):
            parameters[attribute] = piece.view(shape)
        return self.model(*args, **kwargs)
