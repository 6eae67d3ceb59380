"""Small helpers the examples share: real digits as tensors or PIL images, and a tiny encoder.

The data is scikit-learn's digits (1,797 real 8x8 handwritten digits that ship inside the wheel),
so nothing is downloaded. They are the same helpers ``headkit demo`` uses.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from headkit._demo import augment, load_images, make_encoder  # noqa: F401  (re-exported)


def digits() -> tuple[Tensor, Tensor]:
    """``(1797, 1, 8, 8)`` images in [0, 1] and ``(1797,)`` labels."""
    return load_images(None)


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
