"""Two gloo processes on this machine (file store, no network): DDP and FSDP2 train a
hypernetwork on different data per rank and end with identical parameters, equal to one
process training on both ranks' data."""

import os

import pytest
import torch

import dist_workers
from spawning import spawn_and_wait

pytestmark = pytest.mark.distributed

STEPS = 3


def run(worker, tmp_path, dynamic):
    spawn_and_wait(worker, (2, str(tmp_path / "store"), str(tmp_path), STEPS, dynamic), nprocs=2)
    return [torch.load(os.path.join(tmp_path, f"rank{r}.pt")) for r in range(2)]


def reference(dynamic):
    """One process fed both ranks' batches (the mean of their losses), as DDP averages."""
    hnet = dist_workers.build(dynamic)
    optimizer = torch.optim.Adam(hnet.parameters(), lr=1e-2)
    for step in range(STEPS):
        optimizer.zero_grad()
        (sum(dist_workers.loss(hnet, dynamic, r, step) for r in range(2)) / 2).backward()
        optimizer.step()
    return {name: p.detach() for name, p in hnet.named_parameters()}


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_ddp_ranks_end_bit_identical_and_match_one_process(tmp_path, dynamic):
    rank0, rank1 = run(dist_workers.ddp_worker, tmp_path, dynamic)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    expected = reference(dynamic)
    for name, value in expected.items():
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_fsdp2_ranks_end_identical_and_match_one_process(tmp_path, dynamic):
    rank0, rank1 = run(dist_workers.fsdp_worker, tmp_path, dynamic)
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    expected = reference(dynamic)
    assert set(rank0) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6, msg=name)
