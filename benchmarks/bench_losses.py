"""NT-Xent: headkit against lightly's NTXentLoss and a plain dense implementation, in one run.

For N in {256, 1024, 4096} (two views of N embeddings, d = 128, float32), forward + backward:
median time and peak extra memory (bytes of tensors alive at once during the step, tracked with a
TorchDispatchMode: the inputs are not counted). Targets at N = 4096 on the CPU: headkit's peak at
most 5% of lightly's, time at most lightly's. With a CUDA device it also times the Triton path
against the dense CUDA loss (N up to 65536) and reads torch.cuda.max_memory_allocated.

    python benchmarks/bench_losses.py [--sizes 256 1024 4096] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(__file__))
from _util import dense_nt_xent, interleaved

from headkit.ops import nt_xent


class PeakMemory(TorchDispatchMode):
    """Peak bytes of storages created by ops and still alive (CPU or any device)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self.seen:
                    self.seen.add(key)
                    self.live += st.nbytes()
                    weakref.finalize(st, self._free, key, st.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def step(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z0: torch.Tensor, z1: torch.Tensor
) -> None:
    z0.grad = z1.grad = None
    fn(z0, z1).backward()


def peak_cpu(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z0: torch.Tensor, z1: torch.Tensor
) -> int:
    with PeakMemory() as mode:
        step(fn, z0, z1)
    return mode.peak


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 1024, 4096])
    ap.add_argument("--cuda-sizes", type=int, nargs="*", default=[1024, 4096, 16384, 65536])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dim", type=int, default=128)
    args = ap.parse_args()
    from lightly.loss import NTXentLoss  # the anchor (pip install "headkit[lightly]")

    lightly_loss = NTXentLoss(temperature=0.5)
    fns = {
        "lightly": lambda a, b: lightly_loss(a, b),
        "dense": dense_nt_xent,
        "headkit": lambda a, b: nt_xent(a, b, 0.5),
    }
    print(
        f"CPU: torch {torch.__version__}, {torch.get_num_threads()} threads, d = {args.dim}, float32, forward + backward"
    )
    print(
        f"{'N':>6} {'impl':>8} {'ms':>9} {'time/lightly':>13} {'peak MiB':>10} {'peak/lightly':>13}"
    )
    for n in args.sizes:
        g = torch.Generator().manual_seed(n)
        z0 = torch.randn(n, args.dim, generator=g, requires_grad=True)
        z1 = torch.randn(n, args.dim, generator=g, requires_grad=True)
        rounds = args.rounds if n <= 1024 else max(3, args.rounds // 2)
        t = interleaved(
            {k: (lambda f=f, a=z0, b=z1: step(f, a, b)) for k, f in fns.items()}, rounds=rounds
        )
        mem = {k: peak_cpu(f, z0, z1) for k, f in fns.items()}
        for k in fns:
            print(
                f"{n:>6} {k:>8} {t[k] * 1e3:9.1f} {t[k] / t['lightly']:13.3f} {mem[k] / 2**20:10.2f} {mem[k] / mem['lightly']:13.4f}"
            )
    if torch.cuda.is_available():
        from gpu_check import bench as cuda_bench
        from gpu_check import peak_tflops

        cuda_bench(args.cuda_sizes, peak_tflops(torch.cuda.get_device_name(), None))


if __name__ == "__main__":
    main()
