"""One hypernetwork, many tasks: a task id picks the weights (JAX, flax NNX).

The JAX twin of ``multitask_torch.py``: ``hypernetize(mlp, num_conditions=T, rngs=...)``
learns an embedding per task and generates the whole MLP from it; ``hnet(x,
condition=task_ids)`` runs every sample with its own task's weights (under ``jax.vmap``).
Trained with optax on T sine-wave regression tasks (``common/tasks.py``) and compared
with T separate MLPs and with one shared MLP that ignores the task id.

    python examples/multitask_jax.py                # ~1 minute on CPU
    python examples/multitask_jax.py --tasks 16

Writes ``tasks.png`` (each task's curve and the hypernetwork's fit) and ``loss.png``
to ``--out``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common.cli import example_parser, output_dir, progress, summary_line
from common.flax_parts import count_values, scaled_nnx_generator
from common.plots import plot_curves, plot_line_panels
from common.tasks import SineTasks
from hypernn import hypernetize


class MLP(nnx.Module):
    """``x`` (1 value) -> ``y`` (1 value)."""

    def __init__(self, hidden: int = 64, *, rngs: nnx.Rngs) -> None:
        self.layer1 = nnx.Linear(1, hidden, rngs=rngs)
        self.layer2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.layer3 = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layer3(jnp.tanh(self.layer2(jnp.tanh(self.layer1(x)))))


class SeparateMLPs(nnx.Module):
    """The baseline with one MLP per task (``T`` times the parameters)."""

    def __init__(self, tasks: int, *, rngs: nnx.Rngs) -> None:
        self.mlps = nnx.List([MLP(rngs=rngs) for _ in range(tasks)])

    def __call__(self, x: jax.Array, condition: jax.Array) -> jax.Array:
        every = jnp.stack([mlp(x) for mlp in self.mlps])  # (T, B, 1): small enough to run them all
        return every[condition, jnp.arange(len(x))]


class SharedMLP(nnx.Module):
    """The baseline that ignores the task id: it can only learn the tasks' average."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.mlp = MLP(rngs=rngs)

    def __call__(self, x: jax.Array, condition: jax.Array) -> jax.Array:
        return self.mlp(x)


def make_hypernetwork(tasks: int, embedding_dim: int, num_embeddings: int, init_std: float, seed: int) -> nnx.Module:
    """The whole MLP generated from a learned embedding of the task id."""
    return hypernetize(MLP(rngs=nnx.Rngs(seed)), embedding_dim=embedding_dim, num_embeddings=num_embeddings,
                       layout="per_tensor", num_conditions=tasks, generator_factory=scaled_nnx_generator(init_std),
                       rngs=nnx.Rngs(seed + 1))  # fmt: skip


def mse(model: nnx.Module, x: jax.Array, task: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x, condition=task) - y) ** 2)


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, task: jax.Array, y: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(mse)(model, x, task, y)
    optimizer.update(model, grads)
    return loss


def train(model: nnx.Module, tasks: SineTasks, args, desc: str) -> List[float]:
    """Adam with cosine decay on mean squared error over batches that mix all tasks."""
    rng = np.random.default_rng(args.seed)  # the same batches for every model
    optimizer = nnx.Optimizer(model, optax.adam(optax.cosine_decay_schedule(args.lr, args.steps)), wrt=nnx.Param)
    losses = []
    with progress(range(args.steps), desc=desc, quiet=args.quiet, unit="step") as bar:
        for _ in bar:
            x, task, y = (jnp.asarray(a) for a in tasks.sample(args.batch_size, rng))
            losses.append(float(train_step(model, optimizer, x, task, y)))
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    return losses


def test_mse(model: nnx.Module, tasks: SineTasks) -> float:
    """Mean squared error over a fixed grid of every task."""
    grids = [tasks.grid(task) for task in range(len(tasks))]
    x = jnp.asarray(np.concatenate([g[0] for g in grids]))
    y = jnp.asarray(np.concatenate([g[1] for g in grids]))
    task = jnp.repeat(jnp.arange(len(tasks)), len(grids[0][0]))
    return float(nnx.jit(mse)(model, x, task, y))


def plot_fits(hnet: nnx.Module, tasks: SineTasks, path) -> Any:
    """Each task's true curve and the hypernetwork's prediction (one weight set per task)."""
    panels = []
    for task in range(len(tasks)):
        x, y = tasks.grid(task)
        fit = np.asarray(hnet(jnp.asarray(x), condition=jnp.asarray(task)))
        panels.append((f"task {task}", x[:, 0], {"task": y[:, 0], "hypernetwork": fit[:, 0]}))
    return plot_line_panels(panels, path, suptitle="one hypernetwork, one task id per curve")


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = example_parser(__doc__.splitlines()[0], name="multitask_jax", length="steps", default_length=1500)
    parser.add_argument("--tasks", type=int, default=8, help="number of sine-wave tasks")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per step (tasks mixed)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (cosine decay to 0)")
    parser.add_argument("--embedding-dim", type=int, default=8, help="width of each chunk embedding")
    parser.add_argument("--num-embeddings", type=int, default=64, help="upper bound on the number of chunks")
    parser.add_argument("--init-std", type=float, default=0.3, help="starting std of the generated weights")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train the hypernetwork and both baselines; print the comparison and the summary line."""
    args = parse_args(argv)
    tasks = SineTasks.draw(args.tasks, seed=args.seed)
    models = {"hypernetwork": make_hypernetwork(args.tasks, args.embedding_dim, args.num_embeddings, args.init_std,
                                                args.seed),
              "separate MLPs": SeparateMLPs(args.tasks, rngs=nnx.Rngs(args.seed + 2)),
              "shared MLP": SharedMLP(rngs=nnx.Rngs(args.seed + 3))}  # fmt: skip
    results: Dict[str, Any] = {"losses": {}, "mse": {}, "params": {}}
    for name, model in models.items():
        results["losses"][name] = train(model, tasks, args, desc=name)
        results["mse"][name] = test_mse(model, tasks)
        results["params"][name] = count_values(nnx.state(model, nnx.Param))
    for name in models:
        print(f"{name:>14}: test MSE {results['mse'][name]:.4f}, {results['params'][name]:,} trainable values")
    out = output_dir(args.out)
    results["files"] = {
        "tasks": plot_fits(models["hypernetwork"], tasks, out / "tasks.png"),
        "loss": plot_curves(results["losses"], out / "loss.png", xlabel="step", ylabel="MSE", title="training loss",
                            smooth=min(50, max(1, args.steps // 5))),
    }  # fmt: skip
    results["model"] = models["hypernetwork"]
    print(summary_line("multitask_jax", tasks=args.tasks, hypernetwork_mse=f"{results['mse']['hypernetwork']:.4f}",
                       separate_mse=f"{results['mse']['separate MLPs']:.4f}",
                       shared_mse=f"{results['mse']['shared MLP']:.4f}",
                       hypernetwork_params=results["params"]["hypernetwork"],
                       separate_params=results["params"]["separate MLPs"]))  # fmt: skip
    return results


if __name__ == "__main__":
    main()
