"""Layer sweeps: which layer should I use?

Per-layer linear probes and kNN with labels, label-free measures of how unequally each layer
weights its features (the paper's "progressive feature weighting"), reports and online probes.
"""

from __future__ import annotations

from ._probe import (
    Features,
    OnlineLayerProbe,
    ProbeResult,
    Spectrum,
    SweepReport,
    extract_features,
    feature_spectrum,
    knn_accuracy,
    layer_sweep,
    linear_probe,
    rankme,
)

__all__ = [
    "Features",
    "OnlineLayerProbe",
    "ProbeResult",
    "Spectrum",
    "SweepReport",
    "extract_features",
    "feature_spectrum",
    "knn_accuracy",
    "layer_sweep",
    "linear_probe",
    "rankme",
]
