"""The chunk layout: how a generator's ``(num_chunks, chunk_dim)`` output maps to tensors.

Computed once, at hypernetize time, from the selected :class:`~hypernn.specs.ParamSpec`;
backends only execute the resulting :class:`SplitPlan` (one ``split`` and a reshape per
tensor). Two layouts:

* ``"global"`` (hyper-nn's): the tensors are laid end to end in one vector of ``P``
  values, cut into ``num_chunks`` chunks of ``ceil(P / num_chunks)``; the surplus values
  at the end of the last chunk are generated but unused (see :attr:`Layout.unused`).
* ``"per_tensor"``: every tensor gets its own chunks of ``chunk_dim`` values, so no chunk
  spans two tensors; the tail of each tensor's last chunk is unused.

    >>> layout = plan_layout([("a", (2, 3)), ("b", (3,))], kind="global", num_embeddings=2)
    >>> layout.chunk_dim, layout.generated_size, layout.unused
    (5, 10, 1)
    >>> plan_layout([("a", (2, 3)), ("b", (3,))], kind="per_tensor", chunk_dim=4).num_chunks
    3
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Literal, Optional, Sequence, Tuple, Union

from .errors import ConfigurationError, GeneratedParamsError
from .specs import ParamSpec

__all__ = ["LAYOUTS", "Layout", "Slot", "SplitPlan", "plan_layout"]

LAYOUTS = ("global", "per_tensor")
LayoutKind = Literal["global", "per_tensor"]


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one generated tensor lives in the flat generated vector."""

    name: str
    shape: Tuple[int, ...]
    offset: int
    aliases: Tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """``split(vector, sizes)`` then keep ``pieces[i]`` for ``i in keep`` (one per slot)."""

    sizes: Tuple[int, ...]
    keep: Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Slots of the generated tensors in a vector of ``num_chunks * chunk_dim`` values.

    ``full_plan`` splits the generator's whole output (gaps included); ``compact_plan``
    splits a vector holding only the tensors' values, end to end.
    """

    kind: LayoutKind
    slots: Tuple[Slot, ...]
    num_chunks: int
    chunk_dim: int

    @property
    def num_params(self) -> int:
        """Values the target needs (the compact vector's length)."""
        return sum(slot.size for slot in self.slots)

    @property
    def generated_size(self) -> int:
        """Values the generator emits: ``num_chunks * chunk_dim``."""
        return self.num_chunks * self.chunk_dim

    @property
    def unused(self) -> int:
        """Generated values that no tensor uses (padding / surplus)."""
        return self.generated_size - self.num_params

    full_plan: SplitPlan = dataclasses.field(init=False, repr=False, compare=False)
    compact_plan: SplitPlan = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Plans are computed once here (not lazily) so the forward does no planning work
        # and torch.compile traces plain attribute reads.
        object.__setattr__(self, "full_plan", self._plan_with_gaps())
        object.__setattr__(self, "compact_plan", SplitPlan(tuple(s.size for s in self.slots), tuple(range(len(self.slots)))))

    def _plan_with_gaps(self) -> SplitPlan:
        """Split plan for the generator's whole output (gaps included)."""
        sizes, keep, position = [], [], 0
        for slot in self.slots:
            if slot.offset > position:
                sizes.append(slot.offset - position)
            keep.append(len(sizes))
            sizes.append(slot.size)
            position = slot.offset + slot.size
        if self.generated_size > position:
            sizes.append(self.generated_size - position)
        return SplitPlan(tuple(sizes), tuple(keep))

    def plan_for(self, length: int) -> SplitPlan:
        """The plan for a flat vector of ``length`` values (full or compact).

        Raises:
            GeneratedParamsError: ``length`` is neither :attr:`generated_size` nor
                :attr:`num_params`.
        """
        if length == self.generated_size:
            return self.full_plan
        if length == self.num_params:
            return self.compact_plan
        valid = f"{self.generated_size} (the generator's output, {self.num_chunks} x {self.chunk_dim})"
        if self.num_params != self.generated_size:
            valid += f" or {self.num_params} (the target's values, end to end)"
        raise GeneratedParamsError(f"`generated_params` has {length} values; expected {valid}.")

    def chunk_range(self, slot: Slot) -> Tuple[int, int]:
        """The first and last chunk holding ``slot``'s values."""
        return slot.offset // self.chunk_dim, (slot.offset + max(slot.size, 1) - 1) // self.chunk_dim

    def describe(self) -> str:
        """A human-readable summary: sizes, padding and where each tensor lives."""
        lines = [
            f"{self.kind} layout: {self.num_chunks} chunks x {self.chunk_dim} = {self.generated_size} generated "
            f"values for {self.num_params} target values ({self.unused} unused)"
        ]
        for slot in self.slots:
            first, last = self.chunk_range(slot)
            alias = "".join(f" (= {a})" for a in slot.aliases)
            lines.append(f"  {slot.name}{alias}: shape {slot.shape}, values [{slot.offset}, {slot.offset + slot.size}), chunks {first}-{last}")
        return "\n".join(lines)


# ---------------------------------------------------------------- planning

TensorShapes = Iterable[Union[ParamSpec, Tuple[str, Tuple[int, ...]]]]


def _as_named_shapes(tensors: TensorShapes) -> list:
    out = []
    for item in tensors:
        if isinstance(item, ParamSpec):
            out.append((item.name, tuple(item.shape), item.aliases))
        else:
            out.append((item[0], tuple(item[1]), ()))
    return out


def _global(named: list, num_embeddings: Optional[int], chunk_dim: Optional[int]) -> Layout:
    total = sum(math.prod(shape) for _, shape, _ in named)
    if chunk_dim is None:
        chunk_dim = math.ceil(total / num_embeddings)
    if num_embeddings is None:
        num_embeddings = math.ceil(total / chunk_dim)
    if num_embeddings * chunk_dim < total:
        raise ConfigurationError(
            f"`num_embeddings`={num_embeddings} chunks of `chunk_dim`={chunk_dim} hold {num_embeddings * chunk_dim} "
            f"values, fewer than the {total} selected; leave one of them unset to have it computed."
        )
    slots, offset = [], 0
    for name, shape, aliases in named:
        slots.append(Slot(name, shape, offset, aliases))
        offset += math.prod(shape)
    return Layout("global", tuple(slots), num_embeddings, chunk_dim)


def _chunks_needed(sizes: Sequence[int], chunk_dim: int) -> int:
    return sum(math.ceil(size / chunk_dim) for size in sizes)


def _smallest_chunk_dim(sizes: Sequence[int], num_embeddings: int) -> int:
    nonempty = [s for s in sizes if s]
    if len(nonempty) > num_embeddings:
        raise ConfigurationError(
            f"the per_tensor layout needs at least one chunk per tensor: {len(nonempty)} non-empty tensors are "
            f"selected but `num_embeddings`={num_embeddings}; raise `num_embeddings` or pass `chunk_dim`."
        )
    low, high = 1, max(nonempty)
    while low < high:
        middle = (low + high) // 2
        if _chunks_needed(sizes, middle) <= num_embeddings:
            high = middle
        else:
            low = middle + 1
    return low


def _per_tensor(named: list, num_embeddings: Optional[int], chunk_dim: Optional[int]) -> Layout:
    sizes = [math.prod(shape) for _, shape, _ in named]
    if chunk_dim is None:
        chunk_dim = _smallest_chunk_dim(sizes, num_embeddings)
    needed = _chunks_needed(sizes, chunk_dim)
    if num_embeddings is not None and num_embeddings < needed:
        raise ConfigurationError(
            f"the per_tensor layout with `chunk_dim`={chunk_dim} needs {needed} chunks, but `num_embeddings`="
            f"{num_embeddings}; leave `num_embeddings` unset to use {needed}, or raise `chunk_dim`."
        )
    slots, chunk = [], 0
    for (name, shape, aliases), size in zip(named, sizes):
        slots.append(Slot(name, shape, chunk * chunk_dim, aliases))
        chunk += math.ceil(size / chunk_dim)
    return Layout("per_tensor", tuple(slots), needed, chunk_dim)


def plan_layout(
    tensors: TensorShapes,
    *,
    kind: str = "global",
    num_embeddings: Optional[int] = None,
    chunk_dim: Optional[int] = None,
) -> Layout:
    """Plan where each tensor lives in the generated ``(num_chunks, chunk_dim)`` output.

    Args:
        tensors: :class:`ParamSpec` or ``(name, shape)`` pairs, in order.
        kind: ``"global"`` or ``"per_tensor"``.
        num_embeddings: number of chunks (global), or an upper bound on it (per_tensor,
            which then picks the smallest ``chunk_dim`` that fits).
        chunk_dim: values per chunk; computed from ``num_embeddings`` when unset.

    Raises:
        ConfigurationError: nothing to generate, an unknown ``kind``, neither size given,
            or sizes that cannot hold the selected values.
    """
    if kind not in LAYOUTS:
        raise ConfigurationError(f"`layout` must be one of {LAYOUTS}; got {kind!r}.")
    if num_embeddings is None and chunk_dim is None:
        raise ConfigurationError("pass `num_embeddings` or `chunk_dim` (or both) to size the chunk layout.")
    named = _as_named_shapes(tensors)
    if sum(math.prod(shape) for _, shape, _ in named) == 0:
        raise ConfigurationError(f"the selected tensors {[n for n, _, _ in named]} hold no values; there is nothing to generate.")
    if kind == "global":
        return _global(named, num_embeddings, chunk_dim)
    return _per_tensor(named, num_embeddings, chunk_dim)
