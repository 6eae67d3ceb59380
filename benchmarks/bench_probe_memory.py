"""Memory of the layer sweeps: resident memory measured in fresh processes, against the anchor.

Two targets (issue 10), each case in its own fresh process, peak resident memory (VmHWM, reset
through /proc/self/clear_refs after the inputs exist) minus the resident memory just before:

1. ``widths``: `linear_probe` on 8 layers, 7 of width 16 and one of 1024, N = 60,000 training
   samples (+ 10,000 test), in memory. Target: extra memory within 3x of the features' size.
   Anchor: 0.1's approach, every layer zero-padded to the widest in one (L, N, Dmax) tensor,
   gathered once per epoch (the same code as 0.1's ``_train_stacked``, kept here).
2. ``mmap``: `layer_sweep(store=...)` of an 8-block MLP, 8 layers x 200,000 samples x 512
   (3.3 GB of float32 on disk) plus 2,000 test samples, every default metric. Target: under
   1 GB of extra resident memory.

Memory does not depend on the number of epochs (a probe step reads one batch), so the default
runs few of them; ``--epochs`` changes it.

    python benchmarks/bench_probe_memory.py [--case widths|mmap|all] [--epochs 2] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import torch
from torch import nn


def _kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current VmRSS


_SPLIT = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def _status() -> dict[str, int]:
    """The resident-memory fields of /proc/self/status, in KiB."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key = line.split(":", 1)[0]
            if key in _SPLIT:
                out[key] = int(line.split()[1])
    return out


class _Sampler(threading.Thread):
    """Samples VmRSS = RssAnon + RssFile + RssShmem every ``period`` s while a case runs.

    VmHWM is the exact peak of VmRSS but the kernel keeps no peak per component, so the split
    is sampled: the maximum of each component over the run (the maxima may occur at different
    moments) and the components at the sample of highest VmRSS (a sample can miss a short peak).
    """

    def __init__(self, period: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.stop = threading.Event()
        self.max: dict[str, int] = dict.fromkeys(_SPLIT, 0)
        self.at_peak: dict[str, int] = dict.fromkeys(_SPLIT, 0)
        self.samples = 0

    def sample(self) -> None:
        s = _status()
        self.samples += 1
        for k, v in s.items():
            self.max[k] = max(self.max[k], v)
        if s.get("VmRSS", 0) >= self.at_peak["VmRSS"]:
            self.at_peak = dict(s)

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self.sample()


def _measure(fn: object) -> dict[str, float]:
    split_before = _status()
    before = _kib("VmRSS")
    sampler = _Sampler()
    _reset_peak()
    sampler.sample()
    sampler.start()
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    secs = time.perf_counter() - t0
    peak = _kib("VmHWM")
    sampler.stop.set()
    sampler.join()
    sampler.sample()
    res = {
        "before_mib": before / 1024,
        "peak_mib": peak / 1024,
        "extra_mib": (peak - before) / 1024,
        "s": secs,
        "samples": sampler.samples,
    }
    for k in _SPLIT:
        res[f"before_{k}_mib"] = split_before.get(k, 0) / 1024
        res[f"max_{k}_mib"] = sampler.max[k] / 1024
        res[f"atpeak_{k}_mib"] = sampler.at_peak.get(k, 0) / 1024
    return res


def _print_split(res: dict[str, float]) -> None:
    """Where the resident memory is: anonymous memory vs file-backed mapped pages (sampled)."""
    print(
        f"split of the resident memory (MiB; sampled every 10 ms, {int(res['samples'])} samples; "
        "VmRSS = RssAnon + RssFile + RssShmem)"
    )
    print(f"{'':10s} {'before':>8s} {'max':>8s} {'max-before':>11s} {'at max VmRSS':>13s}")
    for k in _SPLIT:
        b, m, a = res[f"before_{k}_mib"], res[f"max_{k}_mib"], res[f"atpeak_{k}_mib"]
        print(f"{k:10s} {b:8.0f} {m:8.0f} {m - b:11.0f} {a:13.0f}")
    print(f"(VmHWM, the exact peak of VmRSS: {res['peak_mib']:.0f} MiB)")


# ----------------------------------------------------------------------------- case 1


def _widths_data() -> tuple[
    dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor], torch.Tensor
]:
    g = torch.Generator().manual_seed(0)
    n, m, c = 60_000, 10_000, 10
    y = torch.randint(0, c, (n + m,), generator=g)
    dims = {f"narrow{i}": 16 for i in range(7)} | {"wide": 1024}
    feats = {}
    for k, d in dims.items():
        f = torch.randn(n + m, d, generator=g)
        f[:, :4] += torch.randn(c, 4, generator=g)[y]  # some signal
        feats[k] = f
    tr = {k: v[:n].clone() for k, v in feats.items()}
    te = {k: v[n:].clone() for k, v in feats.items()}
    return tr, y[:n].clone(), te, y[n:].clone()


