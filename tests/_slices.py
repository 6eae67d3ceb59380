"""A model whose layers are fixed slices of its input (probe tests)."""

from __future__ import annotations

import torch
from torch import nn


class Slices(nn.Module):
    """Taps that are fixed slices of the input: layers of a known quality, no training."""

    def __init__(self, spans: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.spans = spans
        for name in spans:
            self.add_module(name, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, k)(x[:, a:b]) for k, (a, b) in self.spans.items()], 1)
