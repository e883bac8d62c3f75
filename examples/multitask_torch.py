"""One hypernetwork, many tasks: a task id picks the weights (torch).

``hypernetize(mlp, num_conditions=T, ...)`` learns an embedding per task and generates
the whole MLP from it, so ``hnet(x, condition=task_ids)`` runs every sample with its own
task's weights, in one batched call. It is trained on T sine-wave regression tasks
(``common/tasks.py``) and compared with T separate MLPs (T times the parameters) and
with one shared MLP that ignores the task id.

    python examples/multitask_torch.py                # ~1 minute on one CPU thread
    python examples/multitask_torch.py --tasks 16

Writes ``tasks.png`` (each task's curve and the hypernetwork's fit) and ``loss.png``
to ``--out``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.cli import progress
from common.tasks import SineTasks, parse_args, report
from common.torch_parts import count_trainable, scaled_linear_generator
from hypernn import hypernetize


def make_mlp(hidden: int = 64) -> nn.Sequential:
    """``x`` (1 value) -> ``y`` (1 value)."""
    return nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))


class SeparateMLPs(nn.Module):
    """The baseline with one MLP per task (``T`` times the parameters)."""

    def __init__(self, tasks: int) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(make_mlp() for _ in range(tasks))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(len(x), 1)
        for task, mlp in enumerate(self.mlps):
            rows = condition == task
            if rows.any():
                out[rows] = mlp(x[rows])
        return out


class SharedMLP(nn.Module):
    """The baseline that ignores the task id: it can only learn the tasks' average."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = make_mlp()

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def make_hypernetwork(tasks: int, embedding_dim: int, num_embeddings: int, init_std: float) -> nn.Module:
    """The whole MLP generated from a learned embedding of the task id."""
    return hypernetize(make_mlp(), embedding_dim=embedding_dim, num_embeddings=num_embeddings, layout="per_tensor",
                       num_conditions=tasks, generator_factory=scaled_linear_generator(init_std))  # fmt: skip


def train(model: nn.Module, tasks: SineTasks, args, desc: str) -> List[float]:
    """Adam on mean squared error over batches that mix all tasks; returns every step's loss."""
    rng = np.random.default_rng(args.seed)  # the same batches for every model
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    losses = []
    with progress(range(args.steps), desc=desc, quiet=args.quiet, unit="step") as bar:
        for _ in bar:
            x, task, y = (torch.from_numpy(a) for a in tasks.sample(args.batch_size, rng))
            loss = F.mse_loss(model(x, condition=task), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    return losses


@torch.no_grad()
def test_mse(model: nn.Module, tasks: SineTasks) -> float:
    """Mean squared error over a fixed grid of every task."""
    errors = []
    for task in range(len(tasks)):
        x, y = (torch.from_numpy(a) for a in tasks.grid(task))
        errors.append(F.mse_loss(model(x, condition=torch.full((len(x),), task)), y).item())
    return float(np.mean(errors))


def fits(hnet: nn.Module, tasks: SineTasks) -> List[np.ndarray]:
    """The hypernetwork's prediction on each task's grid, one weight set per task."""
    with torch.no_grad():
        return [hnet(torch.from_numpy(tasks.grid(t)[0]), condition=torch.tensor(t)).numpy() for t in range(len(tasks))]


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train the hypernetwork and both baselines; print the comparison and the summary line."""
    args = parse_args(__doc__.splitlines()[0], "multitask_torch", argv)
    tasks = SineTasks.draw(args.tasks, seed=args.seed)
    torch.manual_seed(args.seed)
    models = {"hypernetwork": make_hypernetwork(args.tasks, args.embedding_dim, args.num_embeddings, args.init_std),
              "separate MLPs": SeparateMLPs(args.tasks), "shared MLP": SharedMLP()}  # fmt: skip
    results: Dict[str, Any] = {"losses": {}, "mse": {}, "params": {}}
    for name, model in models.items():
        results["losses"][name] = train(model, tasks, args, desc=name)
        results["mse"][name] = test_mse(model, tasks)
        results["params"][name] = count_trainable(model)
    report("multitask_torch", results, fits(models["hypernetwork"], tasks), tasks, args)
    results["model"] = models["hypernetwork"]
    return results


if __name__ == "__main__":
    main()