def _padded_anchor(tr: dict[str, torch.Tensor], y: torch.Tensor, epochs: int) -> None:
    """0.1's training: all layers zero-padded to the widest, one (L, N, Dmax) tensor."""
    xs = [(x - x.mean(0)) / x.std(0).clamp_min(1e-6) for x in tr.values()]
    n_layers, p, c, bs = len(xs), 12, int(y.max()) + 1, 256
    dmax, n = max(x.shape[1] for x in xs), y.shape[0]
    w = torch.zeros(n_layers, dmax, p * c)
    b = torch.zeros(n_layers, 1, p * c)
    m1, m2 = torch.zeros_like(w), torch.zeros_like(w)
    padded = torch.zeros(n_layers, n, dmax)
    for i, x in enumerate(xs):
        padded[i, :, : x.shape[1]] = x
    del xs
    onehot = torch.eye(c)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        xs_epoch, y_epoch = padded[:, perm], y[perm]
        for s in range(math.ceil(n / bs)):
            xb = xs_epoch[:, s * bs : (s + 1) * bs]
            yb = y_epoch[s * bs : (s + 1) * bs]
            logits = torch.baddbmm(b, xb, w).view(n_layers, -1, p, c).softmax(-1)
            gl = (logits - onehot[yb].view(1, -1, 1, c)).view(n_layers, -1, p * c) / yb.shape[0]
            gw = torch.bmm(xb.transpose(1, 2), gl)
            m1.mul_(0.9).add_(gw, alpha=0.1)
            m2.mul_(0.999).addcmul_(gw, gw, value=0.001)
            w.sub_(1e-3 * m1 / (m2.sqrt() + 1e-8))
            b.sub_(1e-3 * gl.sum(1, keepdim=True))


def case_widths(epochs: int, which: str) -> dict[str, float]:
    from headkit.probe import linear_probe

    tr, ytr, te, yte = _widths_data()
    size = sum(v.numel() * 4 for v in tr.values()) / 2**20
    test_size = sum(v.numel() * 4 for v in te.values()) / 2**20
    if which == "anchor":
        res = _measure(lambda: _padded_anchor(tr, ytr, epochs))
    else:
        res = _measure(lambda: linear_probe(tr, ytr, te, yte, epochs=epochs))
    res["features_mib"] = size
    res["test_features_mib"] = test_size
    return res


# ----------------------------------------------------------------------------- case 2


class Batches:
    """``n`` samples of 512 inputs in batches, generated on the fly from a seed (no storage)."""

    def __init__(self, n: int, seed: int, batch: int = 2048, classes: int = 10) -> None:
        self.n, self.seed, self.batch = n, seed, batch
        self.centers = torch.randn(classes, 512, generator=torch.Generator().manual_seed(99))

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, s in enumerate(range(0, self.n, self.batch)):
            g = torch.Generator().manual_seed(self.seed * 100_003 + i)
            b = min(self.batch, self.n - s)
            y = torch.randint(0, self.centers.shape[0], (b,), generator=g)
            yield self.centers[y] + 2 * torch.randn(b, 512, generator=g), y


