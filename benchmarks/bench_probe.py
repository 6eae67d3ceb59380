"""Batched mini-batch linear probes (`linear_probe(solver="adam")`) against the same probes
trained one at a time, in one run. (The default full-batch solver is measured against
scikit-learn in bench_probe_sklearn.py.)

Anchor: DINOv2-style evaluation, one ``nn.Linear`` + ``torch.optim.Adam`` (L2 through
``weight_decay``, cosine schedule) per (layer, lr, weight decay), trained in a Python loop on the
same standardised features, batches and epochs. Target: headkit at least 5x faster.

Rounds are interleaved (anchor, headkit, headkit refit, anchor, ...) and the medians compared,
so load on a shared machine hits all alike; CPU time (all threads) is printed beside wall time.

    python benchmarks/bench_probe.py [--n 5000] [--epochs 30] [--rounds 3] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from headkit.probe import linear_probe


def one_at_a_time(
    tr: dict[str, torch.Tensor],
    ytr: torch.Tensor,
    lrs: list[float],
    wds: list[float],
    epochs: int,
    bs: int,
    device: torch.device,
) -> None:
    n = ytr.shape[0]
    c = int(ytr.max()) + 1
    g = torch.Generator().manual_seed(0)
    ytr = ytr.to(device)
    for x in tr.values():
        x = ((x - x.mean(0)) / x.std(0).clamp_min(1e-6)).to(device)
        for lr in lrs:
            for wd in wds:
                probe = nn.Linear(x.shape[1], c, device=device)
                opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=wd)
                steps = epochs * math.ceil(n / bs)
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
                for _ in range(epochs):
                    perm = torch.randperm(n, generator=g).to(device)
                    for s in range(0, n, bs):
                        idx = perm[s : s + bs]
                        loss = F.cross_entropy(probe(x[idx]), ytr[idx])
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        sched.step()


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    w, c = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    dims = {"stage1": 64, "stage2": 128, "stage3": 256, "stage4": 512}
    c = 10
    y = torch.randint(0, c, (args.n + 1000,))
    feats = {k: torch.randn(args.n + 1000, d) + torch.randn(c, d)[y] * 0.5 for k, d in dims.items()}
    tr = {k: v[: args.n] for k, v in feats.items()}
    te = {k: v[args.n :] for k, v in feats.items()}
    lrs, wds = [1e-3, 1e-2, 1e-1], [0.0, 1e-4, 1e-3, 1e-2]
    name = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"{len(dims)} layers (D = {list(dims.values())}), N = {args.n}, {len(lrs) * len(wds)} settings each, "
        f"{args.epochs} epochs, torch {torch.__version__}, {name}, {args.rounds} interleaved rounds"
    )
    kw = dict(
        lrs=lrs,
        weight_decays=wds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=dev,
        solver="adam",  # the batched mini-batch probes against the same probes one at a time
    )
    res: dict[str, object] = {}
    runs: dict[str, Callable[[], object]] = {
        "loop": lambda: one_at_a_time(tr, y[: args.n], lrs, wds, args.epochs, args.batch_size, dev),
        "grid": lambda: res.update(
            acc=linear_probe(tr, y[: args.n], te, y[args.n :], refit=False, **kw)
        ),  # type: ignore[arg-type]
        "refit": lambda: linear_probe(tr, y[: args.n], te, y[args.n :], refit=True, **kw),  # type: ignore[arg-type]
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            times[k].append(timed(fn, dev))
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    # both headkit runs also pick the best setting on a held-out split and test it; the loop
    # only trains the grid, so the comparison favours the loop
    print(f"{'what':52s} {'wall s':>8s} {'ratio':>7s} {'cpu s':>8s} {'ratio':>7s}")
    rows = [
        ("one nn.Linear + Adam at a time (anchor)", "loop"),
        ("headkit linear_probe(refit=False): grid + select", "grid"),
        ("headkit linear_probe(refit=True): + retrain chosen", "refit"),
    ]
    for label, k in rows:
        print(
            f"{label:52s} {wall[k]:8.2f} {wall['loop'] / wall[k]:6.2f}x {cpu[k]:8.2f} {cpu['loop'] / cpu[k]:6.2f}x"
        )
    acc = res["acc"]
    assert isinstance(acc, dict)
    print("accuracies:", {k: round(v, 3) for k, v in acc.items()})


if __name__ == "__main__":
    main()
