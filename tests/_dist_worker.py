"""Worker for the 2-process gloo tests of the losses (importable, so spawn can pickle it).

Every scenario runs the same code on the global batch in one process (``world == 1``, no
gathering) and on its shard in each rank (DDP, ``gather_distributed=True``); the test compares
the loss values and the DDP-averaged parameter gradients with the single process.
"""

from __future__ import annotations

import math
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from headkit import InfoNCELoss, NTXentLoss, SupConLoss
from headkit.ops import info_nce

Result = dict[str, Any]


def make_data() -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    g = torch.Generator().manual_seed(123)
    x0 = torch.randn(8, 6, generator=g, dtype=torch.float64)
    x1 = torch.randn(8, 6, generator=g, dtype=torch.float64)
    torch.manual_seed(7)
    enc = nn.Linear(6, 5).double()
    return x0, x1, enc


class _Clip(nn.Module):
    """An encoder with a learnable ``logit_scale`` (CLIP), inside the DDP module."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.enc = nn.Linear(6, 5).double()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.2), dtype=torch.float64))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.enc(x), 1 / self.logit_scale.exp()


def _shard(rank: int, world: int, sizes: list[int] | None, n: int) -> slice:
    if world == 1:
        return slice(0, n)
    sizes = sizes or [n // world] * world
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _grads(model: nn.Module) -> dict[str, Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def nt_xent_case(rank: int, world: int, sizes: list[int] | None = None) -> Result:
    x0, x1, enc = make_data()
    sl = _shard(rank, world, sizes, 8)
    model = DDP(enc) if world > 1 else enc
    z0, z1 = model(x0[sl]), model(x1[sl])
    z0.retain_grad()
    loss = NTXentLoss(temperature=0.3, gather_distributed=world > 1)(z0, z1)
    loss.backward()
    return {"loss": loss.detach(), "grads": _grads(enc), "z0_grad": z0.grad}


def nt_xent_uneven(rank: int, world: int) -> Result:
    return nt_xent_case(rank, world, sizes=[5, 3])


def sup_con_case(rank: int, world: int, labelled: bool = True) -> Result:
    x0, x1, enc = make_data()
    labels = torch.tensor([0, 1, 2, 0, 1, 1, 3, 0])
    sl = _shard(rank, world, [3, 5], 8)
    model = DDP(enc) if world > 1 else enc
    z = torch.stack([model(x0[sl]), model(x1[sl])], 1)
    crit = SupConLoss(temperature=0.25, gather_distributed=world > 1)
    loss = crit(z, labels[sl] if labelled else None)
    loss.backward()
    return {"loss": loss.detach(), "grads": _grads(enc)}


def sup_con_unlabelled(rank: int, world: int) -> Result:
    return sup_con_case(rank, world, labelled=False)


def sup_con_one_view(rank: int, world: int) -> Result:
    """V = 1 with some labels alone: the global count of anchors with positives differs per rank."""
    x0, _, enc = make_data()
    labels = torch.tensor([0, 1, 2, 0, 1, 4, 5, 0])
    sl = _shard(rank, world, None, 8)
    model = DDP(enc) if world > 1 else enc
    loss = SupConLoss(temperature=0.5, gather_distributed=world > 1)(model(x0[sl]), labels[sl])
    loss.backward()
    return {"loss": loss.detach(), "grads": _grads(enc)}


def info_nce_case(rank: int, world: int) -> Result:
    x0, x1, _ = make_data()
    clip = _Clip()
    sl = _shard(rank, world, None, 8)
    model = DDP(clip) if world > 1 else clip
    (q, t), (k, _) = model(x0[sl]), model(x1[sl])
    loss = InfoNCELoss(temperature=0.1, gather_distributed=world > 1)(q, k)
    total = loss + info_nce(k, q, t, gather_distributed=world > 1)  # symmetric, learnable T
    total.backward()
    return {"loss": total.detach(), "grads": _grads(clip)}


def bank_case(rank: int, world: int) -> Result:
    """MoCo through NTXentLoss(memory_bank_size) with gathered enqueues, over three steps."""
    x0, x1, enc = make_data()
    torch.manual_seed(3)
    crit = NTXentLoss(0.2, memory_bank_size=(12, 5), gather_distributed=world > 1).double()
    model = DDP(enc) if world > 1 else enc
    out: Result = {"losses": [], "grads": []}
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    for step in range(3):
        sl = _shard(rank, world, None, 8)
        g = torch.Generator().manual_seed(step)
        noise = torch.randn(8, 6, generator=g, dtype=torch.float64)
        opt.zero_grad()
        loss = crit(model(x0[sl] + noise[sl]), model(x1[sl]).detach())
        loss.backward()
        out["losses"].append(loss.detach())
        out["grads"].append(_grads(enc))
        opt.step()
    assert crit.memory_bank is not None
    out["bank"] = crit.memory_bank.bank.clone()
    return out


SCENARIOS: dict[str, Callable[[int, int], Result]] = {
    "nt_xent": nt_xent_case,
    "nt_xent_uneven": nt_xent_uneven,
    "sup_con": sup_con_case,
    "sup_con_unlabelled": sup_con_unlabelled,
    "sup_con_one_view": sup_con_one_view,
    "info_nce": info_nce_case,
    "bank": bank_case,
}


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
        results = {name: fn(rank, world) for name, fn in SCENARIOS.items()}
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
