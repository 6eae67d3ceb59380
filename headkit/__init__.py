"""headkit: projection heads and layer-wise representations for self-supervised learning.

Public surface (everything else is private):

- heads: `MLPHead` (with the presets of the common SSL methods), `ReweightHead`;
- losses: `NTXentLoss`, `SupConLoss`, `InfoNCELoss`, `MemoryBank` (functional forms in
  `headkit.ops`);
- layers: `LayerTap`, `feature_info`, `default_layers`, `truncate_at` (`Truncated`),
  `load_checkpoint` (`LoadReport`);
- sweeps: `layer_sweep`, `SweepReport` (and the rest of `headkit.probe`);
- `headkit.data` (images, digits, draws) and `headkit.cli` (the command as a function);
- `HeadkitError`, the one error type (a `ValueError`).
"""

from __future__ import annotations

from . import cli, data, heads, ops, probe
from ._errors import HeadkitError
from ._layers.checkpoint import LoadReport, load_checkpoint
from ._layers.info import feature_info
from ._layers.model import TapInfo, default_layers
from ._layers.tap import LayerTap
from ._layers.truncate import Truncated, truncate_at
from ._losses import InfoNCELoss, MemoryBank, NTXentLoss, SupConLoss
from ._version import __version__
from .heads import MLPHead, ReweightHead
from .probe import SweepReport, layer_sweep

__all__ = [
    "HeadkitError",
    "InfoNCELoss",
    "LayerTap",
    "LoadReport",
    "MLPHead",
    "MemoryBank",
    "NTXentLoss",
    "ReweightHead",
    "SupConLoss",
    "SweepReport",
    "TapInfo",
    "Truncated",
    "__version__",
    "cli",
    "data",
    "default_layers",
    "feature_info",
    "heads",
    "layer_sweep",
    "load_checkpoint",
    "ops",
    "probe",
    "truncate_at",
]
