"""CUDA check and timings of headkit's losses (run where a GPU is present; CI has none).

Runs unattended and prints tables to paste into benchmarks/RESULTS.md:

1. Which path runs: the Triton self-check verdict per op, device and dtype (a failed check is
   reported with its numbers and the PyTorch path is used).
2. Correctness against float64 references on the CPU: every loss (NT-Xent, SupCon, InfoNCE with
   and without a bank, a learnable temperature, NTXentLoss with a memory bank over steps
   against lightly's) and reweight_normalize, values and gradients, in float32 (IEEE and TF32
   dot products), bfloat16 and float16.
3. Time and peak memory of NT-Xent forward + backward, d = 128, against lightly's NTXentLoss and
   the dense loss, for N up to 65,536, in float32 and bfloat16, with the achieved TFLOP/s as a
   share of the device's dense bf16 peak (goal: >= 40% at N = 65,536, d = 128, extra memory
   under 1 GiB). An implementation that runs out of memory is reported as OOM.

    python benchmarks/gpu_check.py [--sizes 1024 4096 16384 65536] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _util import dense_nt_xent

import headkit
from headkit.ops import info_nce, nt_xent, reweight_normalize, sup_con, triton_status

# dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device name
PEAKS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}


def peak_tflops(name: str, override: float | None) -> float:
    if override:
        return override
    for key, value in PEAKS.items():
        if key in name:
            return value
    return float("nan")


# ----------------------------------------------------------------------------- correctness


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def correctness(dev: torch.device) -> bool:
    g = torch.Generator().manual_seed(0)
    n, d = 700, 128
    z0c, z1c = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    lab = torch.randint(0, 9, (n,), generator=g)
    bank = torch.randn(3000, d, generator=g)
    h = torch.randn(300, 512, generator=g)
    tc = torch.tensor(0.15)
    cases: dict[str, Callable[..., torch.Tensor]] = {
        "nt_xent": lambda a, b, m, k, t: nt_xent(a, b, 0.1),
        "nt_xent learnable T": lambda a, b, m, k, t: nt_xent(a, b, t),
        "sup_con": lambda a, b, m, k, t: sup_con(torch.stack([a, b], 1), lab.to(a.device), 0.1),
        "info_nce": lambda a, b, m, k, t: info_nce(a, b, 0.07),
        "info_nce + bank": lambda a, b, m, k, t: info_nce(a, b, 0.2, negatives=m),
    }
    settings = [
        ("float32 ieee", torch.float32, "highest", 1e-5, 1e-4),
        ("float32 tf32", torch.float32, "high", 5e-3, 3e-2),
        ("bfloat16", torch.bfloat16, "highest", 2e-2, 6e-2),
        ("float16", torch.float16, "highest", 1e-2, 4e-2),
    ]
    ok_all = True
    print(f"\n{'status':6} {'case':22} {'setting':14} {'value rel err':>14} {'grad rel err':>13}")
    old = torch.get_float32_matmul_precision()
    try:
        for label, dtype, prec, vtol, gtol in settings:
            torch.set_float32_matmul_precision(prec)
            for name, fn in cases.items():
                ref_in = [x.double().requires_grad_() for x in (z0c, z1c, bank, h)]
                t_ref = tc.double().requires_grad_()
                ref = fn(*ref_in, t_ref)
                ref_g = torch.autograd.grad(ref, [*ref_in, t_ref], allow_unused=True)
                cu_in = [x.to(dev, dtype).requires_grad_() for x in (z0c, z1c, bank, h)]
                t_cu = tc.to(dev).requires_grad_()
                try:
                    out = fn(*cu_in, t_cu)
                    out_g = torch.autograd.grad(out, [*cu_in, t_cu], allow_unused=True)
                except Exception as err:
                    print(f"{'FAIL':6} {name:22} {label:14} raised {type(err).__name__}: {err}")
                    ok_all = False
                    continue
                err = abs(out.double().item() - ref.item()) / max(1.0, abs(ref.item()))
                gerr = max(
                    (
                        _rel(a, b)
                        for a, b in zip(out_g, ref_g, strict=True)
                        if a is not None and b is not None
                    ),
                    default=0.0,
                )
                ok = err < vtol and gerr < gtol
                ok_all &= ok
                print(f"{'ok' if ok else 'FAIL':6} {name:22} {label:14} {err:14.2e} {gerr:13.2e}")
            ok_all &= reweight_case(dev, dtype, label, h, vtol, gtol)
    finally:
        torch.set_float32_matmul_precision(old)
    ok_all &= bank_against_lightly(dev)
    return ok_all


def reweight_case(
    dev: torch.device, dtype: torch.dtype, label: str, h: torch.Tensor, vtol: float, gtol: float
) -> bool:
    """reweight_normalize elementwise against float64, a learnable kappa included."""
    g = torch.Generator().manual_seed(4)
    up = torch.randn(h.shape, generator=g)
    ref_h, ref_k = (
        h.double().requires_grad_(),
        torch.tensor(1.05, dtype=torch.float64, requires_grad=True),
    )
    ref = reweight_normalize(ref_h, ref_k)
    ref_g = torch.autograd.grad(ref, [ref_h, ref_k], up.double())
    cu_h, cu_k = (
        h.to(dev, dtype).requires_grad_(),
        torch.tensor(1.05, device=dev, requires_grad=True),
    )
    out = reweight_normalize(cu_h, cu_k)
    out_g = torch.autograd.grad(out, [cu_h, cu_k], up.to(dev, dtype))
    # half inputs: compare with the float64 result of the rounded input (the op's own error)
    err = _rel(out, reweight_normalize(h.to(dtype).double(), 1.05))
    gerr = max(_rel(a, b) for a, b in zip(out_g, ref_g, strict=True))
    ok = err < vtol and gerr < gtol
    print(
        f"{'ok' if ok else 'FAIL':6} {'reweight_normalize':22} {label:14} {err:14.2e} {gerr:13.2e}"
    )
    return ok


def bank_against_lightly(dev: torch.device) -> bool:
    """NTXentLoss(memory_bank_size) on CUDA against lightly's on CUDA, same seed, 5 steps."""
    try:
        from lightly.loss import NTXentLoss as LightlyNTXent
    except ImportError:
        print("(lightly not installed: memory-bank comparison skipped)")
        return True
    torch.manual_seed(1)
    theirs = LightlyNTXent(0.2, memory_bank_size=(4096, 128)).to(dev)
    torch.manual_seed(1)
    ours = headkit.NTXentLoss(0.2, memory_bank_size=(4096, 128)).to(dev)
    worst = 0.0
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        z0 = torch.randn(512, 128, generator=g).to(dev).requires_grad_()
        z1 = torch.randn(512, 128, generator=g).to(dev)
        a, b = ours(z0, z1), theirs(z0, z1)
        ga, gb = torch.autograd.grad(a, z0)[0], torch.autograd.grad(b, z0)[0]
        worst = max(worst, abs(a.item() - b.item()) / abs(b.item()), _rel(ga, gb))
    ok = worst < 1e-4
    print(
        f"{'ok' if ok else 'FAIL':6} {'NTXentLoss + bank':22} {'vs lightly':14} {worst:14.2e} (5 steps)"
    )
    return ok


