"""Where should a hypernetwork's weights start? A CNN on scikit-learn's digits, a few hundred steps.

Compares the test accuracy reached after ``--steps`` Adam steps by

* the plain CNN (the reference),
* a hypernetwork with ``init="default"`` (hyper-nn's plain generator output),
* a hypernetwork with ``init="hyperfan"`` (hypernn's default: every generated tensor starts
  at its own layer's init std),
* a hypernetwork warm-started (``warm_start=True``) from a CNN trained for
  ``--pretrain-steps``, generating every weight, and
* the same warm start generating only rank-``--rank`` deltas (``low_rank=``),

each over ``--repeats`` seeds, and prints a markdown table (mean and spread; also written to
``<--out>/results.md``) and a summary line. Runs offline in about 15 seconds on one CPU
thread::

    python examples/init_experiment.py
    python examples/init_experiment.py --steps 600 --repeats 5 --seed 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common.cli import example_parser, output_dir, summary_line  # noqa: E402
from quickstart import evaluate, load_data, make_cnn  # noqa: E402  (the same data and CNN as the quickstart)

from hypernn import hypernetize  # noqa: E402


class Run(NamedTuple):
    """One trained model: accuracy before and after training, trainable parameters, time."""

    start_accuracy: float
    accuracy: float
    params: int
    seconds: float


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, seed: int, lr: float,
                batch_size: int) -> float:  # fmt: skip
    """``steps`` Adam steps on cross-entropy over seeded shuffled minibatches; returns seconds."""
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    start, permutation, position = time.perf_counter(), torch.randperm(len(x), generator=order), 0
    for _ in range(steps):
        if position + batch_size > len(x):
            permutation, position = torch.randperm(len(x), generator=order), 0
        batch = permutation[position : position + batch_size]
        position += batch_size
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_one(build: Callable[[int], nn.Module], data, args: argparse.Namespace, seed: int) -> Run:
    x_train, y_train, x_test, y_test = data
    model = build(seed)
    start_accuracy = evaluate(model, x_test, y_test)
    seconds = train_steps(model, x_train, y_train, steps=args.steps, seed=seed, lr=args.lr, batch_size=args.batch_size)
    return Run(start_accuracy, evaluate(model, x_test, y_test), trainable(model), seconds)


def builders(data, args: argparse.Namespace) -> Dict[str, Callable[[int], nn.Module]]:
    """The compared models, each built from a seed."""
    x_train, y_train = data[0], data[1]
    options = dict(embedding_dim=args.embedding_dim, num_embeddings=args.num_embeddings, layout=args.layout)

    def fresh_cnn(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return make_cnn()

    def pretrained_cnn(seed: int) -> nn.Module:
        cnn = fresh_cnn(seed)
        train_steps(cnn, x_train, y_train, steps=args.pretrain_steps, seed=seed + 10_000, lr=args.lr,
                    batch_size=args.batch_size)  # fmt: skip
        return cnn.eval()

    return {
        "plain CNN": fresh_cnn,
        'hypernetwork, init="default" (hyper-nn)': lambda s: hypernetize(fresh_cnn(s), init="default", **options),
        'hypernetwork, init="hyperfan"': lambda s: hypernetize(fresh_cnn(s), **options),
        f"hypernetwork, warm start from a CNN trained {args.pretrain_steps} steps":
            lambda s: hypernetize(pretrained_cnn(s), warm_start=True, **options),
        f"hypernetwork, warm start + low_rank={args.rank}":
            lambda s: hypernetize(pretrained_cnn(s), low_rank=args.rank, **options),
    }  # fmt: skip


def _cell(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.2%}" if len(values) == 1 else f"{mean:.2%} ± {statistics.pstdev(values):.2%}"


def table(results: Dict[str, List[Run]], args: argparse.Namespace) -> str:
    """The results as a markdown table."""
    lines = [
        f"| model ({args.steps} steps, {len(next(iter(results.values())))} seeds) | trainable params | "
        f"accuracy at step 0 | final accuracy | train time |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        lines.append(f"| {name} | {runs[0].params:,} | {_cell([r.start_accuracy for r in runs])} | "
                     f"{_cell([r.accuracy for r in runs])} | {statistics.fmean(r.seconds for r in runs):.1f} s |")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The common example options (``--seed`` is the first seed: runs use seed, seed+1, ...;
    ``--steps``: Adam steps per model; ``--quiet``: accepted, there are no progress bars)
    and this experiment's."""
    parser = example_parser(
        "Compare where a hypernetwork's weights start (hyperfan, hyper-nn's default, warm start) on a CNN for "
        "scikit-learn's digits; prints a markdown table.", name="init_experiment", length="steps", default_length=300,
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="seeds per model")
    parser.add_argument("--pretrain-steps", type=int, default=100, help="steps of the CNN that warm starts begin from")
    parser.add_argument("--rank", type=int, default=4, help="rank of the low-rank deltas")
    parser.add_argument("--embedding-dim", type=int, default=8, help="width of each chunk embedding")
    parser.add_argument("--num-embeddings", type=int, default=256, help="number of generated chunks (upper bound)")
    parser.add_argument("--layout", choices=("global", "per_tensor"), default="per_tensor", help="chunk layout")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="minibatch size")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    return parser.parse_args(argv)  # fmt: skip


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, List[Run]]:
    """Run the comparison, print the table, return ``{model: [Run per seed]}``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data()
    results = {name: [run_one(build, data, args, args.seed + i) for i in range(args.repeats)]
               for name, build in builders(data, args).items()}  # fmt: skip
    text = table(results, args)
    (output_dir(args.out) / "results.md").write_text(text + "\n")
    print(text)
    final = [statistics.fmean(r.accuracy for r in runs) for runs in results.values()]
    print(summary_line("init_experiment", **dict(zip(("plain", "default", "hyperfan", "warm", "warm_low_rank"),
                                                     (f"{a:.2%}" for a in final)))))  # fmt: skip
    return results


if __name__ == "__main__":
    main()
