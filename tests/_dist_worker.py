"""Worker for the 2-process gloo test (importable, so torch.multiprocessing.spawn can pickle it)."""

from __future__ import annotations

import os
import sys
import traceback

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from headkit import NTXentLoss


def make_data() -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    g = torch.Generator().manual_seed(123)
    x0 = torch.randn(8, 6, generator=g, dtype=torch.float64)
    x1 = torch.randn(8, 6, generator=g, dtype=torch.float64)
    torch.manual_seed(7)
    enc = nn.Linear(6, 5).double()
    return x0, x1, enc


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Run one rank; exit through ``os._exit`` so gloo's thread teardown cannot abort the process."""
    code = 1
    try:
        _run(rank, world, init_file, out_dir)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x0, x1, enc = make_data()
        model = DDP(enc)
        b = x0.shape[0] // world
        sl = slice(rank * b, (rank + 1) * b)
        z0 = model(x0[sl])
        z1 = model(x1[sl])
        z0.retain_grad()
        loss = NTXentLoss(temperature=0.3, gather_distributed=True)(z0, z1)
        loss.backward()
        torch.save(
            {
                "loss": loss.detach(),
                "grads": {n: p.grad for n, p in enc.named_parameters()},
                "z0_grad": z0.grad,
            },
            f"{out_dir}/rank{rank}.pt",
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()
