"""Compatibility shim: the losses live in the private package `headkit._losses`."""

from __future__ import annotations

from ._losses import (
    InfoNCELoss,
    MemoryBank,
    NTXentLoss,
    SupConLoss,
    contrastive_lse,
    info_nce,
    nt_xent,
    sup_con,
)

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
