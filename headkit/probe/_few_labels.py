"""The few-label rules of `recommend_layer`: scores of every layer from at most a few labelled
samples per class (leave-one-out kNN, cross-validated linear probes, closed-form ridge)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from .._errors import HeadkitError
from .._layers.model import LayerSpec
from ._linear import fit_linear
from ._metrics import encode_labels, knn_predict
from ._rows import Rows

__all__ = [
    "HEAD_NAMES",
    "RIDGE_LAMBDAS",
    "is_head",
    "knn_loo",
    "linear_cv",
    "one_se",
    "ridge_loo",
    "within_se",
    "zsum",
]

RIDGE_LAMBDAS = (0.1, 1.0, 10.0)  # ridge penalties, relative to the kernel's mean diagonal
#: Module names that mark a projection or prediction head: a layer whose dotted name has one of
#: these parts is in a head (``"head.0"``, ``"projection_head.layers.2"``, ``"model.projector"``).
HEAD_NAMES = frozenset(
    {
        "head",
        "heads",
        "proj_head",
        "projection_head",
        "projector",
        "prediction_head",
        "pred_head",
        "predictor",
    }
)


def is_head(layer: LayerSpec) -> bool:
    """Whether ``layer`` (a module name) sits in a projection or prediction head (`HEAD_NAMES`);
    timm's integer indices never do."""
    if not isinstance(layer, str):
        return False
    return any(part in HEAD_NAMES for part in layer.split("@")[0].split("."))


def within_se(scores: Tensor, allowed: Tensor, z: float = 1.0) -> list[int]:
    """The layers whose per-sample scores ``(L, n)`` (higher is better) are within ``z`` paired
    standard errors of the best layer's mean, among the ``allowed`` ``(L,)`` ones.

    The standard error of layer ``k`` is that of the per-sample differences to the best layer
    (paired: the same labelled samples score every layer).
    """
    means = scores.double().mean(1).masked_fill(~allowed, -math.inf)
    top = int(torch.argmax(means))
    n = int(scores.shape[1])
    out = []
    for k in range(int(scores.shape[0])):
        if not bool(allowed[k]):
            continue
        d = (scores[top] - scores[k]).double()
        se = float(d.std()) / math.sqrt(n) if n > 1 else 0.0
        if float(d.mean()) <= z * se + 1e-12:
            out.append(k)
    return out


def knn_loo(rows: dict[LayerSpec, Rows], y: Tensor, k: int, dev: torch.device) -> Tensor:
    if y.numel() < 2:
        raise HeadkitError("knn_loo needs at least 2 labelled samples")
    classes, yc, _ = encode_labels(y)
    out = []
    for r in rows.values():
        pred = knn_predict(
            r, yc, r, num_classes=classes.numel(), k=k, device=dev, exclude_self=True
        )
        out.append(pred.cpu() == yc)
    return torch.stack(out)


def one_se(acc: Tensor, n: int) -> int:
    """Index of the first layer whose accuracy is within one binomial standard error (of ``n``
    samples) of the best."""
    top = float(acc.max())
    se = math.sqrt(max(top * (1 - top), 1e-4) / n)
    return int((acc >= top - se - 1e-12).nonzero()[0])


def zsum(v: Tensor, n_layers: int) -> Tensor:
    """``(B, 2L)`` two scores per layer -> ``(B, L)``: the sum of each score's z-score across
    layers (a score equal on every layer contributes 0)."""
    out = torch.zeros(v.shape[0], n_layers, dtype=torch.float64)
    for part in (v[:, :n_layers], v[:, n_layers:]):
        sd = part.std(1, unbiased=False, keepdim=True)
        out += torch.where(sd > 0, (part - part.mean(1, keepdim=True)) / sd.clamp_min(1e-300), 0.0)
    return out


