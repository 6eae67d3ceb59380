"""The one registry of per-layer metrics: name, function, direction, labels, display, format."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeVar

from torch import Tensor

from .._errors import HeadkitError, closest
from ._linear import linear_probe
from ._metrics import (
    _alpha_from,
    _check_variance,
    _nesum_from,
    _rankme_from,
    _unevenness_from,
    alpha_req,
    knn_accuracy,
    lidar,
    nesum,
    rankme,
    unevenness,
)

__all__ = [
    "ALIASES",
    "METRICS",
    "SPECTRAL",
    "Frozen",
    "Metric",
    "MetricRegistry",
    "get_metric",
    "spectrum_values",
]

# ----------------------------------------------------------------------------- the registry

Direction = Literal["higher", "lower", "target"]


@dataclass(frozen=True)
class Metric:
    """One per-layer measure, as `layer_sweep`, `SweepReport` and `recommend_layer` use it.

    Attributes:
        name: registry key (``"linear"``, ``"knn"``, ``"rankme"``, ...).
        display: column and axis title.
        direction: ``"higher"`` or ``"lower"`` is better, or ``"target"`` (closest to
            ``target`` is better).
        needs_labels: computed from labelled data (these get bootstrap intervals).
        needs_views: needs several augmented views of each sample (positive pairs).
        percent: an accuracy in [0, 1], shown as a percentage.
        fmt: format of one value (of ``100 * value`` for percentages).
        fn: the public function computing it on one layer's features.
        description: one line for tables and docs.
        target: the best value of a ``"target"`` metric.

    Example:
        >>> from headkit.probe import METRICS
        >>> m = METRICS["unevenness"]
        >>> m.direction, m.needs_labels, m.format(0.1234)
        ('lower', False, '0.123')
    """

    name: str
    display: str
    direction: Direction
    needs_labels: bool
    needs_views: bool
    percent: bool
    fmt: str
    fn: Callable[..., object]
    description: str
    target: float | None = None

    def format(self, value: float | None) -> str:
        """One value as the table prints it (``-`` for None)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return format(100 * value if self.percent else value, self.fmt)

    def key(self, value: float) -> float:
        """A number that is larger for better values (for ranking layers)."""
        if self.direction == "higher":
            return value
        if self.direction == "lower":
            return -value
        assert self.target is not None
        return -abs(value - self.target)


_REGISTRY: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "linear",
            "linear probe acc %",
            "higher",
            True,
            False,
            True,
            ".1f",
            linear_probe,
            "top-1 accuracy of a softmax-regression probe, setting chosen on held-out data",
        ),
        Metric(
            "knn",
            "kNN acc %",
            "higher",
            True,
            False,
            True,
            ".1f",
            knn_accuracy,
            "weighted cosine kNN top-1 accuracy (k = 20, T = 0.07), as DINO and lightly",
        ),
        Metric(
            "rankme",
            "RankMe",
            "higher",
            False,
            False,
            False,
            ".2f",
            rankme,
            "effective rank of the singular values (Garrido et al. 2023); higher = more dimensions used",
        ),
        Metric(
            "unevenness",
            "unevenness",
            "lower",
            False,
            False,
            False,
            ".3f",
            unevenness,
            "Gini of the spectrum (Xue et al. 2024); lower = more even",
        ),
        Metric(
            "alpha_req",
            "alpha-ReQ",
            "target",
            False,
            False,
            False,
            ".3f",
            alpha_req,
            "power-law decay of the eigenspectrum (Agrawal et al. 2022); closest to 1 is best",
            target=1.0,
        ),
        Metric(
            "nesum",
            "NESum",
            "higher",
            False,
            False,
            False,
            ".2f",
            nesum,
            "sum of covariance eigenvalues over the largest (He & Ozay 2022); higher = more even",
        ),
        Metric(
            "lidar",
            "LiDAR",
            "higher",
            False,
            True,
            False,
            ".2f",
            lidar,
            "effective rank of the discriminant between views (Thilak et al. 2024); needs views",
        ),
    )
}

K = TypeVar("K")
V = TypeVar("V")


class Frozen(Mapping[K, V]):
    """A read-only mapping (the registries)."""

    def __init__(self, data: Mapping[K, V]) -> None:
        self._data = MappingProxyType(dict(data))

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self._data)})"


class MetricRegistry(Frozen[str, Metric]):
    """The one registry of per-layer metrics: ``{name: Metric}``, read-only.

    Every consumer (`layer_sweep`, `SweepReport`'s table and plots, `recommend_layer`) takes a
    metric's direction, display name and format from here. ``"spectrum"`` is accepted as another
    name of ``"unevenness"`` and ``"alpha"`` of ``"alpha_req"``.

    Example:
        >>> from headkit.probe import METRICS
        >>> [(m.name, m.direction) for m in METRICS.values() if not m.needs_labels][:2]
        [('rankme', 'higher'), ('unevenness', 'lower')]
    """


#: Every metric `layer_sweep` computes, by name (read-only).
METRICS: MetricRegistry = MetricRegistry(_REGISTRY)
#: Other names accepted for a metric.
ALIASES: Mapping[str, str] = MappingProxyType({"spectrum": "unevenness", "alpha": "alpha_req"})

# spectral metrics computed from (squared singular values, centred eigenvalues)
SPECTRAL: dict[str, Callable[[Tensor, Tensor], float]] = {
    "rankme": lambda unc, cen: _rankme_from(unc),
    "unevenness": lambda unc, cen: _unevenness_from(cen),
    "alpha_req": lambda unc, cen: _alpha_from(cen),
    "nesum": lambda unc, cen: _nesum_from(cen),
}


def get_metric(name: str) -> Metric:
    """The registry entry of ``name`` (aliases accepted), or a clear error."""
    if not isinstance(name, str):
        raise HeadkitError(f"a metric name must be a str, got {name!r}")
    key = ALIASES.get(name, name)
    if key not in METRICS:
        near = closest(name, [*METRICS, *ALIASES])
        raise HeadkitError(
            f"unknown metric {name!r}; choose from {list(METRICS)}"
            + (f" (closest: {near})" if near else "")
        )
    return METRICS[key]


def spectrum_values(unc: Tensor, cen: Tensor, top: int = 64) -> list[float]:
    """The first ``top`` variance shares, for reports."""
    v = _check_variance(cen, "spectrum")
    return [float(x) for x in v[:top].cpu()]
