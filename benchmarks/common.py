"""Pieces every benchmark script shares: clocks, round arguments, JSON output.

    >>> sorted(CLOCKS)
    ['cpu', 'wall']
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Dict, List

__all__ = ["CLOCKS", "check_round_args", "write_json"]

#: cpu: process CPU time (ignores time other processes take from this one); wall: elapsed
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def check_round_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse non-positive ``--rounds``/``--steps`` and a negative ``--warmup``."""
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--rounds and --steps must be >= 1, --warmup >= 0")


def write_json(path: str, meta: Dict[str, Any], results: List[Dict[str, Any]]) -> None:
    """Write ``{"meta": ..., "results": ...}`` to ``path`` and say so."""
    with open(path, "w") as handle:
        json.dump({"meta": meta, "results": results}, handle, indent=2)
    print(f"wrote {path}")