def _ridge_fits(x: Tensor, t: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """Per penalty of `RIDGE_LAMBDAS`, the fitted values ``H T`` ``(n, C)`` and the leverages
    ``diag(H)`` ``(n,)`` of ridge regression of ``t`` on the centred ``x`` ``(n, d)``, with
    ``H = X (X^T X + lam I)^-1 X^T = K (K + lam I)^-1`` and ``lam`` relative to the mean of
    ``diag(K)``. The kernel form (``n x n`` solves) when ``n <= d``, the primal form
    (``d x d``) otherwise: memory and time grow with ``n d`` instead of ``n^2`` when every label
    of a large set is used."""
    n, d = int(x.shape[0]), int(x.shape[1])
    if n <= d:
        k = x @ x.T
        scale = float(torch.diagonal(k).mean().clamp_min(1e-12))
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        for lam in RIDGE_LAMBDAS:
            h = torch.linalg.solve(k + lam * scale * eye, k).T  # K (K + lam I)^-1 (symmetric K)
            yield h @ t, torch.diagonal(h)
    else:
        g = x.T @ x
        scale = float((torch.diagonal(g).sum() / n).clamp_min(1e-12))
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        for lam in RIDGE_LAMBDAS:
            sol = torch.linalg.solve(g + lam * scale * eye, x.T)  # (X^T X + lam I)^-1 X^T
            yield x @ (sol @ t), (x * sol.T).sum(1)


def ridge_loo(
    rows: dict[LayerSpec, Rows],
    keep: Tensor,
    y: Tensor,
    dev: torch.device,
    margin: bool = False,
    press: bool = False,
) -> Tensor:
    """``(L, n)`` leave-one-out correctness (or, with ``margin``, margins; with ``press``, minus
    the squared leave-one-out residuals) of ridge regression to one-hot labels, per layer.

    Each layer is standardised with the mean and standard deviation of all its samples (the
    unlabelled ones too), then the ``n`` labelled rows are centred and, in kernel form,
    ``H = K (K + lam I)^-1`` with ``K = X X^T`` gives every leave-one-out prediction in closed
    form: ``t_i - (t_i - (H T)_i) / (1 - H_ii)``. ``lam`` is tried at 0.1, 1 and 10 times the
    mean of ``diag(K)``; the best of the three per layer counts (most correct, or the highest
    mean margin: the true class's LOO score minus the best other class's, or the lowest PRESS:
    the mean over samples of ``||t_i - loo_i||^2``).
    """
    n = int(y.numel())
    if n < 3:
        raise HeadkitError(f"ridge_loo needs at least 3 labelled samples, got {n}")
    _, yc, _ = encode_labels(y)
    classes = int(yc.max()) + 1
    if classes < 2:
        raise HeadkitError("ridge_loo needs labels of at least 2 classes")
    t = torch.nn.functional.one_hot(yc, classes).to(dev, torch.float64)
    t = t - t.mean(0)
    out = []
    ydev = yc.to(dev)
    other = torch.nn.functional.one_hot(yc, classes).to(dev).bool()
    for r in rows.values():
        s1 = torch.zeros(r.d, dtype=torch.float64, device=dev)
        s2 = torch.zeros(r.d, dtype=torch.float64, device=dev)
        for block in r.chunks():
            b = block.to(dev, torch.float64)
            s1 += b.sum(0)
            s2 += (b * b).sum(0)
        mean = s1 / r.n
        sd = (s2 / r.n - mean * mean).clamp_min(0).sqrt() + 1e-6
        x = (r.take(keep).to(dev, torch.float64) - mean) / sd
        x = x - x.mean(0)
        best: Tensor | None = None
        for fitted, diag_h in _ridge_fits(x, t):
            dh = (1 - diag_h).clamp_min(1e-9)
            loo = t - (t - fitted) / dh[:, None]
            if press:
                ok = -(t - loo).square().sum(1).cpu()
            elif margin:
                true = loo.gather(1, ydev[:, None])[:, 0]
                ok = (true - loo.masked_fill(other, -torch.inf).amax(1)).cpu()
            else:
                ok = (loo.argmax(1) == ydev).cpu().double()
            if best is None or float(ok.sum()) > float(best.sum()):
                best = ok
        assert best is not None
        out.append(best)
    return torch.stack(out)


def linear_cv(
    rows: dict[LayerSpec, Rows],
    y: Tensor,
    folds: int,
    seed: int,
    probe_kwargs: Mapping[str, Any] | None,
    dev: torch.device,
) -> Tensor:
    n = y.numel()
    folds = min(folds, n)
    if folds < 2:
        raise HeadkitError(
            f"linear_cv needs at least 2 labelled samples and cv_folds >= 2, got {n} and {folds}"
        )
    kw = {"seed": seed, "device": dev, "epochs": 50, **dict(probe_kwargs or {})}
    gen = torch.Generator().manual_seed(seed)
    # stratified folds: each class's samples dealt round-robin after a seeded shuffle
    order = torch.randperm(n, generator=gen)
    fold = torch.empty(n, dtype=torch.long)
    counters: dict[int, int] = {}
    for i in order.tolist():
        c = int(y[i])
        fold[i] = counters.get(c, 0) % folds
        counters[c] = counters.get(c, 0) + 1
    correct = torch.zeros(len(rows), n, dtype=torch.bool)
    for f in range(folds):
        te = (fold == f).nonzero().view(-1)
        tr = (fold != f).nonzero().view(-1)
        if te.numel() == 0 or torch.unique(y[tr]).numel() < 2:
            continue
        res = fit_linear(
            {k: r.select(tr) for k, r in rows.items()},
            y[tr],
            {k: r.select(te) for k, r in rows.items()},
            y[te],
            **kw,
        )
        for li, k in enumerate(rows):
            correct[li, te] = res.correct[k]
    return correct
