"""Time one training step of a ``torch.compile``d hypernetized MLP against the compiled hand-written twin.

The workload of ``torch_mlp_step.py`` (784-256-256-10 MLP, batch 128, every parameter
generated, default ``init="hyperfan"``, ``D=32, E=64`` unless told; the hand-written twin
embeds, generates, applies the start map (``shift + scale * raw``), cuts with one
``torch.split`` and calls ``F.linear``), with both modules wrapped in
``torch.compile`` (default inductor backend): forward and backward run compiled;
cross-entropy, ``Adam.step()`` and ``zero_grad()`` run eagerly, the same in both. Target
(issue 7): hypernn compiled at most 1.05x the compiled twin.

Compile time is excluded from the step times and reported separately: the wall time of the
first forward and backward of each (Dynamo tracing, AOTAutograd and inductor, whose C++
compilation runs in worker processes, hence wall time). inductor's on-disk cache is
pointed at a fresh temporary folder (unless ``TORCHINDUCTOR_CACHE_DIR`` is set), so the
hypernetwork, compiled first, compiles cold; the twin, compiled second, finds most of its
kernels cached (the same math), so with ``--rss`` its cold compile time is taken in its
RSS subprocess, with an empty cache of its own.

Before timing, the script asserts that the compiled hypernetwork and the compiled twin give
the same outputs, loss and gradients and the same parameters after 3 Adam steps (tolerances
relative to the outputs' scale: compiled kernels sum in another order). Timing interleaves
the two round by round and reports medians and the median per-round ratio; process CPU
time by default, torch on one thread. ``--rss``: each one's peak-RSS growth over 3 steps
after its first (compiling) step, each in a fresh subprocess.

Usage::

    python benchmarks/torch_compiled_step.py                      # ~1-2 min, most of it compiling
    python benchmarks/torch_compiled_step.py --rounds 21 --rss --json /tmp/compiled.json
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")


def fresh_inductor_cache() -> None:
    """Point inductor's on-disk cache at a new temporary folder (removed at exit)."""
    folder = tempfile.mkdtemp(prefix="hypernn-bench-inductor-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder


if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    fresh_inductor_cache()

import argparse
import json
import platform
import sys
import time
from typing import Callable, Dict, List

import torch
from torch import nn

from common import add_round_args, check_round_args, format_rows, interleaved_times, make_row, rss_growth
from common import rss_in_subprocesses, write_json
from torch_mlp_step import BATCH, build_hypernet, check_equivalence, copy_initial_values, make_batches, make_optimizer
from torch_mlp_step import train_step
from twins import SIZES, HandWrittenHypernet

TARGET_RATIO = 1.05
IMPLS = ("hypernn", "hand")
BASELINE = "hand-written twin, torch.compile"
RSS_METHOD = "peak RSS growth over 3 steps after the compiling one, fresh process (VmHWM after clear_refs)"


def build_compiled(embedding_dim: int, num_embeddings: int) -> Dict[str, nn.Module]:
    """``torch.compile`` of the hypernetwork and of the hand-written twin (same initial values)."""
    hnet = build_hypernet(embedding_dim, num_embeddings)
    hand = HandWrittenHypernet(embedding_dim, num_embeddings)
    assert [(s.offset, s.shape) for s in hnet.layout.slots] == list(zip(hand.offsets, hand.shapes)), "layouts differ"
    copy_initial_values(hnet, hand)
    return {"hypernn": torch.compile(hnet), "hand": torch.compile(hand)}


def compile_seconds(model: nn.Module, batch) -> float:
    """Wall time of the first (compiling) forward and backward; the gradients are dropped."""
    start = time.perf_counter()
    x, y = batch
    torch.nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def runner(model: nn.Module, batches) -> Callable[[], object]:
    optimizer, state = make_optimizer(model), {"i": 0}

    def run() -> object:
        state["i"] += 1
        return train_step(model, optimizer, batches[state["i"] % len(batches)])

    return run


def rss_worker(impl: str, embedding_dim: int, num_embeddings: int, cold: bool) -> Dict:
    """In a fresh process: compile one implementation (with an empty inductor cache if
    ``cold``), time that, then its peak-RSS growth over the next 3 steps."""
    if cold:
        fresh_inductor_cache()
    model = build_compiled(embedding_dim, num_embeddings)[impl]
    batches = make_batches(4)
    seconds = compile_seconds(model, batches[0])
    result = rss_growth(runner(model, batches))
    result["compile_seconds"] = seconds
    return result


def benchmark(args: argparse.Namespace) -> List[Dict]:
    models = build_compiled(args.embedding_dim, args.num_embeddings)
    batches = make_batches(8)
    compile_s = {name: compile_seconds(model, batches[0]) for name, model in models.items()}
    scale = float(models["hand"](batches[0][0]).detach().abs().max())
    check = check_equivalence(models["hypernn"], models["hand"], batches, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
    runs = {name: runner(model, batches) for name, model in models.items()}
    times = interleaved_times(runs, args.rounds, args.steps, args.warmup, args.clock)
    cold_twin: Dict = {}
    memory, twin_compile = {}, "shares the first's inductor cache"
    if args.rss:
        extra = ["--embedding-dim", str(args.embedding_dim), "--num-embeddings", str(args.num_embeddings)]
        memory = rss_in_subprocesses(__file__, ["hypernn"], extra)
        memory.update(rss_in_subprocesses(__file__, ["hand"], [*extra, "--cold"], details=cold_twin))
        if "compile_seconds" in cold_twin:
            compile_s["hand_cold"] = cold_twin["compile_seconds"]
            twin_compile = f"{compile_s['hand_cold']:.1f} s cold in its own process"
    notes = (f"compile (first fwd+bwd, wall): hypernn {compile_s['hypernn']:.1f} s cold, "
             f"twin {compile_s['hand']:.1f} s after it ({twin_compile})")
    row = make_row("static MLP step, torch.compile", "hypernn, torch.compile", BASELINE, times, "hypernn", "hand",
                   TARGET_RATIO, memory, RSS_METHOD, notes=notes)  # fmt: skip
    row.update(compile_seconds=compile_s, equivalence=check, times=times, embedding_dim=args.embedding_dim,
               num_embeddings=args.num_embeddings, clock=args.clock, rounds=args.rounds, steps_per_round=args.steps)  # fmt: skip
    return [row]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a torch.compile'd training step of a hypernetized 784-256-256-10 MLP (batch 128) against "
        f"the compiled hand-written twin (target <= {TARGET_RATIO}x); report compile times.",
    )
    parser.add_argument("--embedding-dim", type=int, default=32, metavar="D", help="embedding width (default: 32)")
    parser.add_argument("--num-embeddings", type=int, default=64, metavar="E", help="chunk embeddings (default: 64)")
    add_round_args(parser, rounds=15, steps=20, warmup=10)
    parser.add_argument("--rss", action="store_true",
                        help="also measure each implementation's peak-RSS growth over 3 steps in a fresh subprocess")
    parser.add_argument("--rss-worker", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_round_args(parser, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.rss_worker:
        print(json.dumps(rss_worker(args.rss_worker, args.embedding_dim, args.num_embeddings, args.cold)))
        return 0
    print(f"torch {torch.__version__}, {platform.machine()}, threads={torch.get_num_threads()}, torch.compile "
          f"(inductor), MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, Adam (eager)")  # fmt: skip
    rows = benchmark(args)
    print(format_rows(rows), flush=True)
    if args.json:
        meta = {"torch": torch.__version__, "python": sys.version.split()[0], "threads": torch.get_num_threads(),
                "sizes": SIZES, "batch": BATCH}  # fmt: skip
        write_json(args.json, meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
