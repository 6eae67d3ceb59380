"""Layer sweeps: which layer should I use?

Per-layer linear probes and kNN with labels (with Wilson intervals and paired-bootstrap ties), label-free
measures of each layer (RankMe, the paper's spectrum unevenness, alpha-ReQ, NESum, LiDAR), a
layer recommendation without labelled data, reports and figures, and online probes.

The package, one module per concern: ``_extract`` (features from a model, distributed
gathering, stores), ``_rows`` (features read in batches, from memory or disk), ``_linear``
(batched linear probes), ``_metrics`` (kNN and the label-free measures), ``_registry`` (the
metric registry), ``_stats`` (paired bootstrap), ``_report`` (`SweepReport`), ``_plot``
(figures), ``_sweep`` (`layer_sweep`), ``_choose`` (`recommend_layer`), ``_few_labels`` (the
few-label rules), ``_bench`` (how each rule fared on the benchmark), ``_views`` (multi-view
batches for LiDAR), ``_online`` (`OnlineLayerProbe`); torch.distributed lives in
``headkit._dist``.
"""

from __future__ import annotations

from ._choose import (
    FEW_LABEL_RULES,
    RULES,
    BenchRecord,
    LayerChoice,
    bench_record,
    choose_layer,
    guess_family,
    recommend_layer,
)
from ._extract import Features, extract_features
from ._linear import ProbeResult, linear_probe
from ._metrics import (
    Spectrum,
    alpha_req,
    feature_spectrum,
    knn_accuracy,
    lidar,
    nesum,
    rankme,
    unevenness,
)
from ._online import OnlineLayerProbe
from ._plot import plot_reports
from ._registry import METRICS, Metric
from ._report import SweepReport
from ._stats import Bootstrap, paired_bootstrap, tied_with
from ._sweep import layer_sweep

__all__ = [
    "FEW_LABEL_RULES",
    "METRICS",
    "RULES",
    "BenchRecord",
    "Bootstrap",
    "Features",
    "LayerChoice",
    "Metric",
    "OnlineLayerProbe",
    "ProbeResult",
    "Spectrum",
    "SweepReport",
    "alpha_req",
    "bench_record",
    "choose_layer",
    "extract_features",
    "feature_spectrum",
    "guess_family",
    "knn_accuracy",
    "layer_sweep",
    "lidar",
    "linear_probe",
    "nesum",
    "paired_bootstrap",
    "plot_reports",
    "rankme",
    "recommend_layer",
    "tied_with",
    "unevenness",
]
