"""Process memory of NT-Xent: resident memory of fresh processes, headkit against lightly.

Each row runs in a fresh Python process that imports torch and one implementation, builds two
views of N embeddings (float32, requires_grad), and measures the growth of its resident memory
during one forward + backward over its state just before it (``VmHWM`` after resetting it with
``/proc/self/clear_refs``, minus ``VmRSS``):

- ``first``: the first call in the process (lazy imports, kernel code, allocator growth count);
- ``steady``: a later call, after one warm-up step.

Target (issue 11): headkit's growth <= 5% of lightly's in both, at N = 4096, d = 128, with the
time still <= lightly's. Linux only (reads /proc).

    python benchmarks/bench_memory.py [--n 4096] [--dim 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

IMPLS = ("lightly", "headkit", "dense")


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def child(impl: str, mode: str, n: int, dim: int) -> None:
    import gc

    import torch

    if impl == "lightly":
        from lightly.loss import NTXentLoss

        crit = NTXentLoss(temperature=0.5)
    elif impl == "headkit":
        from headkit import NTXentLoss  # type: ignore[assignment]

        crit = NTXentLoss(temperature=0.5)
    else:
        sys.path.insert(0, os.path.dirname(__file__))
        from _util import dense_nt_xent

        def crit(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return dense_nt_xent(a, b, 0.5)

    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(n, dim, generator=g, requires_grad=True)
    z1 = torch.randn(n, dim, generator=g, requires_grad=True)

    def step() -> None:
        z0.grad = z1.grad = None
        crit(z0, z1).backward()

    if mode == "steady":
        step()
    gc.collect()
    before = _status()["VmRSS"]
    _reset_peak()
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    peak = _status()["VmHWM"]
    print(json.dumps({"growth": peak - before, "seconds": seconds, "base": before}))


def measure(impl: str, mode: str, n: int, dim: int) -> dict[str, float]:
    res = subprocess.run(
        [sys.executable, __file__, "--child", impl, mode, "--n", str(n), "--dim", str(dim)],
        capture_output=True,
        text=True,
        check=True,
    )
    out: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per row (median)")
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.n, args.dim)
        return
    import torch

    print(
        f"NT-Xent, N = {args.n}, d = {args.dim}, float32, forward + backward, fresh processes "
        f"(median of {args.repeat}); torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'mode':>7} {'impl':>8} {'growth MiB':>11} {'/lightly':>9} {'s':>8} {'time/lightly':>13}"
    )
    for mode in ("first", "steady"):
        rows: dict[str, tuple[float, float]] = {}
        for impl in IMPLS:
            runs = [measure(impl, mode, args.n, args.dim) for _ in range(args.repeat)]
            rows[impl] = (
                statistics.median(r["growth"] for r in runs),
                statistics.median(r["seconds"] for r in runs),
            )
        for impl, (growth, sec) in rows.items():
            print(
                f"{mode:>7} {impl:>8} {growth / 2**20:11.1f} {growth / rows['lightly'][0]:9.3f} "
                f"{sec:8.3f} {sec / rows['lightly'][1]:13.3f}"
            )


if __name__ == "__main__":
    main()
