"""Memory-lean contrastive losses (private package; the public names live in `headkit` and
`headkit.ops`).

- ``_lse``: the one primitive, a tiled masked log-sum-exp (eager autograd route, custom ops for
  ``torch.compile``, a dense composite for double backward, Triton dispatch);
- ``_functional``: `nt_xent`, `sup_con`, `info_nce`;
- ``_bank``: `MemoryBank`; ``_modules``: the loss modules; ``_dist``: cross-rank gathering;
- ``_backend``: Triton or PyTorch, and the Triton self-check.
"""

from __future__ import annotations

from ._bank import MemoryBank
from ._functional import contrastive_lse, info_nce, nt_xent, sup_con
from ._modules import InfoNCELoss, NTXentLoss, SupConLoss

__all__ = [
    "InfoNCELoss",
    "MemoryBank",
    "NTXentLoss",
    "SupConLoss",
    "contrastive_lse",
    "info_nce",
    "nt_xent",
    "sup_con",
]
