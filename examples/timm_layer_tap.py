"""LayerTap, truncate_at and feature_info on a timm ResNet and a ViT, and cutting a checkpoint.

    python examples/timm_layer_tap.py [--smoke]

Full run: 39 s on a 2-core CPU shared with other jobs (load average 9); random weights, nothing
is downloaded.
"""

from __future__ import annotations

import os
import tempfile

import timm
import torch
from _common import parser

from headkit import LayerTap, feature_info, truncate_at


def main() -> None:
    args = parser(__doc__).parse_args()
    torch.manual_seed(args.seed)
    # ---------------------------------------------------------------- ResNet
    resnet = timm.create_model("resnet18", pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    print("resnet18 taps (shapes from a meta-device dry run, no compute):")
    for key, info in feature_info(
        resnet, [0, 1, 2, 3, 4, "layer3.1.conv2"], (2, 3, 64, 64)
    ).items():
        print(f"  {key!r:18} {info.shape}")
    with torch.no_grad():
        out = LayerTap(resnet, [2, "layer3"], pool="avg")(x)  # stops after layer3
        ref = resnet.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
        print(
            "index 2 equals forward_intermediates:", torch.equal(LayerTap(resnet, [2])(x)[2], ref)
        )
        print("pooled:", {k: tuple(v.shape) for k, v in out.items()})
    # ---------------------------------------------------------------- ViT: CLS, mean, NCHW
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()
    xv = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        nchw = LayerTap(vit, [5])(xv)[5]  # patch map (B, C, H, W), prefix tokens removed
        cls = LayerTap(vit, [5], pool="cls")(xv)[5]
        mean = LayerTap(vit, ["blocks.5"], pool="mean")(xv)["blocks.5"]  # patch tokens only
        both = LayerTap(vit, [5], pool="cls+mean")(xv)[5]
    print(
        f"vit block 5: NCHW {tuple(nchw.shape)}, CLS {tuple(cls.shape)}, mean {tuple(mean.shape)}, cls+mean {tuple(both.shape)}"
    )
    # ---------------------------------------------------------------- output + lower layers, gradients
    # tap.run: the model's own output (= vit(xv)) and the taps from one forward; int indices
    # come from timm's forward_intermediates, which a plain vit(xv) in a with-block never runs
    logits, feats = LayerTap(vit, ["blocks.3", 3]).run(xv)  # a name and timm's index, one block
    tokens = feats["blocks.3"]  # raw (B, 1 + H*W, C) tokens
    patch_map = feats[3]  # forward_intermediates' (B, C, H, W) layout
    (tokens.pow(2).mean() + logits.mean()).backward()  # a loss on a lower layer
    print(f"tap.run: tokens {tuple(tokens.shape)}, index 3 {tuple(patch_map.shape)}")
    with LayerTap(vit, ["blocks.3"]) as tap:  # names also work around the user's own call
        vit(xv)
        print("with-block:", tuple(tap.outputs["blocks.3"].shape))
    print("grad reached block 0:", vit.blocks[0].attn.qkv.weight.grad is not None)
    # ---------------------------------------------------------------- truncate and cut a checkpoint
    cut = truncate_at(vit, 5, pool="cls")
    n_full = sum(p.numel() for p in vit.parameters())
    n_cut = sum(p.numel() for p in cut.parameters())
    print(f"truncate_at(vit, 5): {n_cut:,} of {n_full:,} parameters, shared with the model")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "pretrained.pt")
        torch.save(vit.state_dict(), path)  # e.g. an SSL checkpoint of the whole model
        fresh = truncate_at(
            timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64), 5, pool="cls"
        )
        fresh.load_state_dict(torch.load(path, weights_only=True))  # full checkpoint, cut model
        fresh.eval()
        cut.eval()
        with torch.no_grad():
            print(
                "cut checkpoint gives the same features:",
                torch.allclose(fresh(xv), cut(xv), atol=1e-6),
            )
    r_cut = truncate_at(resnet, "layer2", pool="avg")
    print("resnet18 cut at layer2:", tuple(r_cut(x).shape))


if __name__ == "__main__":
    main()
