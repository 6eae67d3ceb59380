"""Seeded stratified draws and splits of labelled samples (the CLI, the demo, the examples)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._errors import HeadkitError

__all__ = ["stratified_sample", "stratified_split"]


def _class_indices(labels: Tensor) -> dict[int, Tensor]:
    labels = torch.as_tensor(labels).reshape(-1).long()
    return {int(c): (labels == c).nonzero().flatten() for c in torch.unique(labels)}


def stratified_sample(labels: Tensor | Sequence[int], n: int, seed: int = 0) -> Tensor:
    """Indices of a seeded draw of ``n`` samples with every class in proportion.

    Each class gets its share ``n * count / total`` (largest remainders first), and at least two
    samples (one where ``n`` is below twice the number of classes), so a held-out split still
    sees every class. The indices come back sorted (files are then read in order).

    Args:
        labels: ``(N,)`` integer labels.
        n: samples wanted; ``n >= N`` returns every index.
        seed: seed of the draw.

    Returns:
        ``(min(n, N),)`` sorted indices.

    Raises:
        HeadkitError: ``n`` is below the number of classes.

    Example:
        >>> import torch
        >>> y = torch.tensor([0] * 90 + [1] * 10)
        >>> idx = stratified_sample(y, 20, seed=0)
        >>> torch.bincount(y[idx]).tolist()
        [18, 2]
    """
    y = torch.as_tensor(labels).reshape(-1).long()
    total = int(y.numel())
    if n <= 0:
        raise HeadkitError(f"the number of samples to draw must be positive, got {n}")
    if n >= total:
        return torch.arange(total)
    groups = _class_indices(y)
    k = len(groups)
    if n < k:
        raise HeadkitError(
            f"cannot draw {n} samples from {k} classes with every class present: "
            f"ask for at least {min(2 * k, total)}"
        )
    floor = 2 if n >= 2 * k else 1
    counts = {c: int(v.numel()) for c, v in groups.items()}
    share = {c: n * counts[c] / total for c in groups}
    take = {c: min(counts[c], max(floor, int(share[c]))) for c in groups}
    g = torch.Generator().manual_seed(seed)
    order = sorted(groups, key=lambda c: share[c] - int(share[c]), reverse=True)
    # hand out what is left by the largest remainders, then round-robin; take back where over
    while sum(take.values()) < n:
        grew = False
        for c in order:
            if sum(take.values()) >= n:
                break
            if take[c] < counts[c]:
                take[c] += 1
                grew = True
        if not grew:
            break
    while sum(take.values()) > n:
        c = max((c for c in groups if take[c] > floor), key=lambda c: take[c] - share[c])
        take[c] -= 1
    picked = [idx[torch.randperm(idx.numel(), generator=g)[: take[c]]] for c, idx in groups.items()]
    return torch.sort(torch.cat(picked)).values


def stratified_split(
    labels: Tensor | Sequence[int], test_fraction: float = 0.2, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """A seeded split with every class in both parts, in proportion.

    Each class with at least two samples puts ``round(test_fraction * count)`` of them (at least
    one, at most all but one) into the test part.

    Args:
        labels: ``(N,)`` integer labels.
        test_fraction: share of each class held out, in (0, 1).
        seed: seed of the split.

    Returns:
        ``(train_indices, test_indices)``, each sorted.

    Raises:
        HeadkitError: a fraction outside (0, 1), or fewer than two classes with two samples.

    Example:
        >>> import torch
        >>> tr, te = stratified_split(torch.tensor([0] * 8 + [1] * 2), 0.25, seed=0)
        >>> len(tr), len(te)
        (7, 3)
    """
    if not 0.0 < test_fraction < 1.0:
        raise HeadkitError(f"test_fraction must be in (0, 1), got {test_fraction}")
    y = torch.as_tensor(labels).reshape(-1).long()
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for _, idx in _class_indices(y).items():
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        if idx.numel() < 2:
            train.append(idx)
            continue
        k = min(idx.numel() - 1, max(1, round(test_fraction * idx.numel())))
        test.append(idx[:k])
        train.append(idx[k:])
    if len(test) < 2:
        raise HeadkitError(
            "a held-out split needs at least two classes with two samples each; "
            f"the labels have {len(_class_indices(y))} classes and {y.numel()} samples"
        )
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


# ----------------------------------------------------------------------------- datasets
