"""What the torch and JAX name generators share: data split, command line, report.

    >>> train, held_out = split_names(["ann", "bob", "cy"], max_length=3, seed=0, held_out_share=0.34)
    >>> train.shape, held_out.shape
    ((2, 5), (1, 5))
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .cli import example_parser, output_dir, summary_line
from .data import encode_names
from .plots import plot_curves, plot_heatmaps

__all__ = ["MAX_LENGTH", "parse_args", "report", "split_names"]

#: longest name (in letters) trained on and sampled
MAX_LENGTH = 12


def split_names(names: Sequence[str], *, max_length: int, seed: int, held_out_share: float = 0.05):
    """Shuffled codes of ``names`` (see :func:`common.data.encode_names`): ``(train, held_out)``."""
    codes = encode_names(np.random.default_rng(seed).permutation(list(names)), max_length)
    count = max(1, int(len(codes) * held_out_share))
    return codes[count:], codes[:count]


def parse_args(description: str, name: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The name generators' command line."""
    parser = example_parser(description, name=name, length="steps", default_length=1500)
    parser.add_argument("--batch-size", type=int, default=64, help="names per step")
    parser.add_argument("--hidden", type=int, default=64, help="width of the RNN state")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--embedding-dim", type=int, default=8, help="width of each chunk embedding")
    parser.add_argument("--num-embeddings", type=int, default=64, help="upper bound on the number of chunks")
    parser.add_argument("--init-std", type=float, default=0.15, help="starting std of the generated weights")
    parser.add_argument("--samples", type=int, default=10, help="names to print at the end")
    return parser.parse_args(argv)


def report(example: str, samples: List[Tuple[str, List[np.ndarray]]], losses: List[float], held_out_loss: float,
           args: argparse.Namespace, **counts: int) -> Dict[str, Any]:  # fmt: skip
    """Print the sampled names and the summary line; plot the loss and the generated ``W_h``
    (``(out, in)`` arrays) at each character step of the longest sampled name."""
    print("sampled names:", ", ".join(name or "(empty)" for name, _ in samples))
    out = output_dir(args.out)
    name, weights = max(samples, key=lambda s: len(s[0]))
    shown = weights[: len(name) + 1]
    titles = [f"after '{ch}'" for ch in "." + name][: len(shown)]
    files = {
        "weights": plot_heatmaps([w[:24, :24] for w in shown], titles, out / "generated_weights.png",
                                 columns=len(shown), aspect="equal", panel=(1.5, 1.7),
                                 suptitle=f"generated W_h (first 24x24) at each step of '{name}'"),
        "loss": plot_curves({"training loss": losses}, out / "loss.png", xlabel="step", ylabel="nats per character",
                            title=f"dynamic hypernetwork name model ({example})",
                            smooth=min(50, max(1, len(losses) // 5))),
    }  # fmt: skip
    print(summary_line(example, held_out_loss=f"{held_out_loss:.3f}", final_train_loss=f"{np.mean(losses[-50:]):.3f}",
                       **counts, sample=name))  # fmt: skip
    return {"losses": losses, "held_out_loss": held_out_loss, "samples": [n for n, _ in samples], "files": files,
            **counts}  # fmt: skip
