"""An independent re-derivation of the chunk layouts, for tests of every backend.

Written from the layouts' definitions, not from :mod:`hypernn.layout`, so a backend's
``hnet.layout`` can be checked against it.

    >>> hand_layout([6, 3, 4], "per_tensor", 4)
    ([0, 8, 12], 4, 4)
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple


def hand_layout(sizes: Sequence[int], kind: str, num_embeddings: int) -> Tuple[List[int], int, int]:
    """Offsets, chunk_dim and number of chunks of tensors with these ``sizes``."""
    if kind == "global":
        chunk_dim = math.ceil(sum(sizes) / num_embeddings)
        return [sum(sizes[:i]) for i in range(len(sizes))], chunk_dim, num_embeddings
    if kind != "per_tensor":
        raise ValueError(f"unknown layout kind {kind!r}")
    chunk_dim = next(c for c in range(1, max(sizes) + 1) if sum(math.ceil(s / c) for s in sizes) <= num_embeddings)
    offsets, chunk = [], 0
    for size in sizes:
        offsets.append(chunk * chunk_dim)
        chunk += math.ceil(size / chunk_dim)
    return offsets, chunk_dim, chunk
