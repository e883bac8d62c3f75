"""Eval with reuse: a static hypernetwork's inference forward against the plain model's.

In ``eval()`` mode under ``torch.no_grad()`` a static hypernetwork reuses its generated
weights until its own parameters change (``hypernn/transform/torch/reuse.py``), so its
forward should cost what the plain model's does. The baseline is the plain model with the
same weights, ``hnet.materialize()`` (a copy of the model class with the generated weights
baked in as parameters), also in ``eval()`` under ``torch.no_grad()``. Target (issue 7): at
most 1.05x the plain model's forward.

Models (``--model``): ``mlp`` (784-256-256-10, batch 128, the static MLP workload),
``deep`` (48 x (Linear(64, 64), ReLU), batch 32, the many-small-tensors workload) and
``transformer`` (2-layer ``nn.TransformerEncoder``, d_model 64, batch 32, seq 16, attention
projections generated); ``D=32, E=64``, default ``init="hyperfan"`` (its start map runs
with the generator, once per reuse).

Before timing, the script asserts equal outputs and that the weight generator ran once
over many forwards (a forward hook counts its calls). Timing interleaves the two round by
round; process CPU time by default, torch on one thread. ``--rss``: each one's peak-RSS
growth over its first 3 forwards (the hypernetwork's first generates), each in a fresh
subprocess.

Usage::

    python benchmarks/torch_eval_reuse.py                         # ~30 s
    python benchmarks/torch_eval_reuse.py --model deep --rounds 21 --rss --json /tmp/reuse.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import sys
from typing import Callable, Dict, List

import torch
from torch import nn

from hypernn import hypernetize
from common import add_round_args, check_round_args, format_rows, interleaved_times, make_row, rss_growth
from common import rss_in_subprocesses, write_json
from twins import SIZES, build_mlp

TARGET_RATIO = 1.05
IMPLS = ("hypernn", "plain")
MODELS = {
    "mlp": "static MLP 784-256-256-10, batch 128",
    "deep": "48-layer MLP width 64, batch 32",
    "transformer": "transformer (attention projections generated), batch 32 x 16",
}
BASELINE = "plain model (hnet.materialize()), eval, no_grad"


def build(model: str, embedding_dim: int, num_embeddings: int, seed: int = 0):
    """``(hnet, plain, inputs)`` for one model, both in eval mode."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(1)
    if model == "mlp":
        hnet = hypernetize(build_mlp(SIZES), embedding_dim=embedding_dim, num_embeddings=num_embeddings)
        x = torch.randn(128, SIZES[0], generator=generator)
    elif model == "deep":
        hnet = hypernetize(build_mlp((64,) * 49, final_relu=True), embedding_dim=embedding_dim,
                           num_embeddings=num_embeddings)  # fmt: skip
        x = torch.randn(32, 64, generator=generator)
    else:
        from torch_transformer_step import TARGETS, build_model

        hnet = hypernetize(build_model(), embedding_dim=embedding_dim, num_embeddings=num_embeddings, targets=TARGETS)
        x = torch.randn(32, 16, 64, generator=generator)
    plain = hnet.materialize()
    hnet.eval()
    plain.eval()
    return hnet, plain, x


def check(hnet: nn.Module, plain: nn.Module, x: torch.Tensor) -> Dict[str, float]:
    """Equal outputs; the generator runs once over 5 forwards."""
    calls = []
    handle = hnet.weight_generator.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            outputs = [hnet(x) for _ in range(5)]
            expected = plain(x)
    finally:
        handle.remove()
    for out in outputs:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5, msg="outputs differ from the plain model's")
    assert len(calls) == 1, f"the generator ran {len(calls)} times over 5 eval forwards: weights not reused"
    return {"max|out diff|": float((outputs[-1] - expected).abs().max()), "generator calls over 5 forwards": len(calls)}


def runner(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def rss_worker(impl: str, model: str, embedding_dim: int, num_embeddings: int) -> Dict:
    hnet, plain, x = build(model, embedding_dim, num_embeddings)
    return rss_growth(runner(hnet if impl == "hypernn" else plain, x))


def benchmark(args: argparse.Namespace) -> List[Dict]:
    rows = []
    for model in args.model:
        hnet, plain, x = build(model, args.embedding_dim, args.num_embeddings)
        equivalence = check(hnet, plain, x)
        runs = {"hypernn": runner(hnet, x), "plain": runner(plain, x)}
        times = interleaved_times(runs, args.rounds, args.steps, args.warmup, args.clock)
        memory = {}
        if args.rss:
            memory = rss_in_subprocesses(__file__, IMPLS, ["--model", model, "--embedding-dim", str(args.embedding_dim),
                                                            "--num-embeddings", str(args.num_embeddings)])  # fmt: skip
        row = make_row(f"eval with reuse: {MODELS[model]}, forward", "hypernn eval, no_grad", BASELINE, times,
                       "hypernn", "plain", TARGET_RATIO, memory)  # fmt: skip
        row.update(model=model, times=times, equivalence=equivalence, clock=args.clock, rounds=args.rounds,
                   steps_per_round=args.steps)  # fmt: skip
        rows.append(row)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the eval()/no_grad forward of static hypernetworks, which reuse their generated weights, "
        f"against the plain model's forward (target <= {TARGET_RATIO}x).",
    )
    parser.add_argument("--model", choices=tuple(MODELS), nargs="+", default=list(MODELS),
                        help="which models (default: all)")
    parser.add_argument("--embedding-dim", type=int, default=32, metavar="D", help="embedding width (default: 32)")
    parser.add_argument("--num-embeddings", type=int, default=64, metavar="E", help="chunk embeddings (default: 64)")
    add_round_args(parser, rounds=15, steps=50, warmup=10)
    parser.add_argument("--rss", action="store_true",
                        help="also measure each one's peak-RSS growth over 3 forwards in a fresh subprocess")
    parser.add_argument("--rss-worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_round_args(parser, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.rss_worker:
        print(json.dumps(rss_worker(args.rss_worker, args.model[0], args.embedding_dim, args.num_embeddings)))
        return 0
    print(f"torch {torch.__version__}, {platform.machine()}, threads={torch.get_num_threads()}, eval() + no_grad "
          f"forwards, D={args.embedding_dim} E={args.num_embeddings}")  # fmt: skip
    rows = benchmark(args)
    print(format_rows(rows), flush=True)
    if args.json:
        meta = {"torch": torch.__version__, "python": sys.version.split()[0], "threads": torch.get_num_threads()}
        write_json(args.json, meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
