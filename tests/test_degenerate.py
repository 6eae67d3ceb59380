"""One policy for degenerate data: every metric and rule refuses it with the same words."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from headkit import HeadkitError
from headkit.probe import (
    alpha_req,
    choose_layer,
    feature_spectrum,
    knn_accuracy,
    layer_sweep,
    lidar,
    linear_probe,
    nesum,
    rankme,
    unevenness,
)

N, D, C = 40, 5, 4
SEE = 'see "Degenerate data" in docs/probe.md'


def _data(case: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train features and labels, test features and labels, degenerate as ``case`` says."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = torch.arange(N) % C
    xt = torch.randn(12, D, generator=g)
    yt = torch.arange(12) % C
    if case == "nan":
        x[7, 2] = float("nan")
    elif case == "inf":
        x[3, 0] = float("inf")
        x[9, 4] = -float("inf")
    elif case == "constant":
        x = torch.full((N, D), 0.25)
    elif case == "one_class":
        y = torch.full((N,), 3)
    elif case == "few_samples":  # 4 samples of 4 classes; the test labels add 2 more classes
        x, y = x[:4], torch.arange(4)
        yt = torch.arange(12) % 6
    elif case == "one_sample":
        x, y = x[:1], y[:1]
    return x, y, xt, yt


PROBLEM = {
    "nan": "1 of 40 samples have NaN/inf features",
    "inf": "2 of 40 samples have NaN/inf features",
    "constant": "all 40 samples have the same features (constant: zero variance in all 5 dimensions)",
    "one_class": "the labels of the 40 training samples hold 1 class ([3]), at least 2 classes are needed",
    "few_samples": "4 training samples for 6 classes, at least one per class is needed",
    "one_sample": "1 sample, at least 2 are needed",
}
DATA_CASES = ("nan", "inf", "constant", "one_sample")  # refused by every measure
LABEL_CASES = ("one_class", "few_samples")  # refused by every labelled measure


def _eye() -> nn.Module:
    net = nn.Sequential(nn.Linear(D, D))  # the identity: layer "0" holds the features as given
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(D))
        net[0].bias.zero_()
    return net


def _sweep(metric: str, x: Tensor, y: Tensor, xt: Tensor, yt: Tensor) -> None:
    net = _eye()
    layer_sweep(
        net, [(x, y)], [(xt, yt)], metrics=(metric,), progress=False, n_boot=10,
        probe_kwargs={"epochs": 2},
    )  # fmt: skip


def _views(x: Tensor) -> Tensor:
    return torch.stack([x, x * 1.5], 1)  # NaN, inf and constant features stay so in every view


LABELLED: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Any]] = {
    "linear": lambda x, y, xt, yt: linear_probe(x, y, xt, yt, epochs=2),
    "knn": lambda x, y, xt, yt: knn_accuracy(x, y, xt, yt),
    "sweep-linear": lambda *a: _sweep("linear", *a),
    "sweep-knn": lambda *a: _sweep("knn", *a),
}
FEW_LABEL: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Any]] = {
    "choose-knn_loo": lambda x, y, xt, yt: choose_layer({"features": x}, y, rule="knn_loo"),
    "choose-linear_cv": lambda x, y, xt, yt: choose_layer(
        {"features": x}, y, rule="linear_cv", probe_kwargs={"epochs": 2}
    ),
}
LABEL_FREE: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Any]] = {
    "rankme": lambda x, *_: rankme(x),
    "unevenness": lambda x, *_: unevenness(x),
    "feature_spectrum": lambda x, *_: feature_spectrum(x),
    "alpha_req": lambda x, *_: alpha_req(x),
    "nesum": lambda x, *_: nesum(x),
    "lidar": lambda x, *_: lidar(_views(x)),
    "choose-rankme": lambda x, *_: choose_layer({"features": x}, rule="rankme", n_boot=5),
    "choose-nesum": lambda x, *_: choose_layer({"features": x}, rule="nesum", n_boot=5),
    "choose-lidar": lambda x, *_: choose_layer(
        {"features": x}, rule="lidar", views={"features": _views(x)}, n_boot=5
    ),
    **{
        f"sweep-{m}": functools.partial(_sweep, m)
        for m in ("rankme", "unevenness", "alpha_req", "nesum")
    },
}
ALL = {**LABELLED, **FEW_LABEL, **LABEL_FREE}


def _expect(call: Callable[[], Any], case: str, layer: object = "features") -> None:
    with pytest.raises(HeadkitError) as err:
        call()
    assert str(err.value) == f"layer {layer!r} cannot be measured: {PROBLEM[case]}; {SEE}"


@pytest.mark.parametrize("case", DATA_CASES)
@pytest.mark.parametrize("metric", list(ALL))
def test_degenerate_features_same_refusal_every_metric(metric: str, case: str) -> None:
    x, y, xt, yt = _data(case)
    if case == "one_sample" and metric in LABELLED:
        y = torch.tensor([0])  # one sample is the first problem, not its one class
    _expect(
        lambda: ALL[metric](x, y, xt, yt), case, "0" if metric.startswith("sweep") else "features"
    )


@pytest.mark.parametrize("case", LABEL_CASES)
@pytest.mark.parametrize("metric", [*LABELLED, *FEW_LABEL])
def test_degenerate_labels_same_refusal_every_labelled_metric(metric: str, case: str) -> None:
    if case == "few_samples" and metric in FEW_LABEL:
        pytest.skip("few-label rules see no test labels: their classes are their samples'")
    x, y, xt, yt = _data(case)
    _expect(
        lambda: ALL[metric](x, y, xt, yt), case, "0" if metric.startswith("sweep") else "features"
    )


@pytest.mark.parametrize("metric", list(FEW_LABEL))
def test_one_label_per_class_is_refused_by_the_few_label_rules(metric: str) -> None:
    """Leave-one-out and cross-validation score a sample by the others: one labelled sample per
    class can never be right (0.2 scored it 0% for every layer, a tie reported as a choice)."""
    x, _, xt, yt = _data("ok")
    y = torch.arange(N)
    with pytest.raises(HeadkitError) as err:
        FEW_LABEL[metric](x, y, xt, yt)
    assert str(err.value) == (
        "layer 'features' cannot be measured: 39 other training samples for 40 classes, at least "
        f"one per class is needed; {SEE}"
    )


@pytest.mark.parametrize("metric", list(LABEL_FREE))
def test_label_free_measures_need_no_classes(metric: str) -> None:
    """One class is no problem for a measure that does not read labels."""
    x, y, xt, yt = _data("one_class")
    LABEL_FREE[metric](x, y, xt, yt)


def test_nan_in_test_features_is_refused_by_every_labelled_metric() -> None:
    x, y, xt, yt = _data("ok")
    xt[5] = float("nan")
    for metric in LABELLED:
        with pytest.raises(HeadkitError) as err:
            LABELLED[metric](x, y, xt, yt)
        layer = "0" if metric.startswith("sweep") else "features"
        assert str(err.value) == (
            f"layer {layer!r} cannot be measured: 1 of 12 test samples have NaN/inf features; {SEE}"
        )


def test_more_neighbours_than_samples_is_refused_when_asked() -> None:
    x, y, xt, yt = _data("ok")
    with pytest.raises(HeadkitError, match="k=50 neighbours asked, there are 40 training samples"):
        knn_accuracy(x, y, xt, yt, k=50)
    with pytest.raises(HeadkitError, match="k=50 neighbours asked, there are 40 training samples"):
        layer_sweep(_eye(), [(x, y)], [(xt, yt)], metrics=("knn",),
                    knn_k=50, progress=False)  # fmt: skip
    with pytest.raises(HeadkitError, match="k=40 neighbours asked, there are 39 other training"):
        choose_layer({"features": x}, y, rule="knn_loo", knn_k=40)
    # left at its default, k is 20 or every sample when there are fewer, and the report says so
    r = layer_sweep(_eye(), [(x[:12], y[:12])], [(xt, yt)], metrics=("knn",),
                    progress=False, n_boot=10)  # fmt: skip
    assert r.info["knn"]["k"] == 12
    assert knn_accuracy(x[:12], y[:12], xt, yt) == knn_accuracy(x[:12], y[:12], xt, yt, k=12)


def test_nan_weights_checkpoint_is_refused_by_knn_as_by_the_linear_probe() -> None:
    """A checkpoint whose weights hold NaN: kNN used to report an accuracy with exit 0."""
    net = nn.Sequential(nn.Linear(D, 8))
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    x, y, xt, yt = _data("ok")
    msgs = set()
    for metric in ("knn", "linear", "rankme"):
        with pytest.raises(HeadkitError) as err:
            layer_sweep(net, [(x, y)], [(xt, yt)], metrics=(metric,), progress=False,
                        probe_kwargs={"epochs": 2} if metric == "linear" else None)  # fmt: skip
        msgs.add(str(err.value))
    assert msgs == {f"layer '0' cannot be measured: 40 of 40 samples have NaN/inf features; {SEE}"}
