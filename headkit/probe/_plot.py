"""Figures of sweeps: matplotlib `Figure` objects, never pyplot's global state."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import HeadkitError
from .._layers.model import LayerSpec
from ._registry import ALIASES, METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ._report import SweepReport

__all__ = ["plot_reports", "report_figure", "reports_figure"]


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise HeadkitError('plots need matplotlib: pip install "headkit[plot]"') from err
    return Figure(figsize=(width, height))


def _colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def _title(metric: str) -> str:
    m = METRICS.get(ALIASES.get(metric, metric))
    return m.display if m is not None else metric


def _scale(metric: str) -> float:
    m = METRICS.get(ALIASES.get(metric, metric))
    return 100.0 if m is not None and m.percent else 1.0


def _label(layer: LayerSpec, roles: Mapping[str, str]) -> str:
    role = roles.get(str(layer))
    return f"{layer}\n({role})" if role else str(layer)


def _draw(
    ax: Any,
    report: SweepReport,
    metric: str,
    xs: Sequence[float],
    color: Any = None,
    label: str | None = None,
) -> None:
    """One metric of one report: a line, its intervals, the best (star) and the ties (filled)."""
    scale = _scale(metric)
    key = ALIASES.get(metric, metric)
    vals = [float("nan") if v is None else scale * v for v in report.metrics[key]]
    bounds = report.bounds.get(key)
    line = ax.plot(xs, vals, marker="o", color=color, label=label, mfc="white", zorder=2)[0]
    color = line.get_color()
    if bounds:
        lo = [v - scale * b[0] if b else 0.0 for v, b in zip(vals, bounds, strict=True)]
        hi = [scale * b[1] - v if b else 0.0 for v, b in zip(vals, bounds, strict=True)]
        ax.errorbar(xs, vals, yerr=[lo, hi], fmt="none", ecolor=color, capsize=3, alpha=0.7)
    tied = report.ties.get(key, [])
    for i, layer in enumerate(report.layers):
        if layer in tied:
            ax.plot([xs[i]], [vals[i]], marker="o", color=color, zorder=3)
    if any(v == v for v in vals):
        best = report.layers.index(report.best_layer(key))
        ax.plot([xs[best]], [vals[best]], marker="*", markersize=13, color=color, zorder=4)


def _metrics_of(reports: Sequence[SweepReport], metrics: Sequence[str] | None) -> list[str]:
    if metrics is not None:
        out = [ALIASES.get(m, m) for m in metrics]
        for m in out:
            if not any(m in r.metrics for r in reports):
                raise HeadkitError(f"no report has metric {m!r}")
        return out
    seen: list[str] = []
    for r in reports:
        for m, vals in r.metrics.items():
            if m not in seen and any(v is not None for v in vals):
                seen.append(m)
    return seen


def report_figure(
    report: SweepReport, metrics: Sequence[str] | None = None, title: str | None = None
) -> Figure:
    """Every metric of ``report`` against depth, with intervals, and the spectra."""
    names = _metrics_of([report], metrics)
    n = len(names) + (1 if report.spectra else 0)
    fig = _figure(3.8 * max(1, n), 3.6)
    axes = fig.subplots(1, max(1, n), squeeze=False)[0]
    xs = list(range(len(report.layers)))
    labels = [_label(layer, report.roles) for layer in report.layers]
    for ax, m in zip(axes, names, strict=False):
        _draw(ax, report, m, xs)
        ax.set_title(_title(m))
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
    if report.spectra:
        ax = axes[-1]
        cmap = _colormap("viridis")
        for i, s in enumerate(report.spectra):
            ax.semilogy(
                range(1, len(s) + 1),
                s,
                color=cmap(i / max(1, len(report.spectra) - 1)),
                label=labels[i].replace("\n", " "),
            )
        ax.set_title("spectrum (variance share)")
        ax.set_xlabel("direction")
        ax.legend(fontsize=6)
    _finish(fig, title, report)
    out: Figure = fig
    return out


def _finish(fig: Any, title: str | None, report: SweepReport | None) -> None:
    if title:
        fig.suptitle(title)
    if report is not None and report.bounds:
        fig.text(
            0.01,
            0.01,
            "bars: 95% Wilson intervals; star: best; filled: tied with the best",
            fontsize=6,
            alpha=0.7,
        )
    fig.tight_layout()


def reports_figure(
    reports: Mapping[str, SweepReport],
    metrics: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Several sweeps on shared axes: one panel per metric, one line per report."""
    if not reports:
        raise HeadkitError("plot_reports needs at least one report")
    reps = list(reports.values())
    names = _metrics_of(reps, metrics)
    longest = max(reps, key=lambda r: len(r.layers))
    order: list[str] = [str(layer) for layer in longest.layers]
    roles: dict[str, str] = dict(longest.roles)
    for r in reps:
        for layer in r.layers:
            if str(layer) not in order:
                order.append(str(layer))
            if str(layer) in r.roles:
                roles.setdefault(str(layer), r.roles[str(layer)])
    position = {name: i for i, name in enumerate(order)}
    fig = _figure(4.2 * max(1, len(names)), 3.9)
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    cmap = _colormap("tab10")
    for j, (name, rep) in enumerate(reports.items()):
        xs = [float(position[str(layer)]) for layer in rep.layers]
        for ax, m in zip(axes, names, strict=False):
            if m in rep.metrics:
                _draw(ax, rep, m, xs, color=cmap(j % 10), label=name)
    ticks = list(range(len(order)))
    labels = [_label(name, roles) for name in order]
    for ax, m in zip(axes, names, strict=False):
        ax.set_title(_title(m))
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _finish(fig, title, next((r for r in reps if r.bounds), None))
    out: Figure = fig
    return out


def plot_reports(
    reports: Mapping[str, SweepReport],
    path: str | os.PathLike[str],
    metrics: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Several sweeps (e.g. one per head) on shared axes, with 95% intervals, into a file.

    One panel per metric; layers with the same name share an x position (the longest report's
    order first). Accuracies are drawn as percentages, as the table prints them; bars are the
    Wilson intervals, a star marks each report's best layer and filled dots the layers
    tied with it. Needs matplotlib (``pip install "headkit[plot]"``); no pyplot state is used.

    Args:
        reports: ``{name: SweepReport}`` (names go into the legend).
        path: output file (``.png``, ``.pdf``, ``.svg``).
        metrics: metrics to draw (default: every metric with values in any report).
        title: figure title.

    Returns:
        The path written.

    Example:
        >>> import os, tempfile
        >>> from headkit.probe import SweepReport, plot_reports
        >>> a = SweepReport(["b1", "b2"], {"knn": [0.8, 0.9]}, bounds={"knn": [[0.7, 0.9], [0.85, 0.95]]})
        >>> b = SweepReport(["b1", "b2", "head"], {"knn": [0.8, 0.85, 0.6]})
        >>> path = plot_reports({"no head": a, "MLP head": b}, os.path.join(tempfile.mkdtemp(), "f.png"))
        >>> os.path.getsize(path) > 1000
        True
    """
    fig = reports_figure(reports, metrics=metrics, title=title)
    fig.savefig(os.fspath(path), dpi=120)
    return os.fspath(path)
