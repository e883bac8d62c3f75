"""Sine-wave regression tasks for the multi-task example (framework-free).

Task ``t`` is ``y = a_t * sin(f_t * x + p_t)`` on ``x`` in ``[-5, 5]``, with amplitude,
frequency and phase drawn once from a seeded generator: one input, a task id, and
answers that differ from task to task (a model that ignores the id can only predict
their average).

    >>> tasks = SineTasks.draw(3, seed=0)
    >>> x, task, y = tasks.sample(5, np.random.default_rng(0))
    >>> x.shape, task.shape, y.shape
    ((5, 1), (5,), (5, 1))
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .cli import example_parser, output_dir, summary_line
from .plots import plot_curves, plot_line_panels

__all__ = ["SineTasks", "parse_args", "report"]


@dataclasses.dataclass(frozen=True)
class SineTasks:
    """Amplitudes, frequencies and phases of ``len(amplitude)`` tasks."""

    amplitude: np.ndarray
    frequency: np.ndarray
    phase: np.ndarray

    @classmethod
    def draw(cls, count: int, seed: int) -> "SineTasks":
        rng = np.random.default_rng(seed)
        return cls(rng.uniform(0.5, 2.0, count), rng.uniform(0.5, 1.5, count), rng.uniform(0.0, np.pi, count))

    def __len__(self) -> int:
        return len(self.amplitude)

    def target(self, x: np.ndarray, task: np.ndarray) -> np.ndarray:
        """``y`` for inputs ``x`` ``(n, 1)`` of tasks ``task`` ``(n,)``."""
        return self.amplitude[task, None] * np.sin(self.frequency[task, None] * x + self.phase[task, None])

    def sample(self, count: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``count`` random ``(x, task, y)`` triples, tasks mixed, as ``float32``/``int64``."""
        x = rng.uniform(-5.0, 5.0, (count, 1))
        task = rng.integers(0, len(self), count)
        return x.astype(np.float32), task.astype(np.int64), self.target(x, task).astype(np.float32)

    def grid(self, task: int, points: int = 200) -> Tuple[np.ndarray, np.ndarray]:
        """Evenly spaced ``x`` and the true ``y`` of one task, for plots and tests."""
        x = np.linspace(-5.0, 5.0, points, dtype=np.float32)[:, None]
        return x, self.target(x, np.full(points, task)).astype(np.float32)


def parse_args(description: str, name: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The multi-task examples' command line."""
    parser = example_parser(description, name=name, length="steps", default_length=1500)
    parser.add_argument("--tasks", type=int, default=8, help="number of sine-wave tasks")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per step (tasks mixed)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (cosine decay to 0)")
    parser.add_argument("--embedding-dim", type=int, default=8, help="width of each chunk embedding")
    parser.add_argument("--num-embeddings", type=int, default=64, help="upper bound on the number of chunks")
    parser.add_argument("--init-std", type=float, default=0.3, help="starting std of the generated weights")
    return parser.parse_args(argv)


def report(example: str, results: Dict[str, Any], fits: Sequence[np.ndarray], tasks: SineTasks,
           args: argparse.Namespace) -> None:  # fmt: skip
    """Print the comparison and the summary line; plot the losses and each task's fit.

    ``results`` holds ``losses``, ``mse`` and ``params`` by model name (``"hypernetwork"``,
    ``"separate MLPs"``, ``"shared MLP"``); ``fits[t]`` is the hypernetwork's prediction
    on ``tasks.grid(t)``. The plots' paths are added as ``results["files"]``.
    """
    for name in results["mse"]:
        print(f"{name:>14}: test MSE {results['mse'][name]:.4f}, {results['params'][name]:,} trainable values")
    out = output_dir(args.out)
    panels = [(f"task {t}", tasks.grid(t)[0][:, 0], {"task": tasks.grid(t)[1][:, 0], "hypernetwork": np.ravel(fit)})
              for t, fit in enumerate(fits)]  # fmt: skip
    results["files"] = {
        "tasks": plot_line_panels(panels, out / "tasks.png", suptitle="one hypernetwork, one task id per curve"),
        "loss": plot_curves(results["losses"], out / "loss.png", xlabel="step", ylabel="MSE", title="training loss",
                            smooth=min(50, max(1, args.steps // 5))),
    }  # fmt: skip
    mse, params = results["mse"], results["params"]
    print(summary_line(example, tasks=len(tasks), hypernetwork_mse=f"{mse['hypernetwork']:.4f}",
                       separate_mse=f"{mse['separate MLPs']:.4f}", shared_mse=f"{mse['shared MLP']:.4f}",
                       hypernetwork_params=params["hypernetwork"], separate_params=params["separate MLPs"]))  # fmt: skip
