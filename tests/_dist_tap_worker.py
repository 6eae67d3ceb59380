"""Worker for the 2-process gloo test of `LayerTap` on a DDP model (importable for spawn)."""

from __future__ import annotations

import os
import sys
import traceback

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from headkit import HeadkitError, LayerTap

LAYER = "2"  # a middle layer: the head after it gets no gradient


def make() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)
    ).double()
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return model, x


def loss_of(feats: torch.Tensor) -> torch.Tensor:
    return feats.pow(2).mean()


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Run one rank; exit through ``os._exit`` so gloo's thread teardown cannot abort it."""
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
        model, x = make()
        b = x.shape[0] // world
        xs = x[rank * b : (rank + 1) * b]
        ddp = DDP(model, find_unused_parameters=True)
        tap = LayerTap(ddp, [LAYER])
        steps = []
        for _ in range(2):  # a second step: DDP's reduction of the first one finished
            model.zero_grad(set_to_none=True)
            loss_of(tap(xs)[LAYER]).backward()
            steps.append({n: p.grad for n, p in model.named_parameters()})
        # without find_unused_parameters a loss on a lower layer would leave gradients
        # unsynchronised: a clear error instead
        strict = DDP(make()[0])
        refused = False
        try:
            LayerTap(strict, [LAYER])(xs)
        except HeadkitError:
            refused = True
        with torch.no_grad():  # features only: fine
            feats = LayerTap(strict, [LAYER], pool="avg")(xs)[LAYER]
        torch.save(
            {"steps": steps, "refused": refused, "feats": feats},
            f"{out_dir}/tap_rank{rank}.pt",
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()
