"""Heads: `MLPHead` (with presets), `ReweightHead`, and conversion from lightly's heads.

Example:
    >>> import torch
    >>> from headkit.heads import MLPHead, ReweightHead
    >>> head = torch.nn.Sequential(MLPHead.preset("simclr", input_dim=64), ReweightHead(128))
    >>> head(torch.randn(4, 64)).shape
    torch.Size([4, 128])
"""

from __future__ import annotations

from ._lightly import from_lightly
from ._mlp import PRESETS, MLPHead
from ._reweight import ReweightHead

__all__ = ["PRESETS", "MLPHead", "ReweightHead", "from_lightly"]
