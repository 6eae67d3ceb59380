"""torch.distributed in one place: the losses' differentiable gathering and the sweeps' shards.

One variable-size all-gather (`all_gather_padded`: sizes exchanged first, tensors padded for the
collective) serves both users:

- the losses (``gather_distributed=True``): `world`, `gather`, `gather_nograd`, `global_mean`;
- the sweeps: `Dist` (who takes part, gathering shards of any size, objects) and `dist_state`,
  `scatter_positions`.

Conventions of the losses (those of lightly, checked against one process on the global batch):

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
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._errors import HeadkitError

__all__ = [
    "Dist",
    "GatherInfo",
    "all_gather_padded",
    "dist_state",
    "gather",
    "gather_nograd",
    "global_mean",
    "require_available",
    "scatter_positions",
    "sizes_of",
    "world",
]

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


def _collective_device(like: torch.device) -> torch.device:
    """The device a collective runs on: the tensor's under NCCL, the CPU otherwise."""
    if dist.get_backend() != "nccl":
        return torch.device("cpu")
    if like.type == "cuda":
        return like
    return torch.device("cuda", torch.cuda.current_device())


def sizes_of(n: int, device: torch.device) -> list[int]:
    """Every rank's ``n`` (one small all-gather, read on the host)."""
    mine = torch.tensor([n], dtype=torch.long, device=_collective_device(device))
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(v) for v in torch.cat(out).tolist()]


def all_gather_padded(x: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    """Every rank's ``x`` (first dimensions ``sizes``, same trailing shape and dtype), in rank
    order, on the collective's device: padded to the largest size for the collective, then cut."""
    big = max(sizes)
    xp = x.contiguous()
    if xp.shape[0] < big:
        xp = torch.cat([xp, xp.new_zeros((big - xp.shape[0], *xp.shape[1:]))])
    out = [torch.empty_like(xp) for _ in sizes]
    dist.all_gather(out, xp)
    return [o[:s] for o, s in zip(out, sizes, strict=True)]


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], offset: int) -> Tensor:
        ctx.offset, ctx.n = offset, x.shape[0]
        return torch.cat(all_gather_padded(x, sizes))

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        g = g.contiguous().clone()
        dist.all_reduce(g)
        return g[ctx.offset : ctx.offset + ctx.n], None, None


def gather(x: Tensor, rank: int) -> tuple[Tensor, GatherInfo]:
    """All ranks' ``x`` concatenated in rank order, differentiable, with the sizes."""
    info = GatherInfo(sizes_of(x.shape[0], x.device), rank)
    out: Tensor = _GatherWithGrad.apply(x, info.sizes, info.offset)
    return out, info


@torch.no_grad()
def gather_nograd(x: Tensor, info: GatherInfo | None = None) -> Tensor:
    """All ranks' ``x`` concatenated in rank order (no gradient), e.g. labels or bank keys."""
    sizes = info.sizes if info is not None else sizes_of(x.shape[0], x.device)
    return torch.cat(all_gather_padded(x, sizes))


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


# ----------------------------------------------------------------------------- the sweeps


@dataclass(frozen=True)
class Dist:
    """The process group a sweep runs in (``on`` False: one process)."""

    on: bool
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this is the process that prints and writes files."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device collectives need (CUDA for NCCL, the CPU otherwise)."""
        if self.on and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self) -> None:
        """A barrier when distributed."""
        if self.on:
            dist.barrier()

    def sizes(self, n: int) -> list[int]:
        """Every rank's ``n``."""
        return sizes_of(n, self.device) if self.on else [n]

    def gather_var(self, t: Tensor) -> list[Tensor]:
        """Every rank's ``t`` (any first dimension, same trailing shape and dtype), on the CPU."""
        if not self.on:
            return [t.cpu()]
        sizes = self.sizes(int(t.shape[0]))
        return [o.cpu() for o in all_gather_padded(t.to(self.device), sizes)]

    def all_sum(self, t: Tensor) -> Tensor:
        """Sum of ``t`` over ranks (returned on ``t``'s device)."""
        if not self.on:
            return t
        buf = t.to(self.device).clone()
        dist.all_reduce(buf)
        return buf.to(t.device)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.on:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def all_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``."""
        if not self.on:
            return [obj]
        data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        return [pickle.loads(bytes(b.tolist())) for b in self.gather_var(data)]


def dist_state(distributed: bool | None) -> Dist:
    """Resolve a ``distributed`` argument (None: on under an initialised group of 2+ ranks)."""
    if distributed is not None and not isinstance(distributed, bool):
        raise HeadkitError(f"distributed must be None, True or False, got {distributed!r}")
    ready = dist.is_available() and dist.is_initialized()
    if distributed is True and not ready:
        raise HeadkitError(
            "distributed=True needs an initialised torch.distributed process group "
            "(torch.distributed.init_process_group, or run under torchrun)"
        )
    if distributed is False or not ready:
        return Dist(False)
    world = dist.get_world_size()
    if world < 2 and distributed is None:
        return Dist(False)
    return Dist(True, dist.get_rank(), world)


def scatter_positions(
    sizes: Sequence[int], ids: Sequence[Tensor] | None
) -> tuple[list[Tensor], int, int]:
    """Where every rank's rows go in the gathered result.

    Without ``ids`` the shards are concatenated in rank order. With ``ids`` (each rank's data
    set indices, as a `DistributedSampler` hands them out) the result is in data-set order and a
    sample seen twice (the sampler's padding) is kept once. Returns ``(positions per rank, -1
    for a dropped duplicate; total rows; duplicates dropped)``.
    """
    if ids is None:
        out, start = [], 0
        for s in sizes:
            out.append(torch.arange(start, start + s))
            start += s
        return out, start, 0
    allids = torch.cat([i[:s] for i, s in zip(ids, sizes, strict=True)])
    uniq, inverse = torch.unique(allids, sorted=True, return_inverse=True)
    # keep the first occurrence (rank-major order) of every data set index
    first = torch.full((uniq.numel(),), allids.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(allids.numel()), reduce="amin")
    keep = torch.zeros(allids.numel(), dtype=torch.bool)
    keep[first] = True
    pos = torch.where(keep, inverse, torch.full_like(inverse, -1))
    parts = list(torch.split(pos, list(sizes)))
    return parts, int(uniq.numel()), int(allids.numel() - uniq.numel())
