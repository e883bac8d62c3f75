"""The command line every example shares: ``--seed``, ``--steps``/``--epochs``, ``--out``,
``--quiet``; tqdm progress bars; the final summary line.

    >>> parser = example_parser("demo", name="demo", length="steps", default_length=10)
    >>> args = parser.parse_args(["--steps", "3", "--out", "/tmp/demo"])
    >>> args.steps, args.seed, str(args.out), args.quiet
    (3, 0, '/tmp/demo', False)
    >>> summary_line("demo", loss=0.5, accuracy="98.0%")
    'summary demo: loss=0.5 accuracy=98.0%'
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterable, Optional

from tqdm import tqdm

__all__ = ["OUTPUTS", "example_parser", "output_dir", "progress", "summary_line"]

#: where examples write their pictures unless ``--out`` says otherwise (git-ignored)
OUTPUTS = Path(__file__).resolve().parents[1] / "outputs"


def example_parser(description: str, *, name: str, length: str, default_length: int) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the common options; ``length`` is ``"steps"`` or ``"epochs"``."""
    if length not in ("steps", "epochs"):
        raise ValueError(f"`length` must be 'steps' or 'epochs'; got {length!r}.")
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation, data order and environments")
    parser.add_argument(f"--{length}", type=int, default=default_length, help=f"training {length}")
    parser.add_argument("--out", type=Path, default=OUTPUTS / name, help="folder for plots and other outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (the summary is still printed)")
    return parser


def output_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress(iterable: Optional[Iterable[Any]], *, desc: str, quiet: bool, total: Optional[int] = None, unit: str = "it") -> tqdm:
    """A tqdm bar over ``iterable`` (``None``: update it by hand) on stderr, hidden with ``quiet``."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=quiet, leave=True, dynamic_ncols=True)


def summary_line(example: str, **metrics: Any) -> str:
    """The one-line result every example prints last: ``summary <example>: key=value ...``."""
    return f"summary {example}: " + " ".join(f"{key}={value}" for key, value in metrics.items())
