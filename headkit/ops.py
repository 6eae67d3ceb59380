"""Functional ops: memory-lean contrastive losses and the fused reweight + normalise.

All of them run on any device in plain PyTorch (tiled, O(N * tile) memory) and use Triton
kernels for CUDA tensors when Triton is installed; `triton_status` says which path runs.
"""

from __future__ import annotations

from ._kernels.backend import triton_status
from ._kernels.reweight import reweight_normalize
from ._losses import contrastive_lse, info_nce, nt_xent, sup_con

__all__ = [
    "contrastive_lse",
    "info_nce",
    "nt_xent",
    "reweight_normalize",
    "sup_con",
    "triton_status",
]
