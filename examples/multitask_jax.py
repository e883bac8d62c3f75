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

from common.cli import progress
from common.flax_parts import count_values, scaled_nnx_generator
from common.tasks import SineTasks, parse_args, report
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


def fits(hnet: nnx.Module, tasks: SineTasks) -> List[np.ndarray]:
    """The hypernetwork's prediction on each task's grid, one weight set per task."""
    return [np.asarray(hnet(jnp.asarray(tasks.grid(t)[0]), condition=jnp.asarray(t))) for t in range(len(tasks))]


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train the hypernetwork and both baselines; print the comparison and the summary line."""
    args = parse_args(__doc__.splitlines()[0], "multitask_jax", argv)
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
    report("multitask_jax", results, fits(models["hypernetwork"], tasks), tasks, args)
    results["model"] = models["hypernetwork"]
    return results


if __name__ == "__main__":
    main()
