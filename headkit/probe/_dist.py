"""torch.distributed helpers of the sweeps: who takes part, and gathering shards of any size."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .._errors import HeadkitError

__all__ = ["Dist", "dist_state"]


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
        if not self.on:
            return [n]
        t = torch.tensor([n], dtype=torch.long, device=self.device)
        out = [torch.zeros_like(t) for _ in range(self.world)]
        dist.all_gather(out, t)
        return [int(v) for v in out]

    def gather_var(self, t: Tensor) -> list[Tensor]:
        """Every rank's ``t`` (any first dimension, same trailing shape and dtype), on the CPU."""
        if not self.on:
            return [t.cpu()]
        sizes = self.sizes(int(t.shape[0]))
        m = max(sizes)
        buf = torch.zeros((m, *t.shape[1:]), dtype=t.dtype, device=self.device)
        buf[: t.shape[0]] = t.to(self.device)
        out = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(out, buf)
        return [o[:s].cpu() for o, s in zip(out, sizes, strict=True)]

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
