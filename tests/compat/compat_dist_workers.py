"""Worker for the hyper-nn API DDP test (imported by spawned processes)."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from hypernn.torch import TorchDynamicHyperNetwork, TorchHyperNetwork


def build(dynamic: bool) -> nn.Module:
    torch.manual_seed(0)
    target = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    if dynamic:
        return TorchDynamicHyperNetwork.from_target(target, input_dim=6, embedding_dim=4, num_embeddings=8)
    return TorchHyperNetwork.from_target(target, embedding_dim=4, num_embeddings=8)


def loss(module: nn.Module, rank: int, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * rank + step)
    x, y = torch.randn(10, 6, generator=generator), torch.randn(10, 3, generator=generator)
    return (module(x) - y).pow(2).mean()


def train(module: nn.Module, rank: int, steps: int) -> None:
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    for step in range(steps):
        optimizer.zero_grad()
        loss(module, rank, step).backward()
        optimizer.step()


def ddp_worker(rank: int, world_size: int, store: str, out: str, steps: int, dynamic: bool) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        hnet = build(dynamic)
        train(DistributedDataParallel(hnet), rank, steps)  # plain DDP: hyper-nn's dummy parameter failed at step 2
        torch.save({k: v.detach().clone() for k, v in hnet.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter finalisation with gloo threads alive (see tests/torch/dist_workers.py)
