"""A single accuracy's interval never claims certainty; differences between layers stay paired."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from headkit import SweepReport, layer_sweep
from headkit.probe._stats import paired_bootstrap, wilson

Z95 = 1.959963984540054  # the normal quantile of 0.975


def wilson_by_hand(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(200, 200), (0, 200), (1, 1), (150, 200), (7, 10)])
def test_wilson_matches_the_closed_form_and_scipy(k: int, n: int) -> None:
    lo, hi = wilson(torch.tensor([k / n], dtype=torch.float64), n)[0].tolist()
    ref = wilson_by_hand(k, n)
    eps = 64 * torch.finfo(torch.float64).eps
    assert lo == pytest.approx(max(0.0, ref[0]), abs=eps)
    assert hi == pytest.approx(min(1.0, ref[1]), abs=eps)
    assert hi - lo > 0.004  # never of width 0
    stats = pytest.importorskip("scipy.stats")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-9)


def _separable(n: int, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n) % 2
    x = torch.nn.functional.one_hot(y, 2).float()
    return x, (1 - y) if flip else y


def test_200_of_200_is_not_printed_as_certain() -> None:
    """0.2 printed (100.0-100.0): a percentile bootstrap of all-correct samples is a point."""
    xtr, ytr = _separable(100)
    xte, yte = _separable(200)
    rep = layer_sweep(
        nn.Sequential(nn.Identity()), [(xtr, ytr)], [(xte, yte)], layers=["0"], metrics=("knn",),
        n_boot=200, progress=False,
    )  # fmt: skip
    assert rep.results("knn")["0"] == 1.0
    lo, hi = rep.intervals("knn")["0"]
    assert lo == pytest.approx(wilson_by_hand(200, 200)[0]) and lo < 1.0 and hi == 1.0
    assert "100.0 (98.1-100.0)" in rep.table()
    # and 0 of 200: the upper bound is above 0
    rep0 = layer_sweep(
        nn.Sequential(nn.Identity()), [(xtr, ytr)], [(xte, 1 - yte)], layers=["0"],
        metrics=("knn",), n_boot=200, progress=False,
    )  # fmt: skip
    lo0, hi0 = rep0.intervals("knn")["0"]
    assert lo0 == 0.0 and hi0 == pytest.approx(wilson_by_hand(0, 200)[1]) and hi0 > 0
    assert "0.0 (0.0-1.9)" in rep0.table()


def test_printed_intervals_are_rounded_outward() -> None:
    """20,000 of 20,000: the lower bound 99.98% prints as 99.9, never 100.0."""
    r = SweepReport(
        ["a"], {"knn": [1.0]}, bounds={"knn": [wilson(torch.tensor([1.0]), 20000)[0].tolist()]}
    )
    assert re.search(r"100\.0 \(99\.9-100\.0\)", r.table()), r.table()


def test_ties_stay_paired() -> None:
    """Two layers that are right on the same samples are tied, however close to 100%."""
    correct = torch.ones(2, 300, dtype=torch.bool)
    correct[:, :3] = False
    boot = paired_bootstrap(correct, 500, seed=0)
    assert boot.tied(boot.point) == [0, 1]
    assert boot.n == 300
    iv = boot.intervals()
    assert torch.equal(iv, wilson(boot.point, 300)) and bool((iv[:, 1] > iv[:, 0]).all())
