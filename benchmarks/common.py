"""Pieces every benchmark script shares: clocks, round arguments, interleaved timing,
peak-RSS measurement in fresh processes, JSON output.

    >>> sorted(CLOCKS)
    ['cpu', 'wall']
    >>> median_ratios({"a": [2.0, 3.0, 4.0], "b": [1.0, 2.0, 1.0]}, "a", "b")
    (2.0, [2.0, 1.5, 4.0])
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "CLOCKS",
    "add_round_args",
    "check_round_args",
    "format_rows",
    "interleaved_times",
    "make_row",
    "median_ratios",
    "proc_status_kib",
    "rss_growth",
    "rss_in_subprocesses",
    "write_json",
]

#: cpu: process CPU time (ignores time other processes take from this one); wall: elapsed
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}

#: how the suite's scripts name the peak-RSS measure in their JSON (the runner prints it)
RSS_METHOD = "peak RSS growth over 3 steps in a fresh process (VmHWM after clear_refs)"


def add_round_args(parser: argparse.ArgumentParser, rounds: int, steps: int, warmup: int) -> None:
    """The options every script takes: ``--rounds/--steps/--warmup/--clock/--json``."""
    parser.add_argument("--rounds", type=int, default=rounds, help=f"timed rounds (default: {rounds})")
    parser.add_argument("--steps", type=int, default=steps, help=f"calls per round and implementation (default: {steps})")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed calls per implementation (default: {warmup})")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                        help="cpu: process CPU time (default; ignores time preempted by other processes); wall: elapsed")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")


def check_round_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse non-positive ``--rounds``/``--steps`` and a negative ``--warmup``."""
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--rounds and --steps must be >= 1, --warmup >= 0")


def interleaved_times(runs: Mapping[str, Callable[[], Any]], rounds: int, steps: int, warmup: int,
                      clock: str = "cpu", finish: Callable[[Any], Any] = lambda result: None) -> Dict[str, List[float]]:  # fmt: skip
    """Milliseconds per call of every ``runs[name]()``, one value per round.

    Each implementation first runs ``warmup`` untimed calls; then every round times
    ``steps`` consecutive calls of each, rotating which goes first (so that none always
    runs on a cache warmed, or a CPU slowed, by another). ``finish`` is applied to the
    last call's result inside the timed region (e.g. ``jax.block_until_ready``).
    """
    now = CLOCKS[clock]
    for run in runs.values():
        for _ in range(warmup):
            finish(run())
    names = list(runs)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        gc.collect()
        for name in names[shift:] + names[:shift]:
            run = runs[name]
            start = now()
            result = None
            for _ in range(steps):
                result = run()
            finish(result)
            times[name].append((now() - start) * 1e3 / steps)
    return times


def median_ratios(times: Mapping[str, Sequence[float]], name: str, baseline: str) -> Tuple[float, List[float]]:
    """``(median of the per-round ratios name/baseline, the per-round ratios)``."""
    ratios = [a / b for a, b in zip(times[name], times[baseline])]
    return statistics.median(ratios), ratios


def proc_status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` value (KiB) from ``/proc/self/status`` (Linux)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_growth(step: Callable[[], Any], steps: int = 3) -> Dict[str, int]:
    """Peak RSS above the current RSS over ``steps`` calls of ``step`` (call in a fresh process,
    after building and warming up what ``step`` runs).

    ``echo 5 > /proc/self/clear_refs`` resets the peak-RSS mark (``VmHWM``) to the current
    RSS, so the peaks of imports and construction do not hide the steps' peak (as they do
    with ``getrusage``'s ``ru_maxrss``). Coarse: includes malloc's caching, misses memory
    malloc had already kept.
    """
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = proc_status_kib("VmRSS")
    for _ in range(steps):
        step()
    peak = proc_status_kib("VmHWM")
    return {"rss_before_kib": before, "peak_rss_kib": peak, "delta_bytes": (peak - before) * 1024}


def rss_in_subprocesses(script: str, impls: Sequence[str], extra_args: Sequence[str] = (),
                        details: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:  # fmt: skip
    """Run ``script --rss-worker IMPL *extra_args`` for every implementation, each in its own
    process, and collect the ``delta_bytes`` its last output line (JSON) reports (the whole
    line goes into ``details`` if given: the last worker's).

    A worker that fails gives the reason (a string) instead of a number.
    """
    out: Dict[str, Any] = {}
    for impl in impls:
        command = [sys.executable, os.path.abspath(script), "--rss-worker", impl, *extra_args]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            out[impl] = f"RSS worker failed: {(result.stderr.strip().splitlines() or ['?'])[-1][:200]}"
            continue
        report = json.loads(result.stdout.strip().splitlines()[-1])
        out[impl] = report["delta_bytes"]
        if details is not None:
            details.update(report)
    return out


def write_json(path: str, meta: Dict[str, Any], results: List[Dict[str, Any]]) -> None:
    """Write ``{"meta": ..., "results": ...}`` to ``path`` and say so."""
    with open(path, "w") as handle:
        json.dump({"meta": meta, "results": results}, handle, indent=2)
    print(f"wrote {path}")


def make_row(workload: str, implementation: str, baseline: str, times: Mapping[str, Sequence[float]], impl_key: str,
             baseline_key: str, target: Optional[float], memory: Optional[Mapping[str, Any]] = None, memory_method: str = RSS_METHOD,
             target_kind: str = "<=", notes: str = "") -> Dict[str, Any]:  # fmt: skip
    """One row of the suite's table, as the new scripts write it to JSON (``run_all.py``
    reads it): the median per-round ratio ``times[impl_key] / times[baseline_key]``,
    both medians, the target (``ratio <= target``; ``None``: none) and the peak memory of both."""
    ratio, ratios = median_ratios(times, impl_key, baseline_key)
    memory = memory or {}
    return {
        "workload": workload, "implementation": implementation, "baseline": baseline,
        "ratio": ratio, "per_round_ratios": ratios,
        "ms": statistics.median(times[impl_key]), "baseline_ms": statistics.median(times[baseline_key]),
        "target": target, "target_kind": target_kind,
        "target_met": None if target is None else ratio <= target if target_kind == "<=" else ratio >= target,
        "memory": memory.get(impl_key), "baseline_memory": memory.get(baseline_key), "memory_method": memory_method,
        "notes": notes,
    }  # fmt: skip


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as plain text lines (each script's own report)."""

    def mib(value: Any) -> str:
        return f"{value / 2**20:.2f} MiB" if isinstance(value, (int, float)) else "n/a"

    lines = []
    for row in rows:
        ratios = sorted(row["per_round_ratios"])
        verdict = ("no target" if row["target"] is None else
                   f"target {row['target_kind']} {row['target']:.2f}x: {'MET' if row['target_met'] else 'MISSED'}")
        lines.append(
            f"  {row['workload']}: {row['implementation']} {row['ms']:.3f} ms vs {row['baseline']} "
            f"{row['baseline_ms']:.3f} ms: {row['ratio']:.3f}x (median per-round ratio; range "
            f"{ratios[0]:.3f}-{ratios[-1]:.3f}); {verdict}; "
            f"memory {mib(row['memory'])} vs {mib(row['baseline_memory'])}"
            + (f" [{row['notes']}]" if row.get("notes") else "")
        )
    return "\n".join(lines)
