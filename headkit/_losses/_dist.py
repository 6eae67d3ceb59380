"""Cross-rank gathering for the losses (``gather_distributed=True``).

Conventions (those of lightly, checked against one process on the global batch):

- the embeddings of every rank are gathered with gradients; the backward sums every rank's
  gradient of a rank's rows (so each rank's embeddings receive the gradient of every anchor);
- the returned loss *value* is the loss of the global batch on every rank, while its gradient
  is ``world_size`` times this rank's share, so that DDP's gradient averaging yields exactly the
  gradient of one process on the concatenated batch.

Ranks may hold batches of different sizes (a trailing batch): the sizes are exchanged first (one
small all-gather, read on the host) and the tensors padded for the collective.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .._errors import HeadkitError

__all__ = ["GatherInfo", "gather", "gather_nograd", "global_mean", "require_available", "world"]

_NOT_AVAILABLE = (
    "gather_distributed is True but torch.distributed is not available. "
    "Please set gather_distributed=False or install a torch version with distributed support."
)


def require_available() -> None:
    """Raise (a `ValueError`, as lightly) when ``torch.distributed`` is not built in."""
    if not dist.is_available():
        raise HeadkitError(_NOT_AVAILABLE)


def world(gather_distributed: bool) -> tuple[int, int]:
    """``(world_size, rank)`` to use; ``(1, 0)`` without gathering or without a process group.

    Without an initialised process group there is one process, whose batch is the global batch
    (lightly's behaviour), unless a launcher says otherwise: ``WORLD_SIZE > 1`` with no process
    group means each rank would silently see only its own batch, so that raises.
    """
    if not gather_distributed:
        return 1, 0
    require_available()
    if dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    env = os.environ.get("WORLD_SIZE", "1")
    if env.isdigit() and int(env) > 1:
        raise HeadkitError(
            f"gather_distributed=True and WORLD_SIZE={env}, but torch.distributed is not "
            "initialised, so each process would compute its loss on its own batch only: call "
            "torch.distributed.init_process_group() before the loss"
        )
    return 1, 0


class GatherInfo:
    """Sizes of every rank's batch and this rank's offset in the gathered tensor."""

    def __init__(self, sizes: list[int], rank: int) -> None:
        self.sizes = sizes
        self.rank = rank
        self.offset = sum(sizes[:rank])
        self.total = sum(sizes)


def _sizes(n: int, like: Tensor) -> list[int]:
    dev = like.device if dist.get_backend() == "nccl" else torch.device("cpu")
    mine = torch.tensor([n], dtype=torch.long, device=dev)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(v) for v in torch.cat(out).tolist()]


def _all_gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    big = max(sizes)
    xp = x.contiguous()
    if xp.shape[0] < big:
        xp = torch.cat([xp, xp.new_zeros((big - xp.shape[0], *xp.shape[1:]))])
    out = [torch.empty_like(xp) for _ in sizes]
    dist.all_gather(out, xp)
    return torch.cat([o[:s] for o, s in zip(out, sizes, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], offset: int) -> Tensor:
        ctx.offset, ctx.n = offset, x.shape[0]
        return _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        g = g.contiguous().clone()
        dist.all_reduce(g)
        return g[ctx.offset : ctx.offset + ctx.n], None, None


def gather(x: Tensor, rank: int) -> tuple[Tensor, GatherInfo]:
    """All ranks' ``x`` concatenated in rank order, differentiable, with the sizes."""
    info = GatherInfo(_sizes(x.shape[0], x), rank)
    out: Tensor = _GatherWithGrad.apply(x, info.sizes, info.offset)
    return out, info


@torch.no_grad()
def gather_nograd(x: Tensor, info: GatherInfo | None = None) -> Tensor:
    """All ranks' ``x`` concatenated in rank order (no gradient), e.g. labels or bank keys."""
    sizes = info.sizes if info is not None else _sizes(x.shape[0], x)
    return _all_gather_padded(x, sizes)


def global_mean(local_sum: Tensor, global_count: Tensor | float, world_size: int) -> Tensor:
    """The mean over all ranks, with DDP-ready gradients (see the module docstring).

    Args:
        local_sum: this rank's sum of per-anchor losses (differentiable).
        global_count: number of anchors over all ranks (a float, or a tensor already reduced).
        world_size: number of ranks.
    """
    if world_size == 1:
        return local_sum / global_count
    total = local_sum.detach().clone()
    dist.all_reduce(total)
    share = (
        local_sum * (world_size / global_count)
        if isinstance(global_count, float)
        else (local_sum * world_size / global_count)
    )
    return share + (total / global_count - share).detach()