# ----------------------------------------------------------------------------- timing


def _time(fn: Callable[[], None], reps: int = 10) -> tuple[float, int]:
    """(ms per call, peak extra bytes) with CUDA events; raises on OOM."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps, peak


def bench(sizes: list[int], peak: float) -> None:
    dev = torch.device("cuda")
    impls: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "headkit": lambda a, b: nt_xent(a, b, 0.5),
        "dense": lambda a, b: dense_nt_xent(a, b, 0.5),
    }
    try:
        from lightly.loss import NTXentLoss as LightlyNTXent

        lightly_loss = LightlyNTXent(temperature=0.5)
        impls["lightly"] = lambda a, b: lightly_loss(a, b)
    except ImportError:
        print("(lightly not installed: no lightly rows)")
    print(
        f"\nNT-Xent forward + backward, d = 128, {torch.cuda.get_device_name(dev)}, "
        f"torch {torch.__version__}; TFLOP/s counts 3 (2N)^2 d x 2 flops (forward + 2 backward "
        f"matmuls); % of the dense bf16 peak {peak:g} TFLOP/s"
    )
    print(
        f"{'N':>6} {'dtype':>9} {'impl':>8} {'ms':>9} {'TFLOP/s':>8} {'% peak':>7} "
        f"{'peak MiB':>9} {'t/lightly':>9} {'mem/lightly':>11}"
    )
    for n in sizes:
        for dtype in (torch.float32, torch.bfloat16):
            z0 = torch.randn(n, 128, device=dev, dtype=dtype, requires_grad=True)
            z1 = torch.randn(n, 128, device=dev, dtype=dtype, requires_grad=True)
            res: dict[str, tuple[float, float]] = {}
            for name, f in impls.items():

                def step(
                    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = f,
                    a: torch.Tensor = z0,
                    b: torch.Tensor = z1,
                ) -> None:
                    a.grad = b.grad = None
                    f(a, b).backward()

                try:
                    res[name] = _time(step)
                except torch.OutOfMemoryError:
                    res[name] = (math.nan, math.nan)
                except RuntimeError as err:
                    if "out of memory" not in str(err).lower():
                        raise
                    res[name] = (math.nan, math.nan)
                torch.cuda.empty_cache()
            flops = 3 * 2 * (2 * n) ** 2 * 128
            lt, lm = res.get("lightly", (math.nan, math.nan))
            for name, (ms, mem) in res.items():
                tflops = flops / (ms * 1e-3) / 1e12 if ms == ms else math.nan
                row = "OOM" if ms != ms else f"{ms:9.2f}"
                print(
                    f"{n:>6} {str(dtype)[6:]:>9} {name:>8} {row:>9} {tflops:8.1f} "
                    f"{100 * tflops / peak:6.1f}% {mem / 2**20:9.1f} {ms / lt:9.3f} {mem / lm:11.4f}"
                )
            del z0, z1, step
            torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="*", default=[1024, 4096, 16384, 65536])
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--skip-check", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    print(
        f"device: {name} ({torch.cuda.get_device_properties(dev).total_memory / 2**30:.0f} GiB), "
        f"torch {torch.__version__}, headkit {headkit.__version__}, triton "
        f"{'available' if triton_status()['available'] else 'NOT available'}, "
        f"HEADKIT_TRITON={os.environ.get('HEADKIT_TRITON', 'unset')}"
    )
    ok = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if not args.skip_check:
            try:
                ok = correctness(dev)
            except Exception:
                traceback.print_exc()
                ok = False
        try:
            bench(args.sizes, peak_tflops(name, args.peak_tflops))
        except Exception:
            traceback.print_exc()
            ok = False
    print(
        "\nTriton self-check verdicts (op, device, dot dtype, block D, precision -> Triton used):"
    )
    verdicts: dict[object, bool] = triton_status()["verdicts"]  # type: ignore[assignment]
    for key, verdict in sorted(verdicts.items(), key=str):
        print(f"  {key} -> {verdict}")
    for w in caught:
        if "headkit" in str(w.message):
            print(f"WARNING: {w.message}")
    print("\nRESULT:", "all checks passed" if ok else "SOME CHECKS FAILED")


if __name__ == "__main__":
    main()