def case_mmap(epochs: int, folder: str, n: int) -> dict[str, float]:
    from headkit.probe import layer_sweep

    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(512, 512), nn.ReLU()) for _ in range(8)]
    model = nn.Sequential(*blocks).eval()
    layers = [str(i) for i in range(8)]
    out: dict[str, object] = {}

    def run() -> None:
        rep = layer_sweep(
            model,
            Batches(n, 1),
            Batches(2000, 2),
            layers=layers,
            store=folder,
            probe_kwargs={"epochs": epochs},
            n_boot=1000,
            progress=False,
        )
        out["linear"] = rep.metrics["linear"]
        out["time"] = rep.info["time_s"]

    res = _measure(run)
    disk = sum(
        os.path.getsize(os.path.join(folder, "train", f))
        for f in os.listdir(os.path.join(folder, "train"))
    )
    res["disk_gb"] = disk / 1e9
    res["linear"] = out["linear"]  # type: ignore[assignment]
    return res


# ----------------------------------------------------------------------------- driver


def _child(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    if args.child == "widths-anchor":
        res = case_widths(args.epochs, "anchor")
    elif args.child == "widths":
        res = case_widths(args.epochs, "headkit")
    else:
        res = case_mmap(args.epochs, args.folder, args.n)
    print("RESULT " + json.dumps(res))


def _spawn(
    child: str, args: argparse.Namespace, extra: list[str] | None = None
) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", child, "--epochs", str(args.epochs), *(extra or [])]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{child} failed:\n{res.stdout}\n{res.stderr}")
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    out: dict[str, float] = json.loads(line[7:])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--case", choices=["widths", "mmap", "all"], default="all")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--dir", default=tempfile.gettempdir(), help="where the mmap case stores 3.3 GB"
    )
    ap.add_argument("--n", type=int, default=200_000, help="samples of the mmap case")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, epochs {args.epochs}")
    if args.case in ("widths", "all"):
        anchor = _spawn("widths-anchor", args)
        ours = _spawn("widths", args)
        feat = ours["features_mib"]
        print("\n8 layers (7 x 16 + 1 x 1024), N = 60,000 train + 10,000 test, 12 settings each")
        print(f"features: {feat:.0f} MiB train (+{ours['test_features_mib']:.0f} MiB test)")
        print(f"{'what':52s} {'extra MiB':>10s} {'x features':>11s} {'s':>7s}")
        print(
            f"{'0.1: padded (L, N, Dmax) training only (anchor)':52s} {anchor['extra_mib']:10.0f} {anchor['extra_mib'] / feat:11.2f} {anchor['s']:7.1f}"
        )
        print(
            f"{'headkit linear_probe (select + refit + test)':52s} {ours['extra_mib']:10.0f} {ours['extra_mib'] / feat:11.2f} {ours['s']:7.1f}"
        )
        print(
            f"target: <= 3x the features -> {'MET' if ours['extra_mib'] <= 3 * feat else 'NOT MET'}"
        )
        print("\nheadkit linear_probe:")
        _print_split(ours)
    if args.case in ("mmap", "all"):
        folder = tempfile.mkdtemp(prefix="headkit-mmap-", dir=args.dir)
        try:
            res = _spawn("mmap", args, ["--folder", folder, "--n", str(args.n)])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(
            f"\nlayer_sweep(store=...): 8 layers x {args.n:,} x 512 on disk ({res['disk_gb']:.2f} GB) + 2,000 test"
        )
        print(
            f"resident before {res['before_mib']:.0f} MiB, peak {res['peak_mib']:.0f} MiB, extra {res['extra_mib']:.0f} MiB, {res['s']:.0f} s"
        )
        print(f"target: < 1 GB extra -> {'MET' if res['extra_mib'] * 2**20 < 1e9 else 'NOT MET'}")
        _print_split(res)
        print("linear:", [round(v, 3) for v in res["linear"]])  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
