"""`recommend_layer`: pick a layer without a labelled downstream set, and say how sure it is."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._dist import dist_state
from .._errors import HeadkitError, closest
from .._layers.model import LayerSpec
from .._layers.pool import Pool
from . import _bench_table
from ._bench import BenchRecord, bench_record, guess_family
from ._checks import DegenerateData, check_layers, degenerate, knn_k_for
from ._extract import ExtractOptions, Features, extract
from ._few_labels import (
    RIDGE_LAMBDAS,
    is_head,
    knn_loo,
    linear_cv,
    one_se,
    ridge_loo,
    within_se,
    zsum,
)
from ._metrics import LidarStats, Moments, check_views, moments
from ._registry import METRICS, SPECTRAL, Frozen
from ._rows import Rows
from ._stats import paired_bootstrap, tied_with
from ._views import merge, view_stats

__all__ = [
    "FEW_LABEL_RULES",
    "RULES",
    "BenchRecord",
    "LayerChoice",
    "bench_record",
    "choose_layer",
    "guess_family",
    "recommend_layer",
]


class RuleRegistry(Frozen[str, str]):
    """The rules `recommend_layer` and `choose_layer` know: ``{name: what it does}``, read-only.

    Label-free rules rank layers by a measure of the features alone; few-label rules by an
    accuracy on the labelled samples the loader yields. Pass a name as ``rule=``.

    Example:
        >>> from headkit.probe import RULES
        >>> "rankme" in RULES and "knn_loo" in RULES
        True
    """


#: The rules `recommend_layer` and `choose_layer` know: name -> what they do.
RULES: RuleRegistry = RuleRegistry(
    {
        "rankme": "label-free: highest RankMe (effective rank of the singular values)",
        "unevenness": "label-free: lowest spectrum unevenness (Gini of the variance shares)",
        "alpha_req": "label-free: alpha-ReQ closest to 1",
        "nesum": "label-free: highest NESum",
        "lidar": "label-free, needs views: highest LiDAR",
        "knn_loo": "few labels: highest leave-one-out kNN accuracy on the labelled samples",
        "linear_cv": "few labels: highest cross-validated linear-probe accuracy on the labelled samples",
        "ridge_loo": "few labels: highest closed-form leave-one-out accuracy of ridge regression "
        "to one-hot labels (features standardised with every sample's statistics)",
        "ridge_margin": "few labels: highest mean leave-one-out margin of the same ridge "
        "regression (true-class score minus the best other class): a graded, less noisy "
        "ridge_loo",
        "ridge_1se": "few labels: the shallowest layer (first in the layer order) whose ridge_loo "
        "accuracy is within one binomial standard error of the best layer's (the one-standard-"
        "error rule of cross-validation)",
        "ridge_cv": "few labels: the sum of the z-scores across layers of ridge_loo and linear_cv "
        "(two noisy estimates on the same labelled samples, averaged)",
        "ridge_margin_rankme": "few labels + a label-free prefilter: the highest ridge_margin "
        "among the layers whose RankMe (on every sample) is at least the median of the layers'",
        "ridge_press_alpha": "few labels narrow, a label-free measure picks: the layers outside "
        "a projection head whose ridge leave-one-out squared error (PRESS) is within one paired "
        "standard error of the best, and among them the one whose alpha-ReQ (on every sample) "
        "is closest to 1",
    }
)
#: The rules of `RULES` that need a few labelled samples (the rest are label-free).
FEW_LABEL_RULES = (
    "ridge_press_alpha",
    "ridge_1se",
    "knn_loo",
    "linear_cv",
    "ridge_loo",
    "ridge_margin",
    "ridge_margin_rankme",
    "ridge_cv",
)


@dataclass
class LayerChoice:
    """The layer `recommend_layer` picked, every layer's score and how sure the pick is.

    Attributes:
        layer: the chosen layer.
        scores: ``{layer: score}``: the rule's measure per layer (an accuracy in [0, 1] for the
            few-label rules).
        rule: the rule used (a key of `RULES`).
        direction: ``"higher"``, ``"lower"`` or ``"target"`` (closest to ``target``) is better.
        confidence: share of bootstrap resamples (of the samples) in which ``layer`` wins, or
            None with ``n_boot=0``.
        tied: the chosen layer and every layer whose paired bootstrap difference from it is not
            significant at 5% (just ``[layer]`` with ``n_boot=0``): the layers this data
            cannot separate from the pick.
        labelled: whether the rule used labels.
        n_samples: samples the scores were computed on.
        info: other facts (``n_boot``, ``seed``, ``labels_per_class``, ``family``, ...).
        bench: how the rule fared on the benchmark cases most like this one (`BenchRecord`:
            tie rate with the best layer and mean regret, with intervals and case counts), or
            None when the benchmark did not measure the rule.

    Example:
        >>> from headkit.probe import LayerChoice
        >>> c = LayerChoice("b", {"a": 3.0, "b": 5.0}, "rankme", "higher", 0.9, ["b"], False, 100)
        >>> print(c)
        layer 'b' by rankme (confidence 0.90; tied: ['b'])
    """

    layer: LayerSpec
    scores: dict[LayerSpec, float]
    rule: str
    direction: str
    confidence: float | None
    tied: list[LayerSpec]
    labelled: bool
    n_samples: int
    info: dict[str, Any] = field(default_factory=dict)
    bench: BenchRecord | None = None

    def __str__(self) -> str:
        conf = "no bootstrap" if self.confidence is None else f"confidence {self.confidence:.2f}"
        text = f"layer {self.layer!r} by {self.rule} ({conf}; tied: {self.tied})"
        if self.bench is not None:
            text += f"\n{self.bench}"
        return text


def _check_rule(rule: str, has_labels: bool, has_views: bool) -> str:
    if rule == "auto":
        if has_labels:
            return _bench_table.BEST_FEW_LABEL
        best = _bench_table.BEST_LABEL_FREE
        return best if best != "lidar" or has_views else "rankme"
    if rule not in RULES:
        raise HeadkitError(
            f"unknown rule {rule!r}; choose from {list(RULES)} (or 'auto'); closest: {closest(rule, RULES)}"
        )
    if rule in FEW_LABEL_RULES and not has_labels:
        raise HeadkitError(
            f"rule {rule!r} needs labels, but there are none (the loader yields inputs only)"
        )
    if rule == "lidar" and not has_views:
        raise HeadkitError("rule 'lidar' needs positive pairs: pass views=")
    return rule


def _few_labels(labels: Tensor, per_class: int | None, seed: int) -> Tensor:
    """Indices of at most ``per_class`` samples of every class (seeded), sorted."""
    if per_class is None:
        return torch.arange(labels.numel())
    if per_class < 1:
        raise HeadkitError(f"labels_per_class must be >= 1, got {per_class}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(labels.numel(), generator=gen)
    keep = []
    counts: dict[int, int] = {}
    for i, y in zip(perm.tolist(), labels[perm].tolist(), strict=True):
        if counts.get(y, 0) < per_class:
            counts[y] = counts.get(y, 0) + 1
            keep.append(i)
    return torch.tensor(sorted(keep), dtype=torch.long)


@dataclass
class _Blocks:
    """Sums of (x - shift) and (x - shift)(x - shift)^T over random disjoint blocks of rows."""

    shift: Tensor
    n: Tensor  # (B,)
    s1: Tensor  # (B, D)
    s2: Tensor  # (B, D, D)

    def moments(self, weights: Tensor | None = None) -> Moments:
        """`Moments` of the blocks, each counted ``weights`` times (default once)."""
        w = torch.ones_like(self.n) if weights is None else weights.to(self.n)
        n = int((w * self.n).sum())
        return _moments_of(
            max(n, 1), w @ self.s1, torch.einsum("b,bij->ij", w, self.s2), self.shift
        )


def _blocks(rows: Rows, blocks: int, seed: int, dev: torch.device) -> _Blocks:
    gen = torch.Generator().manual_seed(seed)
    assign = torch.randint(blocks, (rows.n,), generator=gen)
    d = rows.d
    s1 = torch.zeros(blocks, d, dtype=torch.float64, device=dev)
    s2 = torch.zeros(blocks, d, d, dtype=torch.float64, device=dev)
    shift: Tensor | None = None
    start = 0
    for block in rows.chunks(rows.block_rows(itemsize=8)):
        b = block.to(dev, torch.float64)
        if shift is None:
            shift = b.mean(0)
        b = b - shift
        a = assign[start : start + b.shape[0]].to(dev)
        start += b.shape[0]
        s1.index_add_(0, a, b)
        for j in range(blocks):
            sel = b[a == j]
            if sel.shape[0]:
                s2[j].addmm_(sel.T, sel)
    assert shift is not None
    n = torch.bincount(assign, minlength=blocks).to(dev, torch.float64)
    return _Blocks(shift, n, s1, s2)


def _moments_of(n: int, s1: Tensor, s2: Tensor, shift: Tensor) -> Moments:
    mean_s = s1 / n
    scatter = s2 - torch.outer(s1, mean_s)
    unc = s2 + torch.outer(shift, s1) + torch.outer(s1, shift) + n * torch.outer(shift, shift)
    return Moments(n, shift + mean_s, (scatter + scatter.T) / 2, (unc + unc.T) / 2)


def _spectral_value(rule: str, mom: Moments) -> float:
    unc, cen = mom.eigenvalues()
    try:
        return SPECTRAL[rule](unc, cen)
    except HeadkitError:
        return float("nan")


def _resample_spectral(rule: str, per_layer: list[_Blocks], n_boot: int, seed: int) -> Tensor:
    """``(n_boot, L)`` values of a spectral rule on block-bootstrap resamples."""
    gen = torch.Generator().manual_seed(seed + 1)
    nb = int(per_layer[0].n.numel())
    out = torch.empty(n_boot, len(per_layer), dtype=torch.float64)
    for b in range(n_boot):
        w = torch.bincount(torch.randint(nb, (nb,), generator=gen), minlength=nb).double()
        for li, blk in enumerate(per_layer):
            out[b, li] = _spectral_value(rule, blk.moments(w))
    return out


def _key_tensor(rule: str, values: Tensor) -> Tensor:
    if rule in FEW_LABEL_RULES:
        return values
    m = METRICS[rule]
    if m.direction == "higher":
        return values
    if m.direction == "lower":
        return -values
    assert m.target is not None
    return -(values - m.target).abs()


def choose_layer(
    features: Mapping[LayerSpec, Tensor] | Features,
    labels: Tensor | None = None,
    *,
    rule: str = "auto",
    views: Mapping[LayerSpec, Tensor] | None = None,
    labels_per_class: int | None = None,
    n_boot: int = 200,
    seed: int = 0,
    knn_k: int | None = None,
    cv_folds: int = 5,
    probe_kwargs: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    family: str | None = None,
    objective: str | None = None,
) -> LayerChoice:
    """Pick a layer from features already extracted (`recommend_layer` without the model).

    For evaluating rules on cached features: extract once (`extract_features`), then call this
    with every ``rule``.

    Args:
        features: ``{layer: (N, D)}`` features, or a `Features` (its labels are used unless
            ``labels`` is given).
        labels: ``(N,)`` integer labels, for the few-label rules (may be for all N samples:
            ``labels_per_class`` keeps a few per class).
        rule: a key of `RULES`, or ``"auto"``: the rule that measured best on the benchmark,
            with labels (few-label rules) or without (label-free; ``"rankme"`` when that is
            ``"lidar"`` and there are no views).
        views: for ``"lidar"``: ``{layer: (N, Q, D)}`` features of Q augmented views.
        labels_per_class: keep at most this many labelled samples per class (seeded) for the
            few-label rules; None keeps every label.
        n_boot: bootstrap resamples for ``confidence`` and ``tied`` (0: none). Label-free rules
            resample 16 random blocks of samples (their measures are spectra, not per-sample
            scores); few-label rules resample the labelled samples.
        seed: seed of the label subset, the folds and the bootstrap.
        knn_k: neighbours of ``"knn_loo"`` (more than the other labelled samples is refused);
            None: 20, or all of them when fewer.
        cv_folds: folds of ``"linear_cv"``.
        probe_kwargs: arguments of `linear_probe` for ``"linear_cv"``.
        device: where the work runs (default: the features' device).
        family: the encoder family, to report how the rule fared on the benchmark's most
            similar cases (`bench_record`); None: all cases.
        objective: the pretraining objective, likewise.

    Returns:
        `LayerChoice` (with ``.bench``).

    Raises:
        HeadkitError: unknown rule, a few-label rule without labels, ``lidar`` without views.

    Example:
        >>> import torch
        >>> from headkit.probe import choose_layer
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 3
        >>> good = torch.nn.functional.one_hot(y, 3).float() * 4 + torch.randn(60, 3, generator=g)
        >>> feats = {"noise": torch.randn(60, 3, generator=g), "good": good}
        >>> choose_layer(feats, y, rule="knn_loo", labels_per_class=10).layer
        'good'
    """
    if isinstance(features, Features):
        feats, labels = features.feats, labels if labels is not None else features.labels
    else:
        feats = dict(features)
    if not feats:
        raise HeadkitError("choose_layer needs at least one layer of features")
    rows = {k: Rows.of(v) for k, v in feats.items()}
    dev = torch.device(device) if device is not None else next(iter(rows.values())).device
    view_stats_ = None
    if views is not None:
        for k, v in views.items():
            check_views(k, v)
        view_stats_ = {k: _lidar_blocks(v, 16, seed) for k, v in views.items()}
    return _choose(
        rows,
        labels,
        rule,
        view_stats_,
        labels_per_class,
        n_boot,
        seed,
        knn_k,
        cv_folds,
        probe_kwargs,
        dev,
        family,
        objective,
    )


def _lidar_blocks(z: Tensor, blocks: int, seed: int) -> list[LidarStats]:
    gen = torch.Generator().manual_seed(seed)
    assign = torch.randint(blocks, (z.shape[0],), generator=gen)
    out = []
    for j in range(blocks):
        s = LidarStats()
        sel = (assign == j).nonzero().view(-1)
        if sel.numel():
            s.update(z[sel.to(z.device)])
        out.append(s)
    return out


def _choose(
    rows: dict[LayerSpec, Rows],
    labels: Tensor | None,
    rule: str,
    views: dict[LayerSpec, list[LidarStats]] | None,
    labels_per_class: int | None,
    n_boot: int,
    seed: int,
    knn_k: int | None,
    cv_folds: int,
    probe_kwargs: Mapping[str, Any] | None,
    dev: torch.device,
    family: str | None = None,
    objective: str | None = None,
) -> LayerChoice:
    rule = _check_rule(rule, labels is not None, views is not None)
    if isinstance(n_boot, bool) or n_boot < 0:
        raise HeadkitError(f"n_boot must be >= 0, got {n_boot}")
    keys = list(rows)
    info: dict[str, Any] = {"n_boot": n_boot, "seed": seed}
    samples: Tensor | None = None
    if rule in FEW_LABEL_RULES:
        assert labels is not None
        keep = _few_labels(labels.cpu(), labels_per_class, seed)
        y = labels.cpu()[keep]
        sub = {k: r.select(keep) for k, r in rows.items()}
        info["labels_per_class"] = labels_per_class
        info["n_classes"] = int(torch.unique(y).numel())
        check_layers(sub, y, k=knn_k if rule == "knn_loo" else None, loo=True)
        if rule == "knn_loo":
            knn_k = knn_k_for(knn_k, int(y.numel()) - 1)
            correct = knn_loo(sub, y, knn_k, dev)
            info["knn_k"] = knn_k
        elif rule in _RIDGE_RULES:
            correct = ridge_loo(
                rows,
                keep,
                y,
                dev,
                margin=rule in ("ridge_margin", "ridge_margin_rankme"),
                press=rule == "ridge_press_alpha",
            )
            info["ridge_lambdas"] = RIDGE_LAMBDAS
        else:
            correct = linear_cv(sub, y, cv_folds, seed, probe_kwargs, dev)
            info["cv_folds"] = cv_folds
        n = int(y.numel())
        if rule == "ridge_cv":
            # two few-label estimates on the same samples, each as z-scores across layers
            ridge = ridge_loo(rows, keep, y, dev).double()
            both = torch.cat([ridge, correct.double()])
            values = zsum(both.mean(1)[None], len(keys))[0]
            info["ridge_lambdas"] = RIDGE_LAMBDAS
            if n_boot > 0:
                samples = zsum(paired_bootstrap(both, n_boot, seed).samples, len(keys))
        else:
            values = correct.double().mean(1)
            if n_boot > 0:
                samples = paired_bootstrap(correct, n_boot, seed).samples
    elif rule == "lidar":
        assert views is not None
        missing = [k for k in keys if k not in views]
        if missing:
            raise HeadkitError(f"views has no features for layers {missing}")
        values = torch.tensor([merge(views[k]).value(layer=k) for k in keys], dtype=torch.float64)
        n = merge(views[keys[0]]).n
        if n_boot > 0:
            samples = _resample_lidar([views[k] for k in keys], n_boot, seed)
    else:
        check_layers(rows)
        n = rows[keys[0]].n
        if any(r.d > r.n for r in rows.values()):
            # wider than the data: exact values from the N x N Gram matrix, no block bootstrap
            values = torch.tensor(
                [_spectral(rule, k, moments(rows[k], dev)) for k in keys], dtype=torch.float64
            )
            info["bootstrap"] = "skipped: a layer is wider than the number of samples"
        else:
            per_layer = [_blocks(rows[k], 16, seed, dev) for k in keys]
            values = torch.tensor(
                [_spectral(rule, k, blk.moments()) for k, blk in zip(keys, per_layer, strict=True)],
                dtype=torch.float64,
            )
            if n_boot > 0:
                samples = _resample_spectral(rule, per_layer, n_boot, seed)
    keyv = _key_tensor(rule, values)
    excluded = torch.zeros(len(keys), dtype=torch.bool)
    if rule == "ridge_margin_rankme":
        # label-free prefilter on every sample: layers of low effective rank are left out
        rk = torch.tensor(
            [SPECTRAL["rankme"](*moments(rows[k], dev).eigenvalues()) for k in keys],
            dtype=torch.float64,
        )
        excluded = rk < rk.quantile(0.5)
        keyv = keyv.masked_fill(excluded, -torch.inf)
        info["rankme"] = {k: float(v) for k, v in zip(keys, rk.tolist(), strict=True)}
        info["excluded"] = [k for k, e in zip(keys, excluded.tolist(), strict=True) if e]
    if rule == "ridge_press_alpha":
        best, tied, confidence = _press_alpha(rows, keys, correct, n_boot, seed, dev, info)
    elif rule == "ridge_1se":
        best = one_se(keyv, n)
        confidence = None
        tied = [keys[best]]
        if samples is not None:
            picks = torch.tensor([one_se(row, n) for row in samples])
            confidence = float((picks == best).double().mean())
            diff = samples[:, best : best + 1] - samples
            lo, hi = torch.quantile(diff, torch.tensor([0.025, 0.975], dtype=diff.dtype), dim=0)
            tied = [keys[i] for i in range(len(keys)) if i == best or (lo[i] <= 0 <= hi[i])]
        info["one_se"] = float(
            math.sqrt(max(float(keyv.max()) * (1 - float(keyv.max())), 1e-4) / n)
        )
    else:
        best = int(torch.argmax(keyv))
        confidence = None
        tied = [keys[best]]
    if samples is not None and rule not in ("ridge_1se", "ridge_press_alpha"):
        ks = _key_tensor(rule, samples)
        ks = torch.nan_to_num(ks, nan=-torch.inf).masked_fill(excluded, -torch.inf)
        confidence = float((ks.argmax(1) == best).double().mean())
        tied = [keys[i] for i in tied_with(keyv, ks)]
    direction = "higher" if rule in FEW_LABEL_RULES else METRICS[rule].direction
    info["family"], info["objective"] = family, objective
    return LayerChoice(
        layer=keys[best],
        scores={k: float(v) for k, v in zip(keys, values.tolist(), strict=True)},
        rule=rule,
        direction=direction,
        confidence=confidence,
        tied=tied,
        labelled=rule in FEW_LABEL_RULES,
        n_samples=n,
        info=info,
        bench=bench_record(rule, family, objective),
    )


_RIDGE_RULES = (
    "ridge_loo",
    "ridge_margin",
    "ridge_margin_rankme",
    "ridge_1se",
    "ridge_press_alpha",
)


def _press_alpha(
    rows: dict[LayerSpec, Rows],
    keys: list[LayerSpec],
    press: Tensor,
    n_boot: int,
    seed: int,
    dev: torch.device,
    info: dict[str, Any],
) -> tuple[int, list[LayerSpec], float | None]:
    """``ridge_press_alpha``: the pick, the layers within one paired standard error (``tied``)
    and the share of bootstrap resamples of the labelled samples that pick the same layer.

    ``press`` is ``(L, n)``: minus each labelled sample's squared leave-one-out residual.
    """
    heads = torch.tensor([is_head(k) for k in keys])
    allowed = ~heads if not bool(heads.all()) else torch.ones_like(heads)
    alpha: dict[int, float] = {}

    def pick(scores: Tensor) -> tuple[int, list[int]]:
        near = within_se(scores, allowed)
        for i in near:
            if i not in alpha:  # label-free, on every sample: computed once per layer
                try:
                    alpha[i] = _spectral("alpha_req", keys[i], moments(rows[keys[i]], dev))
                except HeadkitError:  # no spectrum to fit (one direction): ranked last
                    alpha[i] = math.nan
        return min(near, key=lambda i: (_alpha_distance(alpha[i]), i)), near

    best, near = pick(press)
    confidence = None
    if n_boot > 0:
        gen = torch.Generator().manual_seed(seed + 2)
        n = int(press.shape[1])
        hits = sum(
            pick(press[:, torch.randint(n, (n,), generator=gen)])[0] == best for _ in range(n_boot)
        )
        confidence = hits / n_boot
    info["excluded"] = [k for k, a in zip(keys, allowed.tolist(), strict=True) if not a]
    info["within_1se"] = [keys[i] for i in near]
    info["alpha_req"] = {keys[i]: v for i, v in sorted(alpha.items())}
    return best, [keys[i] for i in near], confidence


def _spectral(rule: str, layer: LayerSpec, mom: Moments) -> float:
    """A label-free measure of one layer; a spectrum it cannot score (e.g. alpha-ReQ of a
    single direction) is refused naming the layer, as every degenerate layer is."""
    try:
        return float(SPECTRAL[rule](*mom.eigenvalues()))
    except DegenerateData:
        raise
    except HeadkitError as e:
        raise degenerate(layer, str(e)) from None


def _alpha_distance(a: float) -> float:
    """``|alpha - 1|``; infinite for a layer whose alpha-ReQ is undefined."""
    return abs(a - 1.0) if math.isfinite(a) else math.inf


def _resample_lidar(per_layer: list[list[LidarStats]], n_boot: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    nb = len(per_layer[0])
    out = torch.empty(n_boot, len(per_layer), dtype=torch.float64)
    for b in range(n_boot):
        w = torch.bincount(torch.randint(nb, (nb,), generator=gen), minlength=nb).double()
        for li, blocks in enumerate(per_layer):
            try:
                out[b, li] = merge(blocks, w).value()
            except HeadkitError:
                out[b, li] = float("nan")
    return out


def recommend_layer(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Sequence[LayerSpec] | None = None,
    *,
    rule: str = "auto",
    views: Iterable[Any] | None = None,
    labels_per_class: int | None = None,
    pool: Pool = "auto",
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    store: str | os.PathLike[str] | None = None,
    n_boot: int = 200,
    seed: int = 0,
    knn_k: int | None = None,
    cv_folds: int = 5,
    probe_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    amp: bool | torch.dtype = False,
    distributed: bool | None = None,
    family: str | None = None,
    objective: str | None = None,
) -> LayerChoice:
    """Which layer should I use, without a labelled downstream set? Pick one, and say how sure.

    Extracts every layer's features from ``loader`` (`extract_features`) and applies a rule
    (`RULES`): label-free measures of the features (``"rankme"``, ``"unevenness"``,
    ``"alpha_req"``, ``"nesum"``, ``"lidar"`` with ``views``), or, when the loader yields
    labels, a few-label score (``"ridge_loo"``: closed-form leave-one-out ridge accuracy;
    ``"ridge_press_alpha"``: the layers outside a projection head whose ridge leave-one-out
    squared error is within one paired standard error of the best, then alpha-ReQ closest to 1;
    ``"knn_loo"``: leave-one-out kNN accuracy; ``"linear_cv"``: cross-validated linear probe),
    optionally on ``labels_per_class`` labels per class. ``rule="auto"`` takes the rule that
    measured best on headkit's layer-choice benchmark (``docs/layer-choice.md``): its best
    few-label rule when the loader yields labels, its best label-free rule otherwise.

    The answer says how sure it is, three ways: ``confidence`` is the share of bootstrap
    resamples in which the chosen layer still wins; ``tied`` lists the layers this data cannot
    separate from it; ``bench`` (`BenchRecord`) says how often the rule's pick was tied with the
    best layer, and how many points it lost on average, on the benchmark cases most like this
    model (``family``, guessed from its modules when not given, and ``objective``), with the
    case count and whether the rule met the benchmark's goal. Ten labels per class are worth
    having: on the benchmark every label-free rule lost several times more than the few-label
    rules.

    Args:
        model: the encoder (any model `LayerTap` takes).
        loader: batches of inputs, or ``(inputs, labels)`` for the few-label rules.
        layers: layer specs (default: the model's default layers, as `layer_sweep`).
        rule: a key of `RULES` or ``"auto"``.
        views: for ``"lidar"``: a loader of ``([view_1, view_2, ...], ...)`` batches.
        labels_per_class: keep at most this many labels per class (seeded) for the few-label
            rules.
        pool: pooling, as for `LayerTap`.
        device: where the model runs (moved there and back, as `extract_features`).
        max_samples: cap on samples.
        store: folder for memory-mapped features.
        n_boot: bootstrap resamples for ``confidence`` and ``tied`` (0: none).
        seed: seed of the label subset, the folds and the bootstrap.
        knn_k: neighbours of ``"knn_loo"`` (more than the other labelled samples is refused);
            None: 20, or all of them when fewer.
        cv_folds: folds of ``"linear_cv"``.
        probe_kwargs: arguments of `linear_probe` for ``"linear_cv"``.
        progress: progress bars.
        amp: bfloat16 autocast for the extraction.
        distributed: as for `extract_features`.
        family: the encoder family for ``.bench`` (``"mlp"``, ``"cnn3"``, ``"resnet"``,
            ``"vit"``, ``"mixer"``); None: `guess_family`.
        objective: the pretraining objective for ``.bench`` (``"simclr"``, ``"supcon"``,
            ``"byol"``, ``"mae"``); None: every objective.

    Returns:
        `LayerChoice` with ``.layer``, ``.scores``, ``.confidence``, ``.tied``, ``.rule`` and
        ``.bench``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from headkit.probe import recommend_layer
        >>> net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        >>> data = [torch.randn(64, 8) for _ in range(4)]
        >>> choice = recommend_layer(net, data, progress=False, n_boot=20)
        >>> choice.labelled, choice.layer in ("0", "1", "2"), choice.info["family"]
        (False, True, 'mlp')
        >>> y = [torch.randint(0, 2, (64,)) for _ in range(4)]
        >>> few = recommend_layer(net, list(zip(data, y)), labels_per_class=10, progress=False)
        >>> few.labelled, few.n_samples
        (True, 20)
    """
    opts = ExtractOptions(pool, device, max_samples, store, progress, amp, distributed)
    ex = extract(model, loader, layers, opts, desc="extract", where="recommend_layer")
    dev = torch.device(ex.info["device"])
    vs = None
    if views is not None:
        vs = view_stats(
            model,
            views,
            list(ex.rows),
            opts,
            d=dist_state(distributed),
            blocks=16,
            seed=seed,
        )
    choice = _choose(
        ex.rows,
        ex.labels,
        rule,
        vs,
        labels_per_class,
        n_boot,
        seed,
        knn_k,
        cv_folds,
        probe_kwargs,
        dev,
        family or guess_family(model),
        objective,
    )
    choice.info.update({"device": str(dev), "pool": ex.info["pool"]})
    choice.info["family_guessed"] = family is None
    d = dist_state(distributed)
    if d.on:  # every rank computed the same choice; rank 0's makes it identical bit for bit
        choice = d.broadcast_object(choice)
    return choice
