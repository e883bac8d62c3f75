"""The hyperfan start map of the JAX hypernetworks, written out for the hand-written twins.

The twins apply the map as two precomputed per-element vectors (``shift + scale * raw``),
read once from the hypernetwork under test: linen keeps its per-tensor ``scale``/``shift``
in the ``"hypernn"`` collection, NNX in ``hnet.output_affine``.

    >>> scale, shift = start_vectors([2.0, 0.5], [1.0, 0.0], (2, 3, 1))
    >>> scale.tolist(), shift.tolist()
    ([2.0, 2.0, 0.5, 0.5, 0.5, 1.0], [1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["linen_start_map", "nnx_start_map", "start_vectors"]


def start_vectors(scales: Any, shifts: Any, split_sizes: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Per-tensor ``scales``/``shifts`` (layout order) as per-element vectors over
    ``split_sizes`` (the unused surplus, a last extra size: scale 1, shift 0)."""
    scales, shifts = np.asarray(scales), np.asarray(shifts)
    extra = len(split_sizes) - len(scales)
    assert extra in (0, 1) and len(scales) == len(shifts), (len(split_sizes), len(scales), len(shifts))
    scale = np.repeat(np.concatenate([scales, np.ones(extra, scales.dtype)]), split_sizes)
    shift = np.repeat(np.concatenate([shifts, np.zeros(extra, shifts.dtype)]), split_sizes)
    return scale, shift


def linen_start_map(constants: Dict, split_sizes: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """The linen hypernetwork's start map (``constants["hypernn"]["start"]``) as per-element vectors."""
    start = constants["hypernn"]["start"]
    return start_vectors(start["scale"], start["shift"], split_sizes)


def nnx_start_map(hnet: Any, split_sizes: Sequence[int]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The NNX hypernetwork's start map (``hnet.output_affine``) as per-element vectors;
    ``None`` without a map."""
    affine = hnet.output_affine
    if affine is None:
        return None
    assert affine.base is None, "warm start (a full base vector) is not written in the twin"
    return start_vectors(affine.scale[...], affine.shift[...], split_sizes)
