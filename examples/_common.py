"""Small helpers the examples share: real digits as tensors or PIL images, and a tiny encoder.

The data is scikit-learn's digits (1,797 real 8x8 handwritten digits that ship inside the wheel),
so nothing is downloaded. The loaders and the augmentation come from headkit's data module,
``headkit.data``, which ``headkit sweep`` and ``headkit demo`` use too.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from headkit import MLPHead, ReweightHead
from headkit.data import augment, digits  # noqa: F401  (re-exported for the examples)


class Encoder(nn.Module):
    """Three MLP blocks (``backbone.block1..3``) and a head (``head``)."""

    def __init__(self, in_dim: int, head: nn.Module | None = None, width: int = 256) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU())

        self.backbone = nn.Sequential()
        self.backbone.add_module("block1", nn.Sequential(nn.Flatten(), block(in_dim, width)))
        self.backbone.add_module("block2", block(width, width))
        self.backbone.add_module("block3", block(width, 128))
        self.head = head if head is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.backbone(x))
        return out


def make_encoder(in_dim: int, head: str = "mlp") -> Encoder:
    """The encoder with ``head`` in ``{"none", "mlp", "reweight"}``."""
    if head == "mlp":
        return Encoder(in_dim, MLPHead(128, 128, 64, num_layers=2))
    if head == "reweight":
        return Encoder(in_dim, ReweightHead(128, kappa=1.05))
    if head == "none":
        return Encoder(in_dim)
    raise ValueError(f"head must be 'none', 'mlp' or 'reweight', got {head!r}")


def digits_pil(size: int = 32) -> tuple[list[object], list[int]]:
    """The digits as RGB PIL images of ``size`` pixels, for torchvision / lightly transforms."""
    from PIL import Image

    x, y = digits()
    imgs = []
    for img in x:
        arr = (img[0] * 255).to(torch.uint8).numpy()
        imgs.append(
            Image.fromarray(arr, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")
        )
    return imgs, y.tolist()


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="a few steps, for CI")
    p.add_argument("--seed", type=int, default=0)
    return p
