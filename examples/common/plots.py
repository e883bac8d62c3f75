"""Headless matplotlib plots (Agg backend) and GIFs for the examples.

Every function takes NumPy arrays and a file path, writes the file and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # headless: no display needed, before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

__all__ = ["plot_curves", "plot_heatmaps", "plot_line_panels", "save_gif"]


def plot_curves(
    curves: Dict[str, Sequence[float]], path: Path, *, xlabel: str, ylabel: str, title: str, smooth: int = 1
) -> Path:
    """Line plot of each named curve; ``smooth > 1`` adds its running mean over that window."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for label, values in curves.items():
        values = np.asarray(values, dtype=float)
        line, = axis.plot(values, alpha=0.35 if smooth > 1 else 1.0, label=None if smooth > 1 else label)
        if smooth > 1 and len(values) >= smooth:
            mean = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
            axis.plot(np.arange(smooth - 1, len(values)), mean, color=line.get_color(),
                      label=f"{label} (mean of {smooth})")  # fmt: skip
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def plot_heatmaps(
    matrices: Sequence[np.ndarray], titles: Sequence[str], path: Path, *, suptitle: str,
    columns: Optional[int] = None, cmap: str = "RdBu_r", aspect: str = "auto", panel: Tuple[float, float] = (1.9, 2.1),
) -> Path:  # fmt: skip
    """A grid of heat maps on one symmetric colour scale (so panels compare); ``panel`` is
    each panel's size in inches."""
    count = len(matrices)
    columns = columns or count
    rows = -(-count // columns)
    limit = max(float(np.abs(m).max()) for m in matrices) or 1.0
    figure, axes = plt.subplots(rows, columns, figsize=(panel[0] * columns + 1.2, panel[1] * rows + 0.8), squeeze=False,
                                gridspec_kw={"hspace": 0.45})
    for axis in axes.flat[count:]:
        axis.axis("off")
    for axis, matrix, title in zip(axes.flat, matrices, titles):
        image = axis.imshow(np.asarray(matrix), cmap=cmap, vmin=-limit, vmax=limit, aspect=aspect, interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(suptitle)
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def plot_line_panels(
    panels: Sequence[Tuple[str, np.ndarray, Dict[str, np.ndarray]]], path: Path, *, suptitle: str, columns: int = 4
) -> Path:
    """A grid of small line plots: each panel is ``(title, x, {label: y})``; the first
    label is drawn solid, the others dashed."""
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.2 * rows), squeeze=False, sharex=True)
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    for axis, (title, x, lines) in zip(axes.flat, panels):
        for index, (label, y) in enumerate(lines.items()):
            axis.plot(x, y, lw=1 if index == 0 else 1.5, ls="-" if index == 0 else "--", label=label,
                      color="black" if index == 0 else None)  # fmt: skip
        axis.set_title(title, fontsize=9)
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(suptitle)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def save_gif(frames: Sequence[np.ndarray], path: Path, *, fps: int = 30, scale: float = 0.5) -> Path:
    """Write ``(H, W, 3)`` uint8 frames as a looping GIF, resized by ``scale``."""
    if not frames:
        raise ValueError("`frames` is empty: nothing to write.")
    images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    if scale != 1.0:
        size = (max(1, int(images[0].width * scale)), max(1, int(images[0].height * scale)))
        images = [image.resize(size, Image.Resampling.BILINEAR) for image in images]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0, optimize=True)
    return Path(path)
