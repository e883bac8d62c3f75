"""Start worker processes for the distributed tests, with a deadline.

``torch.multiprocessing.spawn(join=True)`` waits forever when a gloo worker hangs; a hang
must fail its test with the workers' exit codes, not stall the whole suite.
"""

import time
from typing import Callable, Tuple

import pytest
import torch.multiprocessing as mp

DEADLINE_S = 240.0


def spawn_and_wait(worker: Callable, args: Tuple, nprocs: int, timeout: float = DEADLINE_S) -> None:
    """Run ``worker(rank, *args)`` in ``nprocs`` fresh processes; fail the test after ``timeout`` s."""
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            codes = [process.exitcode for process in context.processes]
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            for process in context.processes:
                process.join(10)
            pytest.fail(f"workers did not finish within {timeout:.0f} s (exit codes {codes}; None = still running)")
