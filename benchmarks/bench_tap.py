"""LayerTap overhead and the cost of early exit / truncation, as ratios from one run.

Anchor: the plain forward of torchvision's resnet50 (and timm's resnet50 for the index routes).
Targets: tapping the 4 stages costs < 2% over the plain forward; resnet50 cut after layer2 costs at
most 0.6x the full forward.

    python benchmarks/bench_tap.py [--batch 16] [--size 160] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _util import interleaved

from headkit import LayerTap, truncate_at


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    import timm
    import torchvision

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {tuple(x.shape)}")
    tv = torchvision.models.resnet50().eval()
    tm = timm.create_model("resnet50", pretrained=False).eval()
    stages = ["layer1", "layer2", "layer3", "layer4"]
    tap_all = LayerTap(tv, stages, stop_early=False)
    tap_l2 = LayerTap(tv, ["layer2"])
    cut_l2 = truncate_at(tv, "layer2")
    cut_i2 = truncate_at(tm, 2)

    def ctx_run() -> None:
        with LayerTap(tv, stages) as ctx:
            tv(x)
            _ = ctx.outputs

    with torch.inference_mode():
        t = interleaved(
            {
                "plain": lambda: tv(x),
                "tap4": lambda: tap_all(x),
                "tap_l2_stop": lambda: tap_l2(x),
                "cut_l2": lambda: cut_l2(x),
                "timm_plain": lambda: tm(x),
                "timm_cut2": lambda: cut_i2(x),
                "ctx": ctx_run,
            },
            rounds=args.rounds,
        )
    print(f"{'what':44s} {'ms':>9s} {'ratio':>7s}")
    rows = [
        ("plain forward resnet50 (anchor)", t["plain"], t["plain"]),
        ("LayerTap 4 stages, full forward", t["tap4"], t["plain"]),
        ("LayerTap layer2, stop_early", t["tap_l2_stop"], t["plain"]),
        ("truncate_at(layer2) (torch.fx cut)", t["cut_l2"], t["plain"]),
        ("timm resnet50 plain forward (anchor)", t["timm_plain"], t["timm_plain"]),
        ("timm truncate_at(2) (pruned)", t["timm_cut2"], t["timm_plain"]),
        ("with LayerTap(4 stages): model(x)", t["ctx"], t["plain"]),
    ]
    for name, v, ref in rows:
        print(f"{name:44s} {v * 1e3:9.1f} {v / ref:7.3f}")
    print(f"\ntap overhead: {100 * (t['tap4'] / t['plain'] - 1):+.2f}% (target < 2%)")
    print(f"layer2 cut: {t['cut_l2'] / t['plain']:.3f}x the full forward (target <= 0.6x)")


if __name__ == "__main__":
    main()
