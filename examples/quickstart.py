"""hypernn quickstart: a CNN on scikit-learn's digits, as itself and as a hypernetwork.

One call, ``hypernetize(cnn, ...)``, turns a plain CNN into a hypernetwork: a small
embedding table plus a shared linear generator produce every weight of the CNN. Both
models are trained the same way (same data order, optimiser and epochs), and the script
prints their trainable parameter counts, test accuracies, train times and the
compression ratio (plain parameters / hypernetwork parameters).

Runs offline (the digits dataset ships with scikit-learn) in a few seconds on one CPU
thread::

    python examples/quickstart.py              # the demo (`make demo`)
    python examples/quickstart.py --help       # options
    python examples/quickstart.py --init default   # hyper-nn's plain init, for comparison

The hypernetwork starts each generated weight at the standard deviation of its own layer's
default init (``init="hyperfan"``, the library's default); hyper-nn's plain generator output
starts about 17x too large for this CNN and trains worse (``--init default``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm import tqdm

from hypernn import hypernetize

#: the train/test split is fixed, independent of ``--seed``, so seeds compare on one test set.
SPLIT_SEED = 0
TEST_SIZE = 0.25

Data = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load_data(test_size: float = TEST_SIZE, split_seed: int = SPLIT_SEED) -> Data:
    """The 1797 8x8 digit images as ``(x_train, y_train, x_test, y_test)``.

    Images are ``float32`` tensors of shape ``(n, 1, 8, 8)`` scaled to ``[0, 1]``; labels
    are ``int64``. The split is stratified and fixed by ``split_seed``.
    """
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, random_state=split_seed, stratify=labels
    )
    return x_train, y_train, x_test, y_test


def make_cnn(channels: Tuple[int, int] = (32, 64), hidden: int = 128, num_classes: int = 10) -> nn.Sequential:
    """A small CNN for 1x8x8 images: two conv+pool blocks, then a two-layer classifier."""
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> c1 x 4 x 4
        nn.Conv2d(c1, c2, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> c2 x 2 x 2
        nn.Flatten(),
        nn.Linear(c2 * 2 * 2, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )  # fmt: skip


def count_trainable(model: nn.Module) -> int:
    """Number of trainable values in ``model`` (for a hypernetwork: embeddings + generator)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    lr: float = 3e-3,
    batch_size: int = 64,
    desc: str = "train",
    quiet: bool = False,
) -> float:
    """Train ``model`` with Adam on cross-entropy; return the wall time in seconds.

    The minibatch order comes from its own generator seeded with ``seed``, so two models
    trained with one seed see exactly the same batches.
    """
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start = time.perf_counter()
    with tqdm(range(epochs), desc=desc, unit="epoch", disable=quiet, leave=True) as bar:
        for _ in bar:
            permutation = torch.randperm(len(x), generator=order)
            total = 0.0
            for i in range(0, len(x), batch_size):
                batch = permutation[i : i + batch_size]
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            bar.set_postfix(loss=f"{total / len(x):.4f}")
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of ``model`` on ``(x, y)`` in eval mode."""
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line; see ``--help``."""
    parser = argparse.ArgumentParser(
        description="Train a CNN on scikit-learn's digits, plain and hypernetized with hypernn, and compare.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=20, help="training epochs for each model")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation and batch order")
    parser.add_argument("--embedding-dim", type=int, default=8, help="width of each chunk embedding")
    parser.add_argument("--num-embeddings", type=int, default=256,
                        help="number of generated chunks (an upper bound with --layout per_tensor)")
    parser.add_argument("--layout", choices=("global", "per_tensor"), default="per_tensor",
                        help="how generated chunks map to the CNN's tensors")
    parser.add_argument("--init", choices=("hyperfan", "default"), default="hyperfan",
                        help="where generated weights start: each layer's own init std (hyperfan) or "
                             "hyper-nn's plain generator output (default)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="minibatch size")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (the report is still printed)")
    return parser.parse_args(argv)  # fmt: skip


def report(results: Dict[str, Any], layout_description: str) -> str:
    """The printed summary: the generated layout, a comparison table and the ratio."""
    rows = [
        ("model", "trainable params", "test accuracy", "train time"),
        ("plain CNN", f"{results['plain_params']:,}", f"{results['plain_accuracy']:.2%}", f"{results['plain_time']:.1f} s"),
        ("hypernetwork", f"{results['hyper_params']:,}", f"{results['hyper_accuracy']:.2%}", f"{results['hyper_time']:.1f} s"),
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    table = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    table.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(
        [
            "What the hypernetwork generates:",
            layout_description,
            "",
            *table,
            "",
            f"compression ratio (plain / hypernetwork params): {results['compression_ratio']:.1f}x",
            f"materialized CNN (hnet.materialize()) test accuracy: {results['materialized_accuracy']:.2%}",
        ]
    )


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the demo; return its results (accuracies, parameter counts, ratio, times).

    ``argv`` defaults to the command line. The returned dict has ``plain_accuracy``,
    ``hyper_accuracy``, ``materialized_accuracy``, ``plain_params``, ``hyper_params``,
    ``compression_ratio``, ``plain_time``, ``hyper_time`` and ``model`` (the trained
    hypernetwork).
    """
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = load_data()

    torch.manual_seed(args.seed)
    cnn = make_cnn()
    # The hypernetwork starts from a copy of `cnn` (which is left untouched) whose weights are
    # all generated: `hnet(x)` builds them from the embeddings, then runs the CNN with them.
    hnet = hypernetize(
        cnn,
        embedding_dim=args.embedding_dim,
        num_embeddings=args.num_embeddings,
        layout=args.layout,
        init=args.init,  # "hyperfan" (the library's default) starts every weight at its layer's own init std
    )

    plain_time = train(cnn, x_train, y_train, epochs=args.epochs, seed=args.seed, lr=args.lr,
                       batch_size=args.batch_size, desc="plain CNN", quiet=args.quiet)  # fmt: skip
    hyper_time = train(hnet, x_train, y_train, epochs=args.epochs, seed=args.seed, lr=args.lr,
                       batch_size=args.batch_size, desc="hypernetwork", quiet=args.quiet)  # fmt: skip

    plain_params, hyper_params = count_trainable(cnn), count_trainable(hnet)
    results: Dict[str, Any] = {
        "plain_accuracy": evaluate(cnn, x_test, y_test),
        "hyper_accuracy": evaluate(hnet, x_test, y_test),
        # The inverse: a plain nn.Sequential with the generated weights baked in.
        "materialized_accuracy": evaluate(hnet.materialize(), x_test, y_test),
        "plain_params": plain_params,
        "hyper_params": hyper_params,
        "compression_ratio": plain_params / hyper_params,
        "plain_time": plain_time,
        "hyper_time": hyper_time,
        "model": hnet,
    }
    print(report(results, hnet.layout.describe()))
    return results


if __name__ == "__main__":
    main()
