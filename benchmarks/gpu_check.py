"""CUDA checks and timings of the Triton kernels (run where a GPU is present; CI has none).

1. Correctness: every loss and reweight_normalize on CUDA (Triton path) against float64 CPU
   references, values and gradients, float32 and bfloat16.
2. Timing and peak memory: headkit's Triton NT-Xent against the dense CUDA loss, d = 128.

    python benchmarks/gpu_check.py
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _util import dense_nt_xent

from headkit._contrastive import _use_triton
from headkit.ops import info_nce, nt_xent, reweight_normalize, sup_con


def check() -> None:
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    z0c, z1c = torch.randn(700, 128, generator=g), torch.randn(700, 128, generator=g)
    lab = torch.randint(0, 9, (700,), generator=g)
    bank = torch.randn(3000, 128, generator=g)
    h = torch.randn(300, 512, generator=g)
    assert _use_triton(z0c.to(dev)), "the Triton path is not taken on CUDA"
    cases = {
        "nt_xent": lambda a, b, m, k: nt_xent(a, b, 0.1),
        "sup_con": lambda a, b, m, k: sup_con(torch.stack([a, b], 1), lab.to(a.device), 0.1),
        "info_nce": lambda a, b, m, k: info_nce(a, b, 0.07),
        "info_nce+bank": lambda a, b, m, k: info_nce(a, b, 0.2, negatives=m),
        "reweight_normalize": lambda a, b, m, k: (
            reweight_normalize(k, 1.05) * torch.arange(512, device=k.device)
        ).sum(),
    }
    for dtype in (torch.float32, torch.bfloat16):
        for name, fn in cases.items():
            ref_in = [t.double().requires_grad_() for t in (z0c, z1c, bank, h)]
            ref = fn(*ref_in)
            ref_g = torch.autograd.grad(ref, ref_in, allow_unused=True)
            cu_in = [t.to(dev, dtype).requires_grad_() for t in (z0c, z1c, bank, h)]
            out = fn(*cu_in)
            out_g = torch.autograd.grad(out, cu_in, allow_unused=True)
            err = abs(out.double().item() - ref.item()) / max(1.0, abs(ref.item()))
            gerr = max(
                ((a.double().cpu() - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                for a, b in zip(out_g, ref_g, strict=True)
                if a is not None and b is not None
            )
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            status = (
                "ok" if err < tol and gerr < (1e-4 if dtype == torch.float32 else 5e-2) else "FAIL"
            )
            print(
                f"{status:4} {name:20} {dtype!s:15} value rel err {err:.2e}  grad rel err {gerr:.2e}"
            )


def bench(sizes: list[int]) -> None:
    dev = torch.device("cuda")
    print(
        f"\n{torch.cuda.get_device_name(dev)}, torch {torch.__version__}: NT-Xent forward + backward, d = 128, float32"
    )
    print(f"{'N':>6} {'impl':>8} {'ms':>9} {'time/dense':>11} {'peak MiB':>10} {'peak/dense':>11}")
    for n in sizes:
        z0 = torch.randn(n, 128, device=dev, requires_grad=True)
        z1 = torch.randn(n, 128, device=dev, requires_grad=True)
        res = {}
        for k, f in (("dense", dense_nt_xent), ("headkit", lambda a, b: nt_xent(a, b, 0.5))):
            try:
                for _ in range(2):
                    f(z0, z1).backward()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                f(z0, z1).backward()
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - base
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                for _ in range(10):
                    f(z0, z1).backward()
                end.record()
                torch.cuda.synchronize()
                res[k] = (start.elapsed_time(end) / 10, peak)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                res[k] = (float("nan"), float("nan"))
        for k, (ms, peak) in res.items():
            print(
                f"{n:>6} {k:>8} {ms:9.2f} {ms / res['dense'][0]:11.3f} {peak / 2**20:10.1f} {peak / res['dense'][1]:11.4f}"
            )


if __name__ == "__main__":
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    check()
    bench([1024, 4096, 16384, 65536])
