"""The one policy for degenerate data, shared by every metric and rule.

Every per-layer measure (`linear_probe`, `knn_accuracy`, the label-free measures, `lidar`,
`layer_sweep`, `choose_layer` / `recommend_layer`, hence the CLI) calls `check_layer` on each
layer before it computes anything, so the same data gets the same refusal, in the same words,
whatever the metric. The rules (``docs/probe.md``, "Degenerate data"), checked in this order:

1. non-finite features (NaN or inf in any sample, train or test): refused;
2. fewer than 2 samples: refused;
3. constant features (every training sample identical: zero variance in every dimension):
   refused, by label-free measures and probes alike (a spectrum has no shape and an accuracy
   would only be the class prior);
4. labelled measures only: fewer than 2 classes in the training labels: refused;
5. labelled measures only: fewer training samples than classes (train and test labels
   together; leave-one-out and cross-validated rules: fewer other samples than classes, so one
   labelled sample per class is refused): refused;
6. kNN only: fewer candidate neighbours than a ``k`` the caller passed: refused. ``k`` left
   at its default (None: 20) is 20, or every candidate when there are fewer (`knn_k_for`; the
   reports record the ``k`` used).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .._errors import HeadkitError
from .._layers.model import LayerSpec
from ._rows import Rows

__all__ = [
    "KNN_K",
    "DegenerateData",
    "check_layer",
    "check_layers",
    "constant",
    "degenerate",
    "knn_k_for",
    "nonfinite",
    "nonfinite_rows",
    "too_few",
]

#: The kNN neighbours when ``k`` is not given (fewer training samples: all of them vote).
KNN_K = 20

_SEE = 'see "Degenerate data" in docs/probe.md'


class DegenerateData(HeadkitError):
    """Data that no per-layer measure can score: raised the same way by every metric."""


def degenerate(layer: object, problem: str) -> DegenerateData:
    """The one refusal: ``layer 'x' cannot be measured: <problem>; see ...``."""
    return DegenerateData(f"layer {layer!r} cannot be measured: {problem}; {_SEE}")


def nonfinite_rows(block: Tensor) -> int:
    """How many rows of ``block`` ``(N, D)`` hold a NaN or an inf.

    A finite sum proves every entry finite (a NaN or an inf reaches the sum), so the common case
    costs one reduction; the row count runs only when the sum is not finite (bad data, or finite
    values whose sum overflows).
    """
    if block.numel() == 0 or not block.is_floating_point():
        return 0
    acc = torch.float64 if block.dtype == torch.float64 else torch.float32
    if bool(torch.isfinite(block.sum(dtype=acc))):
        return 0
    return int((~torch.isfinite(block)).any(1).sum())


def _scan(rows: Rows, want_constant: bool) -> tuple[int, bool]:
    """Rows with a NaN/inf value, and whether every row equals the first one (one pass)."""
    bad = 0
    constant = True
    first: Tensor | None = None
    for block in rows.chunks():
        if block.shape[0] == 0:
            continue
        bad += nonfinite_rows(block)
        if want_constant and constant and not bad:
            if first is None:
                first = block[:1]
            # the first rows usually differ already: the full comparison only when they do not
            constant = not bool((block[:8] != first).any()) and not bool((block != first).any())
    return bad, constant


def knn_k_for(k: int | None, candidates: int) -> int:
    """The ``k`` a kNN measure uses: ``k`` as given, or `KNN_K` capped at the candidates."""
    return k if k is not None else max(1, min(KNN_K, candidates))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def nonfinite(bad: int, n: int, split: str = "") -> str:
    """The problem "``bad`` of ``n`` samples have NaN/inf features"."""
    return f"{bad} of {n} {split + ' ' if split else ''}samples have NaN/inf features"


def too_few(n: int) -> str:
    """The problem "fewer than 2 samples"."""
    return f"{_plural(n, 'sample')}, at least 2 are needed"


def constant(n: int, d: int) -> str:
    """The problem "every sample has the same features"."""
    return (
        f"all {n} samples have the same features (constant: zero variance in all "
        f"{_plural(d, 'dimension')})"
    )


def check_layer(
    layer: object,
    train: Rows | Tensor,
    train_labels: Tensor | None = None,
    test: Rows | Tensor | None = None,
    test_labels: Tensor | None = None,
    *,
    k: int | None = None,
    loo: bool = False,
) -> None:
    """Refuse degenerate data of one layer (module docstring: the rules, in order).

    Args:
        layer: the layer's name, as the message prints it.
        train: ``(N, D)`` training (or, label-free, all) features.
        train_labels: ``(N,)`` labels, for labelled measures (None: label-free).
        test: optional ``(M, D)`` test features (checked for NaN/inf only).
        test_labels: optional ``(M,)`` test labels (their classes count).
        k: neighbours of a kNN measure.
        loo: leave-one-out or cross-validated scores (a sample is not its own neighbour or
            training sample: ``N - 1`` candidates).

    Raises:
        DegenerateData: (a `HeadkitError`) naming the layer, the problem and the count.
    """
    tr = train if isinstance(train, Rows) else Rows(train)
    bad, same = _scan(tr, want_constant=tr.n >= 2)
    if bad:
        raise degenerate(layer, nonfinite(bad, tr.n))
    if test is not None:
        te = test if isinstance(test, Rows) else Rows(test)
        bad_te, _ = _scan(te, want_constant=False)
        if bad_te:
            raise degenerate(layer, nonfinite(bad_te, te.n, "test"))
    if tr.n < 2:
        raise degenerate(layer, too_few(tr.n))
    if same:
        raise degenerate(layer, constant(tr.n, tr.d))
    if train_labels is None:
        return
    classes = torch.unique(train_labels.detach().cpu())
    if classes.numel() < 2:
        raise degenerate(
            layer,
            f"the labels of the {tr.n} training samples hold 1 class "
            f"({classes.tolist()}), at least 2 classes are needed",
        )
    if test_labels is not None:
        classes = torch.unique(torch.cat([classes, test_labels.detach().cpu().view(-1)]))
    # leave-one-out (and cross-validation): a sample is scored by a model of the others
    seen = tr.n - 1 if loo else tr.n
    if seen < classes.numel():
        what = "other training sample" if loo else "training sample"
        raise degenerate(
            layer,
            f"{_plural(seen, what)} for {classes.numel()} classes, at least one per class is "
            "needed",
        )
    if k is not None:
        cand = tr.n - 1 if loo else tr.n
        if cand < k:
            what = "other training samples" if loo else "training samples"
            raise degenerate(
                layer, f"k={k} neighbours asked, there are {cand} {what} (pass a smaller k)"
            )


def check_layers(
    train: Mapping[LayerSpec, Rows | Tensor],
    train_labels: Tensor | None = None,
    test: Mapping[LayerSpec, Rows | Tensor] | None = None,
    test_labels: Tensor | None = None,
    *,
    k: int | None = None,
    loo: bool = False,
) -> None:
    """`check_layer` on every layer of ``train`` (and the same layer of ``test``)."""
    for key, rows in train.items():
        check_layer(
            key,
            rows,
            train_labels,
            None if test is None else test.get(key),
            test_labels,
            k=k,
            loo=loo,
        )
