"""Functional ops: memory-lean contrastive losses and the fused reweight + normalise.

All of them run on any device in plain PyTorch (tiled, O(N * tile) memory) and use Triton
kernels for CUDA tensors when Triton is installed.
"""

from __future__ import annotations

from ._losses import contrastive_lse, info_nce, nt_xent, sup_con
from ._reweight import reweight_normalize

__all__ = ["contrastive_lse", "info_nce", "nt_xent", "reweight_normalize", "sup_con"]
