"""How the layer-choice rules fared on headkit's benchmark: `BenchRecord`, `bench_record`,
`guess_family` (read from the table ``benchmarks/bench_layer_choice.py`` writes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import _bench_table
from ._stats import wilson

__all__ = ["BenchRecord", "bench_record", "guess_family"]


def _tie_interval(hits: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of ``hits`` ties in ``n`` cases."""
    lo, hi = wilson(torch.tensor([hits / n], dtype=torch.float64), n)[0].tolist()
    return float(lo), float(hi)


@dataclass(frozen=True)
class BenchRecord:
    """How a rule fared on headkit's layer-choice benchmark (``benchmarks/bench_layer_choice.py``),
    on the benchmark cases most like the user's.

    A case is one pretrained encoder and one downstream task; the oracle is a linear probe on
    every layer, and a pick counts as tied when the paired bootstrap (95%) over test images
    cannot separate it from the best layer. The numbers come from a committed table
    (``headkit/probe/_bench_table.py``) that the benchmark writes; they describe the families,
    objectives and small images of that grid (``grid``), not every encoder.

    Attributes:
        rule: the rule (a key of `RULES`).
        scope: which cases: ``"family=vit, objective=simclr"``, ``"family=vit"``,
            ``"objective=simclr"`` or ``"all"`` (the narrowest with at least ``min_cases``).
        cases: how many cases the numbers rest on.
        tie_rate: share of those cases whose pick was tied with the oracle's best.
        tie_interval: its 95% Wilson interval.
        mean_regret: mean points of linear-probe accuracy lost against the best layer.
        regret_interval: its 95% bootstrap interval over cases.
        goal_met: whether the rule met the benchmark's goal (tied in >= 80% of all cases and a
            lower mean regret than every fixed default, overall and in every family).
        grid: what the benchmark covered.
        goal_note: how the rule fared against each part of the goal (all cases).

    Example:
        >>> from headkit.probe import bench_record
        >>> r = bench_record("knn_loo")
        >>> r is None or (0.0 <= r.tie_rate <= 1.0 and r.cases > 0)
        True
    """

    rule: str
    scope: str
    cases: int
    tie_rate: float
    tie_interval: tuple[float, float]
    mean_regret: float
    regret_interval: tuple[float, float]
    goal_met: bool
    grid: str
    goal_note: str = ""

    def __str__(self) -> str:
        lo, hi = self.tie_interval
        rlo, rhi = self.regret_interval
        goal = "meets" if self.goal_met else "does NOT meet"
        note = f" ({self.goal_note})" if self.goal_note and not self.goal_met else ""
        return (
            f"on the benchmark ({self.scope}, {self.cases} cases) {self.rule} was tied with the best "
            f"layer in {100 * self.tie_rate:.0f}% ({100 * lo:.0f}-{100 * hi:.0f}) and lost "
            f"{self.mean_regret:.1f} points on average ({rlo:.1f}-{rhi:.1f}); it {goal} the "
            f"benchmark's goal{note}"
        )


def _scopes(family: str | None, objective: str | None) -> list[str]:
    out = []
    if family and objective:
        out.append(f"family={family}, objective={objective}")
    if family:
        out.append(f"family={family}")
    if objective:
        out.append(f"objective={objective}")
    return [*out, "all"]


def bench_record(
    rule: str, family: str | None = None, objective: str | None = None, min_cases: int = 10
) -> BenchRecord | None:
    """How ``rule`` fared on the benchmark cases most like ``(family, objective)``.

    Looks up the committed benchmark table: the narrowest scope with at least ``min_cases``
    cases among ``(family, objective)``, ``family``, ``objective`` and all cases.

    Args:
        rule: a key of `RULES`.
        family: the encoder family (``"mlp"``, ``"cnn3"``, ``"resnet"``, ``"vit"``,
            ``"mixer"`` on the current grid); None or unknown: not used.
        objective: the pretraining objective (``"simclr"``, ``"supcon"``, ``"byol"``,
            ``"mae"``); None or unknown: not used.
        min_cases: the fewest cases a scope must have to be used.

    Returns:
        `BenchRecord`, or None when the benchmark did not measure ``rule``.

    Example:
        >>> from headkit.probe import bench_record
        >>> r = bench_record("rankme", family="vit")
        >>> r is None or r.scope in ("family=vit", "all")
        True
    """
    table = _bench_table.TABLE.get(rule)
    if not table:
        return None
    for scope in _scopes(family, objective):
        row = table.get(scope)
        if row is not None and row[1] >= min_cases:
            hits, n, mean, lo, hi = row
            return BenchRecord(
                rule=rule,
                scope=scope,
                cases=n,
                tie_rate=hits / n,
                tie_interval=_tie_interval(hits, n),
                mean_regret=mean,
                regret_interval=(lo, hi),
                goal_met=bool(_bench_table.GOAL_MET.get(rule, False)),
                goal_note=_bench_table.GOAL_NOTE.get(rule, ""),
                grid=_bench_table.GRID,
            )
    return None


def guess_family(model: nn.Module) -> str:
    """The benchmark family a model most resembles, from its modules' types and names.

    ``"vit"`` (attention), ``"mixer"`` (a module named like ``Mixer``/``ConvNeXt``),
    ``"resnet"`` (convolutions and a residual block), ``"cnn3"`` (convolutions), ``"mlp"``
    (none of those). Used only to choose which benchmark cases `LayerChoice.bench` reports.

    Args:
        model: any module.

    Returns:
        A family name of the benchmark.

    Example:
        >>> from torch import nn
        >>> from headkit.probe import guess_family
        >>> guess_family(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
        'cnn3'
        >>> guess_family(nn.TransformerEncoderLayer(16, 2))
        'vit'
    """
    names = [type(m).__name__.lower() for m in model.modules()]
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()) or any(
        "attention" in n for n in names
    ):
        return "vit"
    if any("mixer" in n or "convnext" in n for n in names):
        return "mixer"
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        residual = ("basicblock", "bottleneck", "resblock", "residual", "basic")
        return "resnet" if any(n.startswith(residual) for n in names) else "cnn3"
    return "mlp"
