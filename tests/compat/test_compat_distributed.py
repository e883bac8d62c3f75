"""Plain DDP on two gloo processes trains hyper-nn API hypernetworks (hyper-nn 0.2's unused
device dummy parameter made the second iteration fail); ranks end bit-identical and equal
to one process fed both ranks' batches."""

import os

import pytest
import torch

import compat_dist_workers as workers
from spawning import spawn_and_wait

pytestmark = pytest.mark.distributed

STEPS = 3


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_plain_ddp_trains_hyper_nn_api_hypernetworks(tmp_path, dynamic):
    spawn_and_wait(workers.ddp_worker, (2, str(tmp_path / "store"), str(tmp_path), STEPS, dynamic), nprocs=2)
    rank0, rank1 = [torch.load(os.path.join(tmp_path, f"rank{r}.pt")) for r in range(2)]
    hnet = workers.build(dynamic)
    optimizer = torch.optim.Adam(hnet.parameters(), lr=1e-2)
    for step in range(STEPS):
        optimizer.zero_grad()
        (sum(workers.loss(hnet, r, step) for r in range(2)) / 2).backward()
        optimizer.step()
    assert rank0.keys() == rank1.keys() == hnet.state_dict().keys()
    for name, value in hnet.state_dict().items():
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6, msg=name)
