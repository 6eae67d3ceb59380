"""Several augmented views of each sample, through the model: the statistics LiDAR needs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Sized
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .._dist import Dist
from .._errors import HeadkitError
from .._layers.model import LayerSpec, check_module
from .._layers.tap import LayerTap
from ._extract import Batch, ExtractOptions, autocast, move, placed, progress_bar, split_batch
from ._metrics import LidarStats

__all__ = ["split_views", "view_stats"]


def split_views(batch: Any) -> list[Batch]:
    """The views of a multi-view batch: ``([view_1, ..., view_q], *rest)`` or ``{"views": [...]}``.

    Each view is what a plain batch's inputs would be (a tensor, or a dict of model keywords);
    labels and other items are ignored.
    """
    views: Any = None
    if isinstance(batch, Mapping) and "views" in batch:
        views = batch["views"]
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], (tuple, list)):
        views = batch[0]
    if not isinstance(views, (tuple, list)) or len(views) < 2:
        raise HeadkitError(
            "views= needs batches of several augmented views of the same samples: "
            "([view_1, view_2, ...], labels...) or {'views': [view_1, view_2, ...]}, with at least "
            f"2 views; got {type(batch).__name__}"
            + (f" with {len(views)} view(s)" if isinstance(views, (tuple, list)) else "")
        )
    out = []
    for v in views:
        b = split_batch(v)
        out.append(Batch(b.args, b.kwargs, None))
    return out


def view_stats(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Sequence[LayerSpec],
    opts: ExtractOptions,
    *,
    d: Dist,
    blocks: int = 0,
    seed: int = 0,
) -> dict[LayerSpec, list[LidarStats]]:
    """Per layer, LiDAR statistics of the views (one per block when ``blocks`` > 0, for a
    bootstrap over samples), summed over ranks under torch.distributed."""
    pool, device, amp, max_samples, progress = (
        opts.pool,
        opts.device,
        opts.amp,
        opts.max_samples,
        opts.progress,
    )
    model = check_module(model, "views")
    runner = model.module if isinstance(model, DistributedDataParallel) else model
    tap = LayerTap(runner, layers, pool=pool, detach=True, stop_early=True)
    nb = max(1, blocks)
    stats: dict[LayerSpec, list[LidarStats]] = {
        k: [LidarStats() for _ in range(nb)] for k in tap.keys
    }
    gen = torch.Generator().manual_seed(seed + 7919 * d.rank)
    seen = 0
    was_training = runner.training
    total = len(loader) if isinstance(loader, Sized) else None
    try:
        with placed(model, device) as dev:
            runner.eval()
            with torch.no_grad(), autocast(dev, amp):
                for batch in progress_bar(loader, total, "views", progress and d.main):
                    views = split_views(batch)
                    outs = [tap(*move(v.args, dev), **move(v.kwargs, dev)) for v in views]
                    n = int(next(iter(outs[0].values())).shape[0])
                    take = n if max_samples is None else min(n, max_samples - seen)
                    block = torch.randint(nb, (take,), generator=gen)
                    for k in tap.keys:
                        z = torch.stack([o[k][:take].reshape(take, -1).float() for o in outs], 1)
                        for j in range(nb):
                            sel = (block == j).nonzero().view(-1)
                            if sel.numel():
                                stats[k][j].update(z[sel.to(z.device)])
                    seen += take
                    if max_samples is not None and seen >= max_samples:
                        break
    finally:
        tap.close()
        runner.train(was_training)
    if seen == 0 and not d.on:
        raise HeadkitError("views: the loader yielded no samples")
    if d.on:
        _reduce(d, stats)
    return stats


def _reduce(d: Dist, stats: dict[LayerSpec, list[LidarStats]]) -> None:
    for k, per_block in stats.items():
        dims = d.all_objects([s.s_mu.shape[0] if s.s_mu is not None else None for s in per_block])
        for j, s in enumerate(per_block):
            width = next((w[j] for w in dims if w[j] is not None), None)
            if width is None:
                continue
            if s.s_mu is None:
                s.s_mu = torch.zeros(width, dtype=torch.float64)
                s.ss_mu = torch.zeros(width, width, dtype=torch.float64)
                s.ss_w = torch.zeros(width, width, dtype=torch.float64)
            for t in s.tensors():
                t.copy_(d.all_sum(t))
            counts = d.all_sum(torch.tensor([s.n, s.nq], dtype=torch.long))
            s.n, s.nq = int(counts[0]), int(counts[1])
        del k


def merge(stats: Sequence[LidarStats], weights: Tensor | None = None) -> LidarStats:
    """Several blocks' statistics as one (``weights``: how many times each block counts)."""
    out = LidarStats()
    w = weights if weights is not None else torch.ones(len(stats), dtype=torch.float64)
    for s, c in zip(stats, w.tolist(), strict=True):
        if s.s_mu is None or c == 0:
            continue
        assert s.ss_mu is not None and s.ss_w is not None
        if out.s_mu is None:
            out.s_mu = torch.zeros_like(s.s_mu)
            out.ss_mu = torch.zeros_like(s.ss_mu)
            out.ss_w = torch.zeros_like(s.ss_w)
        assert out.ss_mu is not None and out.ss_w is not None
        out.s_mu += c * s.s_mu
        out.ss_mu += c * s.ss_mu
        out.ss_w += c * s.ss_w
        out.n += int(c * s.n)
        out.nq += int(c * s.nq)
    return out
