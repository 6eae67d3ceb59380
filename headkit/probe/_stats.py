"""Intervals of an accuracy (Wilson score) and the paired bootstrap over test samples (ties).

A single accuracy's interval is the Wilson score interval of a binomial proportion: it never
claims certainty from finite data (200 right out of 200 gives a lower bound of 98.1%, not
100%), where a percentile bootstrap collapses to a point at 0% and 100%. Differences between
layers stay paired: the ties come from the paired bootstrap, the same resamples for every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor

from .._errors import HeadkitError

__all__ = ["Bootstrap", "paired_bootstrap", "tied_with", "wilson"]


def wilson(accuracy: Tensor, n: int, level: float = 0.95) -> Tensor:
    """``(L, 2)`` Wilson score intervals of accuracies ``(L,)`` measured on ``n`` samples each.

    ``(p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``z`` the normal
    quantile of ``(1 + level) / 2``: inside (0, 1), of width > 0 at p = 0 and p = 1 (Wilson,
    JASA 1927; Brown, Cai and DasGupta, Statist. Sci. 2001, recommend it for every n).
    """
    if isinstance(n, bool) or n < 1:
        raise HeadkitError(f"an accuracy's interval needs n >= 1 samples, got {n}")
    if not 0 < level < 1:
        raise HeadkitError(f"level must be in (0, 1), got {level}")
    p = accuracy.detach().to("cpu", torch.float64).clamp(0, 1)
    z = NormalDist().inv_cdf((1 + level) / 2)
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * torch.sqrt(p * (1 - p) / n + z2n / (4 * n))
    return torch.stack([(centre - half).clamp_min(0), (centre + half).clamp_max(1)], 1)


def round_out(lo: float, hi: float, decimals: int) -> tuple[float, float]:
    """``(lo, hi)`` rounded outward to ``decimals``: a printed interval never looks narrower."""
    s = 10**decimals
    return math.floor(lo * s + 1e-9) / s, math.ceil(hi * s - 1e-9) / s


@dataclass
class Bootstrap:
    """Bootstrap accuracies of several layers on the same resamples.

    Attributes:
        point: ``(L,)`` accuracies on the full test set.
        samples: ``(B, L)`` accuracies on B resamples of the test set, the same resample for
            every layer in a row (paired).
        n: test samples behind each accuracy.

    Example:
        >>> import torch
        >>> from headkit.probe import paired_bootstrap
        >>> boot = paired_bootstrap(torch.tensor([[1, 1, 0, 1]]), n_boot=10)
        >>> boot.n, boot.intervals().shape
        (4, torch.Size([1, 2]))
    """

    point: Tensor
    samples: Tensor
    n: int = 0

    def intervals(self, level: float = 0.95) -> Tensor:
        """``(L, 2)`` `wilson` intervals of each layer's accuracy (never of width 0)."""
        return wilson(self.point, self.n, level)

    def percentile_intervals(self, level: float = 0.95) -> Tensor:
        """``(L, 2)`` percentile intervals, widened if needed to contain the point estimate.

        Of width 0 when every test sample is right (or wrong): `intervals` is what reports use.
        """
        a = (1 - level) / 2
        q = torch.quantile(
            self.samples, torch.tensor([a, 1 - a], dtype=self.samples.dtype), dim=0
        ).T
        lo = torch.minimum(q[:, 0], self.point)
        hi = torch.maximum(q[:, 1], self.point)
        return torch.stack([lo, hi], 1)

    def tied(self, keys: Tensor, level: float = 0.95) -> list[int]:
        """Indices of the best layer (largest ``keys``) and of every layer not significantly worse.

        A layer is tied with the best when the ``level`` percentile interval of the paired
        difference (best minus it, resample by resample) contains 0.
        """
        return tied_with(keys, self.samples, level)


def tied_with(keys: Tensor, samples: Tensor, level: float = 0.95) -> list[int]:
    """Best of ``keys`` (L,) and the layers whose paired difference from it includes 0.

    ``samples`` ``(B, L)`` holds the bootstrap values on the same "larger is better" scale.

    Args:
        keys: ``(L,)`` the layers' scores (larger is better).
        samples: ``(B, L)`` their paired bootstrap values (`paired_bootstrap`).
        level: the confidence level of the paired difference.

    Returns:
        Indices of the best layer and of every layer not separable from it.

    Example:
        >>> import torch
        >>> from headkit.probe import paired_bootstrap, tied_with
        >>> correct = torch.stack([torch.arange(200) % 10 < 9, torch.arange(200) % 10 < 5])
        >>> boot = paired_bootstrap(correct, n_boot=200)
        >>> tied_with(boot.point, boot.samples)
        [0]
    """
    best = int(torch.argmax(keys))
    diff = samples[:, best : best + 1] - samples
    a = (1 - level) / 2
    lower = torch.quantile(diff, a, dim=0)
    return [i for i in range(keys.numel()) if i == best or bool(lower[i] <= 0)]


def paired_bootstrap(correct: Tensor, n_boot: int, seed: int = 0) -> Bootstrap:
    """Resample the test samples ``n_boot`` times, the same resamples for every layer.

    Exact and cheap: an accuracy only needs the per-sample correctness, so a resample is a
    vector of multiplicities and all layers' accuracies are one matrix product.

    Args:
        correct: ``(L, M)`` bool (or 0/1) correctness of L layers on M test samples.
        n_boot: number of resamples (>= 1).
        seed: seed of the resampling.

    Returns:
        `Bootstrap` with ``point`` ``(L,)``, ``samples`` ``(n_boot, L)`` (float64, CPU) and
        ``n`` = M.

    Example:
        >>> import torch
        >>> from headkit.probe import paired_bootstrap
        >>> boot = paired_bootstrap(torch.ones(3, 50, dtype=torch.bool), n_boot=100)
        >>> boot.point.tolist(), tuple(boot.samples.shape)
        ([1.0, 1.0, 1.0], (100, 3))
    """
    if correct.dim() != 2 or correct.shape[1] == 0:
        raise HeadkitError(f"correctness must be (L, M) with M >= 1, got {tuple(correct.shape)}")
    if isinstance(n_boot, bool) or n_boot < 1:
        raise HeadkitError(f"n_boot must be >= 1, got {n_boot}")
    c = correct.detach().to("cpu", torch.float64)
    m = c.shape[1]
    gen = torch.Generator().manual_seed(seed)
    out = []
    per = max(1, (1 << 22) // m)
    ct = c.T.contiguous()
    for s in range(0, n_boot, per):
        b = min(per, n_boot - s)
        idx = torch.randint(m, (b, m), generator=gen)
        idx += torch.arange(b).view(-1, 1) * m
        counts = torch.bincount(idx.view(-1), minlength=b * m).view(b, m).double()
        out.append(counts @ ct / m)
    return Bootstrap(c.mean(1), torch.cat(out), m)
