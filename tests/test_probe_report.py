"""Uncertainty (paired-bootstrap intervals and ties), reports, figures and layer recommendation."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
import torch

from headkit import HeadkitError, SweepReport, layer_sweep
from headkit.probe import (
    choose_layer,
    extract_features,
    paired_bootstrap,
    plot_reports,
    recommend_layer,
)
from headkit.probe._metrics import knn_predict
from headkit.probe._rows import Rows

from ._slices import Slices


def known_accuracy(
    n: int, p: float, c: int = 5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot features that name the true class with probability p (kNN accuracy exactly p)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    shown = torch.where(
        torch.rand(n, generator=g) < p, y, (y + torch.randint(1, c, (n,), generator=g)) % c
    )
    return torch.nn.functional.one_hot(shown, c).float(), y


def clean(n: int, c: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return known_accuracy(n, 1.0, c, seed)


def test_intervals_cover_the_truth_about_95_percent() -> None:
    """Synthetic features of known accuracy p: the 95% interval covers p in about 95% of repeats."""
    p, m, repeats = 0.8, 300, 200
    xtr, ytr = clean(200)
    covered = 0
    for r in range(repeats):
        xte, yte = known_accuracy(m, p, seed=100 + r)
        pred = knn_predict(Rows(xtr), ytr, Rows(xte), num_classes=5, k=5)
        boot = paired_bootstrap((pred == yte)[None], 1000, seed=r)
        lo, hi = boot.intervals()[0].tolist()
        v = float(boot.point[0])
        assert lo <= v <= hi  # an interval contains its point estimate
        covered += lo <= p <= hi
    assert 0.90 <= covered / repeats <= 0.985, covered / repeats
    # the same through layer_sweep: the interval of the sweep is this bootstrap's
    net = Slices({"f": (0, 5)})
    rep = layer_sweep(
        net, [(xtr, ytr)], [(xte, yte)], layers=["f"], metrics=("knn",), knn_k=5,
        n_boot=1000, seed=repeats - 1, progress=False,
    )  # fmt: skip
    assert rep.intervals("knn")["f"] == (lo, hi) and rep.results("knn")["f"] == v


def test_intervals_narrow_as_the_test_set_grows() -> None:
    widths = []
    for m in (100, 1600):
        correct = torch.rand(1, m, generator=torch.Generator().manual_seed(m)) < 0.7
        iv = paired_bootstrap(correct, 1000, seed=0).intervals()
        widths.append(float(iv[0, 1] - iv[0, 0]))
    assert widths[1] < widths[0] / 2.5, widths  # about sqrt(16) = 4x narrower


def test_identical_layers_are_tied_and_a_noise_layer_is_not(tmp_path: os.PathLike[str]) -> None:
    g = torch.Generator().manual_seed(0)
    n = 600
    y = torch.randint(0, 3, (n,), generator=g)
    good = torch.nn.functional.one_hot(y, 3).float() * 2 + torch.randn(n, 3, generator=g)
    noise = torch.randn(n, 3, generator=g)
    x = torch.cat([good, good, noise], 1)
    net = Slices({"a": (0, 3), "copy": (3, 6), "noise": (6, 9)})
    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, n, 100)]
    rep = layer_sweep(
        net, batches, layers=["a", "copy", "noise"], probe_kwargs={"epochs": 10}, n_boot=500,
        progress=False,
    )  # fmt: skip
    for m in ("linear", "knn"):
        assert rep.tied_with_best(m) == ["a", "copy"], (m, rep.ties)
        iv = rep.intervals(m)
        assert iv["a"] == iv["copy"]
        assert iv["noise"][1] < iv["a"][0]
    # the report keeps everything through JSON
    again = SweepReport.from_json(rep.to_json())
    assert again == rep
    assert again.intervals("knn") == rep.intervals("knn")
    assert again.tied_with_best("linear") == ["a", "copy"]
    # the table prints value (lo-hi) and marks the ties
    text = rep.table()
    assert re.search(r"\d+\.\d \(\d+\.\d-\d+\.\d\) \*", text), text
    assert re.search(r"\d+\.\d \(\d+\.\d-\d+\.\d\) =", text), text
    assert "tied with the best" in text
    md = rep.table("markdown")
    assert md.startswith("| layer | dim |")
    info = rep.info
    assert info["n_train"] == 480 and info["n_test"] == 120 and info["n_unlabelled"] == 600
    assert "held out 120" in info["split"] and info["n_boot"] == 500
    json.dumps(info)


def test_sweep_without_bootstrap_and_probe_kwargs() -> None:
    net = Slices({"f": (0, 5)})
    x, y = clean(100)
    rep = layer_sweep(
        net, [(x, y)], layers=["f"], n_boot=0, probe_kwargs={"seed": 1, "epochs": 2}, progress=False
    )
    assert rep.info["linear"]["seed"] == 1
    with pytest.raises(HeadkitError, match="no intervals"):
        rep.intervals("linear")
    with pytest.raises(HeadkitError, match="no paired bootstrap"):
        rep.tied_with_best("knn")
    with pytest.raises(HeadkitError, match=r"unknown arguments \['epoch'\]"):
        layer_sweep(net, [(x, y)], layers=["f"], probe_kwargs={"epoch": 2}, progress=False)
    with pytest.raises(HeadkitError, match="n_boot"):
        layer_sweep(net, [(x, y)], layers=["f"], n_boot=-1, progress=False)


def test_old_json_and_aliases_still_read() -> None:
    old = json.dumps(
        {
            "layers": ["a", "b"],
            "metrics": {"linear": [0.5, 0.6], "spectrum": [0.2, 0.3]},
            "info": {},
        }
    )
    rep = SweepReport.from_json(old)
    assert list(rep.metrics) == ["linear", "unevenness"]
    assert rep.best_layer("spectrum") == "a"  # lower is better
    assert rep.results("spectrum") == {"a": 0.2, "b": 0.3}


def test_figures_use_no_pyplot_state(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # importing pyplot now fails
    a = SweepReport(
        ["b1", "b2", "b3"],
        {"linear": [0.8, 0.9, 0.85], "rankme": [3.0, 4.0, 2.0]},
        roles={"b3": "post-projection"},
        bounds={"linear": [[0.7, 0.9], [0.85, 0.95], [0.8, 0.9]]},
        ties={"linear": ["b2", "b3"]},
        spectra=[[0.5, 0.5], [0.6, 0.4], [0.9, 0.1]],
    )
    b = SweepReport(
        ["b1", "b2"], {"linear": [0.7, 0.75]}, bounds={"linear": [[0.6, 0.8], [0.7, 0.8]]}
    )
    p1 = a.plot(os.path.join(tmp_path, "one.png"), title="t")
    p2 = plot_reports({"mlp": a, "none": b}, os.path.join(tmp_path, "all.png"), title="heads")
    fig = a.figure()
    assert type(fig).__name__ == "Figure"
    # accuracies are drawn as percentages, as the table prints them
    ax = fig.axes[0]
    assert max(ax.get_lines()[0].get_ydata()) == pytest.approx(90.0)
    assert min(os.path.getsize(p1), os.path.getsize(p2)) > 5000
    with pytest.raises(HeadkitError, match="no report has metric"):
        plot_reports({"a": a}, os.path.join(tmp_path, "x.png"), metrics=["knn"])


# ----------------------------------------------------------------------------- recommend_layer


def test_recommend_layer_label_free_and_few_labels() -> None:
    g = torch.Generator().manual_seed(0)
    n = 800
    y = torch.randint(0, 4, (n,), generator=g)
    good = torch.nn.functional.one_hot(y, 4).float() * 3 + torch.randn(n, 4, generator=g)
    full = torch.randn(n, 8, generator=g)  # isotropic: every direction used
    rank1 = torch.randn(n, 1, generator=g) * torch.ones(1, 8)  # one direction
    noise = torch.randn(n, 4, generator=g)
    x = torch.cat([full, rank1, good, noise], 1)
    net = Slices({"full": (0, 8), "rank1": (8, 16), "good": (16, 20), "noise": (20, 24)})
    unlabelled = [x[i : i + 200] for i in range(0, n, 200)]
    c = recommend_layer(
        net, unlabelled, layers=["full", "rank1"], rule="rankme", n_boot=50, progress=False
    )
    assert c.rule == "rankme" and c.layer == "full" and not c.labelled
    assert c.confidence == 1.0 and c.tied == ["full"]
    assert c.scores["full"] > 7 and c.scores["rank1"] < 1.5
    c2 = recommend_layer(
        net, unlabelled, layers=["full", "rank1"], rule="nesum", n_boot=0, progress=False
    )
    assert c2.layer == "full" and c2.confidence is None
    labelled = [(x[i : i + 200], y[i : i + 200]) for i in range(0, n, 200)]
    few = recommend_layer(
        net, labelled, layers=["good", "noise"], rule="knn_loo", labels_per_class=10, n_boot=200,
        progress=False,
    )  # fmt: skip
    assert few.rule == "knn_loo" and few.layer == "good" and few.labelled
    assert few.n_samples == 40 and few.info["labels_per_class"] == 10
    assert few.confidence is not None and few.confidence > 0.9
    assert "noise" not in few.tied
    cv = recommend_layer(
        net, labelled, layers=["good", "noise"], rule="linear_cv", labels_per_class=10,
        probe_kwargs={"epochs": 20}, n_boot=100, progress=False,
    )  # fmt: skip
    assert cv.layer == "good" and cv.scores["good"] > 0.8
    # the same rule on cached features gives the same scores
    feats = extract_features(net, labelled, ["good", "noise"], progress=False)
    cached = choose_layer(feats, rule="knn_loo", labels_per_class=10, n_boot=200)
    assert cached.scores == few.scores and cached.confidence == few.confidence
    with pytest.raises(HeadkitError, match="unknown rule"):
        choose_layer(feats, rule="best")
    with pytest.raises(HeadkitError, match="needs labels"):
        recommend_layer(net, unlabelled, layers=["good"], rule="knn_loo", progress=False)


def test_recommend_layer_alpha_and_lidar() -> None:
    g = torch.Generator().manual_seed(1)
    n = 600
    k = torch.arange(1, 17, dtype=torch.float32)
    near1 = torch.randn(n, 16, generator=g) * k.pow(-1.0).sqrt()
    steep = torch.randn(n, 16, generator=g) * k.pow(-3.0).sqrt()
    x = torch.cat([near1, steep], 1)
    net = Slices({"near1": (0, 16), "steep": (16, 32)})
    c = recommend_layer(net, [x], ["near1", "steep"], rule="alpha_req", n_boot=30, progress=False)
    assert c.layer == "near1" and c.direction == "target"
    assert abs(c.scores["near1"] - 1) < abs(c.scores["steep"] - 1)
    # LiDAR: layer "stable" moves little between views, layer "aug" is all augmentation noise
    base = torch.randn(n, 6, generator=g)
    views = []
    for i in range(0, n, 100):
        vs = []
        for _ in range(2):
            stable = base[i : i + 100] + 0.05 * torch.randn(100, 6, generator=g)
            # half of its directions are augmentation noise (LiDAR is scale-free: an all-noise
            # layer is as even as a clean one)
            aug = torch.cat([stable[:, :3], torch.randn(100, 3, generator=g)], 1)
            vs.append(torch.cat([stable, aug], 1))
        views.append((vs, None))
    net2 = Slices({"stable": (0, 6), "aug": (6, 12)})
    both, layers = [torch.cat([base, base], 1)], ["stable", "aug"]
    lid = recommend_layer(net2, both, layers, rule="lidar", views=views, n_boot=30, progress=False)
    assert lid.layer == "stable" and lid.scores["stable"] > lid.scores["aug"]
    rep = layer_sweep(
        net2, both, layers=layers, metrics=("lidar", "rankme"), views=views, progress=False
    )
    assert rep.results("lidar")["stable"] == pytest.approx(lid.scores["stable"], rel=1e-9)
