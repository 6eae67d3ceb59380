"""LayerTap overhead and the cost of early exit / truncation, as ratios from one run; and the
parameters `truncate_at` keeps on Hugging Face and open_clip encoders.

Anchor: the plain forward of torchvision's resnet50 (and timm's resnet50 for the index routes).
Targets: tapping the 4 stages costs < 2% over the plain forward; resnet50 cut after layer2 costs at
most 0.6x the full forward.

    python benchmarks/bench_tap.py [--batch 8] [--size 224] [--rounds 9]
    python benchmarks/bench_tap.py --params   # parameters kept by cuts (HF, open_clip)
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
    ap.add_argument("--params", action="store_true", help="only the parameters kept by cuts")
    args = ap.parse_args()
    if args.params:
        params_kept()
        return
    import timm
    import torchvision

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {tuple(x.shape)}, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
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
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def params_kept() -> None:
    """Parameters kept by `truncate_at` at the middle block of each encoder (default configs,
    random weights; nothing is downloaded)."""
    import warnings

    import open_clip
    import transformers as T

    from headkit import default_layers

    warnings.filterwarnings("ignore")
    builders = {
        "HF ViTModel (ViT-B/16)": lambda: T.ViTModel(T.ViTConfig()),
        "HF Dinov2Model (base)": lambda: T.Dinov2Model(T.Dinov2Config()),
        "HF Dinov2WithRegistersModel (base, 4 registers)": lambda: T.Dinov2WithRegistersModel(
            T.Dinov2WithRegistersConfig(num_register_tokens=4)
        ),
        "HF CLIPVisionModel (ViT-B/32)": lambda: T.CLIPVisionModel(T.CLIPVisionConfig()),
        "HF BertModel (base)": lambda: T.BertModel(T.BertConfig()),
        "HF ConvNextModel (tiny)": lambda: T.ConvNextModel(T.ConvNextConfig()),
        "HF SwinModel (tiny)": lambda: T.SwinModel(T.SwinConfig()),
        "open_clip ViT-B-32 visual": lambda: (
            open_clip.create_model("ViT-B-32", pretrained=None).visual
        ),
        "open_clip RN50 visual": lambda: open_clip.create_model("RN50", pretrained=None).visual,
        "open_clip ViT-B-32 (whole CLIP)": lambda: open_clip.create_model(
            "ViT-B-32", pretrained=None
        ),
    }
    print(f"{'model':48s} {'cut at':32s} {'route':8s} {'kept':>12s} {'total':>12s} {'ratio':>6s}")
    for name, build in builders.items():
        model = build().eval()
        layers = default_layers(model)
        layer = layers[len(layers) // 2 - 1]
        cut = truncate_at(model, layer)
        print(
            f"{name:48s} {layer!s:32s} {cut.route:8s} {cut.kept_params:12,d} "
            f"{cut.total_params:12,d} {cut.kept_params / cut.total_params:6.3f}"
        )
        del model, cut


if __name__ == "__main__":
    main()
