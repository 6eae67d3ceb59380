"""`SweepReport`: per-layer metrics with intervals and ties, as a table, JSON and a figure."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import HeadkitError
from .._layers.model import LayerSpec
from ._registry import ALIASES, METRICS, Metric
from ._stats import round_out

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["SweepReport"]

_FORMAT = "headkit.SweepReport/2"


class _MetricDict(dict[str, list[float | None]]):
    """``{metric: values}`` that also answers to a metric's other names (``"spectrum"``)."""

    def __missing__(self, key: str) -> list[float | None]:
        alias = ALIASES.get(key)
        if alias is not None and alias in self:
            return self[alias]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or (
            isinstance(key, str) and dict.__contains__(self, ALIASES.get(key, key))
        )


def _canonical(name: str) -> str:
    return ALIASES.get(name, name)


def _metric(name: str) -> Metric | None:
    return METRICS.get(_canonical(name))


def _key(name: str, value: float) -> float:
    m = _metric(name)
    return m.key(value) if m is not None else value


@dataclass
class SweepReport:
    """Per-layer metrics of a layer sweep, with 95% intervals and ties for the labelled ones.

    Attributes:
        layers: the layers, in depth order (as given).
        metrics: ``{metric: [value per layer]}`` (names of `METRICS`; accuracies in [0, 1]).
        roles: optional labels per layer, e.g. ``{"backbone": "pre-projection"}``.
        dims: feature width per layer.
        spectra: normalised spectra per layer (top 64 values), for plots.
        info: facts about the run (``n_train``, ``n_test``, ``split``, ``pool``, ``device``,
            ``seed``, ``n_boot``, ``time_s``, ...).
        bounds: ``{metric: [[lo, hi] per layer]}``: 95% intervals of each accuracy (Wilson
            score: never of width 0, also at 0% and 100%).
        ties: ``{metric: [layers]}``: the best layer and every layer whose paired bootstrap
            difference from it is not significant at 5%.

    Example:
        >>> from headkit import SweepReport
        >>> r = SweepReport(["layer3", "layer4"], {"linear": [0.81, 0.74]}, roles={"layer4": "pre-projection"})
        >>> r.best_layer("linear")
        'layer3'
        >>> SweepReport.from_json(r.to_json()) == r
        True
    """

    layers: list[LayerSpec]
    metrics: dict[str, list[float | None]]
    roles: dict[str, str] = field(default_factory=dict)
    dims: list[int] = field(default_factory=list)
    spectra: list[list[float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    bounds: dict[str, list[list[float] | None]] = field(default_factory=dict)
    ties: dict[str, list[LayerSpec]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = list(self.layers)
        self.metrics = _MetricDict({_canonical(k): list(v) for k, v in self.metrics.items()})
        self.bounds = {_canonical(k): list(v) for k, v in self.bounds.items()}
        self.ties = {_canonical(k): list(v) for k, v in self.ties.items()}
        for m, vals in self.metrics.items():
            if len(vals) != len(self.layers):
                raise HeadkitError(
                    f"metric {m!r} has {len(vals)} values for {len(self.layers)} layers"
                )

    # ------------------------------------------------------------------ queries

    def _check_metric(self, metric: str) -> str:
        key = _canonical(metric)
        if key not in self.metrics:
            raise HeadkitError(
                f"metric {metric!r} is not in this report; it has {list(self.metrics)}"
            )
        return key

    def results(self, metric: str) -> dict[LayerSpec, float | None]:
        """``{layer: value}`` of one metric.

        Example:
            >>> from headkit.probe import SweepReport
            >>> SweepReport(["a", "b"], {"knn": [0.5, 0.7]}).results("knn")
            {'a': 0.5, 'b': 0.7}
        """
        key = self._check_metric(metric)
        return dict(zip(self.layers, self.metrics[key], strict=True))

    def best_layer(self, metric: str = "linear") -> LayerSpec:
        """The layer with the best value of ``metric`` (by the metric's direction; first on ties).

        Example:
            >>> from headkit.probe import SweepReport
            >>> SweepReport(["a", "b"], {"linear": [0.5, 0.7]}).best_layer("linear")
            'b'
        """
        key = self._check_metric(metric)
        vals = [(v, i) for i, v in enumerate(self.metrics[key]) if v is not None]
        if not vals:
            raise HeadkitError(f"metric {metric!r} has no values")
        return self.layers[max(vals, key=lambda t: (_key(key, t[0]), -t[1]))[1]]

    def intervals(self, metric: str = "linear") -> dict[LayerSpec, tuple[float, float]]:
        """``{layer: (lo, hi)}``: the 95% (Wilson score) interval of a labelled metric.

        Raises:
            HeadkitError: the metric has no intervals (a label-free metric, or ``n_boot=0``).

        Example:
            >>> from headkit.probe import SweepReport
            >>> r = SweepReport(["a"], {"knn": [0.5]}, bounds={"knn": [[0.4, 0.6]]})
            >>> r.intervals("knn")
            {'a': (0.4, 0.6)}
        """
        key = self._check_metric(metric)
        bounds = self.bounds.get(key)
        if not bounds:
            raise HeadkitError(
                f"metric {metric!r} has no intervals in this report (a labelled metric has them "
                "unless n_boot=0)"
            )
        return {
            layer: (float(b[0]), float(b[1]))
            for layer, b in zip(self.layers, bounds, strict=True)
            if b is not None
        }

    def tied_with_best(self, metric: str = "linear") -> list[LayerSpec]:
        """The best layer and every layer not significantly worse (paired bootstrap, 5%).

        Raises:
            HeadkitError: the metric has no bootstrap (a label-free metric, or ``n_boot=0``).

        Example:
            >>> from headkit.probe import SweepReport
            >>> r = SweepReport(["a", "b"], {"knn": [0.7, 0.69]}, ties={"knn": ["a", "b"]})
            >>> r.tied_with_best("knn")
            ['a', 'b']
        """
        key = self._check_metric(metric)
        if key not in self.ties:
            raise HeadkitError(
                f"metric {metric!r} has no paired bootstrap in this report, so ties cannot be "
                "told (labelled metrics get one unless n_boot=0)"
            )
        return list(self.ties[key])

    # ------------------------------------------------------------------ output

    def _cell(self, metric: str, i: int) -> str:
        m = _metric(metric)
        v = self.metrics[metric][i]
        if m is None:
            return "-" if v is None else f"{v:.4g}"
        text = m.format(v)
        b = self.bounds.get(metric)
        if v is not None and b and b[i] is not None:
            lo, hi = b[i]  # type: ignore[misc]
            scale = 100 if m.percent else 1
            dec = re.fullmatch(r"\.(\d+)f", m.fmt)
            if dec is not None:  # rounded outward: 98.16-100 prints 98.1-100.0, never narrower
                lo, hi = (x / scale for x in round_out(lo * scale, hi * scale, int(dec[1])))
            text += f" ({m.format(lo)}-{m.format(hi)})"
        return text

    def table(self, fmt: str = "text") -> str:
        """The report as a printable table (``fmt``: ``"text"`` or ``"markdown"``).

        Accuracies print as percentages with their 95% interval, ``98.1 (97.2-98.9)``, rounded
        outward (the printed interval contains the exact one); ``*`` marks the best layer of a
        column and ``=`` the layers tied with it.

        Example:
            >>> from headkit.probe import SweepReport
            >>> r = SweepReport(["a", "b"], {"knn": [0.9, 0.7]}, bounds={"knn": [[0.85, 0.95], [0.6, 0.8]]},
            ...                 ties={"knn": ["a"]})
            >>> print(r.table())  # doctest: +NORMALIZE_WHITESPACE
            layer  dim  kNN acc %
            -----  ---  ------------------
            a           90.0 (85.0-95.0) *
            b           70.0 (60.0-80.0)
            * best layer per metric; = tied with the best (paired bootstrap, 95%)
        """
        if fmt not in ("text", "markdown"):
            raise HeadkitError(f"fmt must be 'text' or 'markdown', got {fmt!r}")
        metrics = list(self.metrics)
        head = [
            "layer",
            *(["role"] if self.roles else []),
            "dim",
            *((_metric(m).display if _metric(m) else m) for m in metrics),  # type: ignore[union-attr]
        ]
        best = {
            m: self.best_layer(m) for m in metrics if any(v is not None for v in self.metrics[m])
        }
        rows = []
        for i, layer in enumerate(self.layers):
            row = [str(layer)]
            if self.roles:
                row.append(self.roles.get(str(layer), ""))
            row.append(str(self.dims[i]) if i < len(self.dims) else "")
            for m in metrics:
                cell = self._cell(m, i)
                if best.get(m) == layer:
                    cell += " *"
                elif layer in self.ties.get(m, ()):
                    cell += " ="
                row.append(cell)
            rows.append(row)
        note = "best layer per metric"
        if self.ties:
            note += "; = tied with the best (paired bootstrap, 95%)"
        if fmt == "markdown":
            lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            return "\n".join(lines) + f"\n\n`*` {note}"
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        fmt_row = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt_row.format(*head).rstrip(), fmt_row.format(*("-" * w for w in widths))]
        lines += [fmt_row.format(*r).rstrip() for r in rows]
        return "\n".join(lines) + f"\n* {note}"

    def to_json(self) -> str:
        """The report as JSON text (`SweepReport.from_json` reads it back, intervals included)."""
        return json.dumps(
            {
                "format": _FORMAT,
                "layers": self.layers,
                "metrics": dict(self.metrics),
                "bounds": self.bounds,
                "ties": self.ties,
                "roles": self.roles,
                "dims": self.dims,
                "spectra": self.spectra,
                "info": self.info,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> SweepReport:
        """Read a report written by `SweepReport.to_json` (also 0.1's format).

        Example:
            >>> from headkit.probe import SweepReport
            >>> r = SweepReport([0, 1], {"linear": [0.5, 0.6]}, bounds={"linear": [[0.4, 0.6], [0.5, 0.7]]})
            >>> SweepReport.from_json(r.to_json()).intervals("linear")
            {0: (0.4, 0.6), 1: (0.5, 0.7)}
        """
        try:
            d = json.loads(text)
            return cls(
                layers=list(d["layers"]),
                metrics={k: list(v) for k, v in d["metrics"].items()},
                roles=dict(d.get("roles", {})),
                dims=list(d.get("dims", [])),
                spectra=[list(s) for s in d.get("spectra", [])],
                info=dict(d.get("info", {})),
                bounds={k: list(v) for k, v in d.get("bounds", {}).items()},
                ties={k: list(v) for k, v in d.get("ties", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise HeadkitError(f"not a headkit SweepReport JSON: {err}") from err

    def figure(self, metrics: list[str] | None = None, title: str | None = None) -> Figure:
        """A matplotlib `Figure`: every metric against depth (with intervals) and the spectra.

        Built without pyplot (no global state, no backend switch). Needs matplotlib
        (``pip install "headkit[plot]"``).
        """
        from ._plot import report_figure

        return report_figure(self, metrics=metrics, title=title)

    def plot(
        self,
        path: str | os.PathLike[str],
        title: str | None = None,
        metrics: list[str] | None = None,
    ) -> str:
        """Write `SweepReport.figure` to an image file (``.png``, ``.pdf``, ``.svg``).

        Returns:
            The path written.
        """
        fig = self.figure(metrics=metrics, title=title)
        fig.savefig(os.fspath(path), dpi=120)
        return os.fspath(path)
