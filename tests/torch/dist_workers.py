"""Worker functions for the distributed tests (imported by spawned processes)."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from hypernn import hypernetize


def build(dynamic: bool = False, seed: int = 0) -> nn.Module:
    """A static hypernetwork of the first layer, or a dynamic one of the whole MLP."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    if dynamic:
        return hypernetize(model, embedding_dim=4, num_embeddings=8, condition_dim=2)
    return hypernetize(model, embedding_dim=4, num_embeddings=8, targets=["0"])


def batch(rank: int, step: int):
    generator = torch.Generator().manual_seed(1000 * rank + step)
    x, y, c = torch.randn(10, 6, generator=generator), torch.randn(10, 3, generator=generator), torch.randn(10, 2, generator=generator)
    return x, y, c


def loss(module: nn.Module, dynamic: bool, rank: int, step: int) -> torch.Tensor:
    x, y, c = batch(rank, step)
    out = module(x, condition=c) if dynamic else module(x)
    return (out - y).pow(2).mean()


def train(module: nn.Module, dynamic: bool, rank: int, steps: int) -> None:
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    for step in range(steps):
        optimizer.zero_grad()
        loss(module, dynamic, rank, step).backward()
        optimizer.step()


def _exit_now() -> None:
    """Leave the worker without interpreter finalisation.

    gloo's worker threads can still hold work objects whose tensors reference Python
    objects; destroying them during finalisation aborts the process now and then
    ("terminate called without an active exception"). The results are on disk already.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _init(rank: int, world_size: int, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)


def ddp_worker(rank: int, world_size: int, store: str, out: str, steps: int, dynamic: bool) -> None:
    from torch.nn.parallel import DistributedDataParallel

    _init(rank, world_size, store)
    try:
        hnet = build(dynamic)
        train(DistributedDataParallel(hnet), dynamic, rank, steps)  # plain DDP: no find_unused_parameters
        torch.save({k: v.detach().clone() for k, v in hnet.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    _exit_now()


def fsdp_worker(rank: int, world_size: int, store: str, out: str, steps: int, dynamic: bool) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _init(rank, world_size, store)
    try:
        mesh = init_device_mesh("cpu", (world_size,))
        hnet = build(dynamic)
        fully_shard(hnet.weight_generator, mesh=mesh)
        fully_shard(hnet, mesh=mesh)
        train(hnet, dynamic, rank, steps)
        full = {name: p.full_tensor().detach().clone() for name, p in hnet.named_parameters()}
        torch.save(full, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    _exit_now()
