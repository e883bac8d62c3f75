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

import dataclasses
from typing import Tuple

import numpy as np

__all__ = ["SineTasks"]


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
