"""The closed-form few-label rules (ridge_loo, ridge_margin) and the benchmark record that
`recommend_layer` attaches to its pick (`BenchRecord`, `bench_record`, `guess_family`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from headkit import HeadkitError
from headkit.probe import (
    RULES,
    BenchRecord,
    alpha_req,
    bench_record,
    choose_layer,
    guess_family,
    recommend_layer,
)
from headkit.probe import _bench_table as table
from headkit.probe._choose import _few_labels
from headkit.probe._few_labels import RIDGE_LAMBDAS

from ._slices import Slices

sklearn_linear = pytest.importorskip("sklearn.linear_model")


def data(n: int = 600, c: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns 0-7: a layer that names the class through noise; 8-15: pure noise; 16-23: a
    weaker copy of the signal (the best layer is known: 'good', then 'weak', then 'noise')."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    centres = torch.randn(c, 8, generator=g) * 1.5
    good = centres[y] + torch.randn(n, 8, generator=g)
    weak = centres[y] * 0.35 + torch.randn(n, 8, generator=g)
    return torch.cat([good, torch.randn(n, 8, generator=g), weak], 1), y


SPANS = {"good": (0, 8), "noise": (8, 16), "weak": (16, 24)}


def loo_predictions(
    x: np.ndarray, y: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Explicit leave-one-out: scikit-learn's Ridge refit n times (float64), on the features
    standardised with all rows and centred on the labelled ones, as the rules define them; per
    lambda of the rules, the leave-one-out predictions ``(n, C)``, the centred one-hot targets,
    the class indices and the one-hot mask."""
    xc = x - x.mean(0)
    classes, yi = np.unique(y, return_inverse=True)
    onehot = np.eye(classes.size)[yi]
    t = onehot - onehot.mean(0)
    scale = float((xc * xc).sum(1).mean())
    n = len(y)
    out = []
    for lam in RIDGE_LAMBDAS:
        preds = np.empty_like(t)
        for i in range(n):
            keep = np.arange(n) != i
            m = sklearn_linear.Ridge(alpha=lam * scale, fit_intercept=False, solver="cholesky")
            m.fit(xc[keep], t[keep])
            preds[i] = m.predict(xc[i : i + 1])[0]
        out.append((preds, t, yi, onehot))
    return out


def loo_reference(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The best leave-one-out accuracy and the best mean margin over the rules' lambdas."""
    best_acc, best_margin = 0.0, -math.inf
    for preds, _, yi, onehot in loo_predictions(x, y):
        acc = float((preds.argmax(1) == yi).mean())
        true = preds[np.arange(len(yi)), yi]
        other = np.where(onehot > 0, -np.inf, preds).max(1)
        best_acc = max(best_acc, acc)
        best_margin = max(best_margin, float((true - other).mean()))
    return best_acc, best_margin


@pytest.mark.parametrize("layer", ["good", "weak", "noise"])
def test_ridge_rules_match_explicit_leave_one_out(layer: str) -> None:
    x, y = data(n=300)
    a, b = SPANS[layer]
    feats = {layer: x[:, a:b]}
    keep = _few_labels(y, 10, 0)
    xs = x[:, a:b].double().numpy()
    xs = (xs - xs.mean(0)) / (xs.std(0) + 1e-6)
    acc, margin = loo_reference(xs[keep.numpy()], y[keep].numpy())
    c_acc = choose_layer(feats, y, rule="ridge_loo", labels_per_class=10, n_boot=0)
    c_mar = choose_layer(feats, y, rule="ridge_margin", labels_per_class=10, n_boot=0)
    n = keep.numel()
    assert c_acc.scores[layer] == pytest.approx(acc, abs=0.5 / n)  # the same count of hits
    # float64 throughout: tolerance from the conditioning of n x n solves, not from one CPU
    tol = 1e3 * torch.finfo(torch.float64).eps * n
    assert c_mar.scores[layer] == pytest.approx(margin, rel=tol, abs=tol)
    assert c_acc.labelled and c_acc.n_samples == n and c_acc.rule == "ridge_loo"


def test_ridge_rules_pick_the_known_best_layer_and_report_ties() -> None:
    x, y = data()
    net = Slices(SPANS)
    loader = [(x[i : i + 200], y[i : i + 200]) for i in range(0, len(y), 200)]
    for rule in ("ridge_loo", "ridge_margin"):
        c = recommend_layer(
            net, loader, list(SPANS), rule=rule, labels_per_class=10, n_boot=200, progress=False
        )
        assert c.layer == "good"
        assert c.scores["good"] > c.scores["weak"] > c.scores["noise"]
        assert "noise" not in c.tied  # the data separate pure noise from the pick
        assert c.confidence is not None and c.confidence > 0.5
    with pytest.raises(HeadkitError, match="needs labels"):
        choose_layer({"a": x[:, :8]}, rule="ridge_margin")
    with pytest.raises(HeadkitError, match="at least 2 classes"):
        choose_layer({"a": x[:, :8]}, torch.zeros(len(y), dtype=torch.long), rule="ridge_loo")


def test_auto_uses_the_best_measured_rules() -> None:
    x, y = data(n=200)
    feats = {k: x[:, a:b] for k, (a, b) in SPANS.items()}
    few = choose_layer(feats, y, labels_per_class=10, n_boot=0)
    assert few.rule == table.BEST_FEW_LABEL and few.labelled
    free = choose_layer(feats, n_boot=0)
    expect = table.BEST_LABEL_FREE if table.BEST_LABEL_FREE != "lidar" else "rankme"
    assert free.rule == expect and not free.labelled
    assert table.BEST_FEW_LABEL in RULES and table.BEST_LABEL_FREE in RULES


def fake_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        table,
        "TABLE",
        {
            "ridge_margin": {
                "all": (80, 100, 2.0, 1.5, 2.5),
                "family=vit": (9, 12, 3.0, 1.0, 5.0),
                "family=vit, objective=mae": (2, 4, 6.0, 2.0, 9.0),  # too few cases
                "objective=mae": (20, 30, 4.0, 2.0, 6.0),
            }
        },
    )
    monkeypatch.setattr(table, "GOAL_MET", {"ridge_margin": False})


def test_bench_record_takes_the_narrowest_scope_with_enough_cases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_table(monkeypatch)
    r = bench_record("ridge_margin", family="vit", objective="mae")
    assert isinstance(r, BenchRecord)
    assert r.scope == "family=vit" and r.cases == 12 and r.tie_rate == pytest.approx(9 / 12)
    assert r.mean_regret == 3.0 and r.regret_interval == (1.0, 5.0)
    lo, hi = r.tie_interval
    assert 0.0 <= lo < 9 / 12 < hi <= 1.0
    # a Wilson interval is narrower with more cases at the same rate
    wide = hi - lo
    r_all = bench_record("ridge_margin", family="convnext")  # unknown family: every case
    assert r_all is not None and r_all.scope == "all" and r_all.cases == 100
    assert r_all.tie_interval[1] - r_all.tie_interval[0] < wide
    assert bench_record("ridge_margin", objective="mae", min_cases=50) is not None
    assert bench_record("ridge_margin", objective="mae", min_cases=50).scope == "all"  # type: ignore[union-attr]
    assert bench_record("rankme") is None  # not in this table: no claim
    assert "does NOT meet" in str(r)


def test_recommend_layer_attaches_the_benchmark_record(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_table(monkeypatch)
    x, y = data(n=200)
    net = Slices(SPANS)
    c = recommend_layer(
        net, [(x, y)], list(SPANS), rule="ridge_margin", labels_per_class=10, n_boot=0,
        progress=False, family="vit",
    )  # fmt: skip
    assert c.bench is not None and c.bench.scope == "family=vit" and c.bench.rule == "ridge_margin"
    assert c.info["family"] == "vit" and not c.info["family_guessed"]
    assert "family=vit, 12 cases" in str(c)
    guessed = recommend_layer(
        net, [(x, y)], list(SPANS), rule="ridge_margin", labels_per_class=10, n_boot=0,
        progress=False,
    )  # fmt: skip
    assert guessed.info["family"] == "mlp" and guessed.info["family_guessed"]
    assert guessed.bench is not None and guessed.bench.scope == "all"


def test_guess_family_on_real_architectures() -> None:
    timm = pytest.importorskip("timm")
    assert guess_family(timm.create_model("vit_tiny_patch16_224", pretrained=False)) == "vit"
    assert guess_family(timm.create_model("resnet10t", pretrained=False)) == "resnet"
    assert guess_family(timm.create_model("convnext_atto", pretrained=False)) == "mixer"
    assert guess_family(timm.create_model("mixer_s32_224", pretrained=False)) == "mixer"
    assert guess_family(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))) == "cnn3"
    assert guess_family(nn.Sequential(nn.Linear(4, 4), nn.ReLU())) == "mlp"


def test_ridge_margin_rankme_leaves_out_low_rank_layers() -> None:
    x, y = data(n=400)
    g = torch.Generator().manual_seed(3)
    # 'collapsed' names the class best of all but spans 4 of its 8 directions (low RankMe): the
    # prefilter must leave it out, and the pick is then the best of the others
    onehot = torch.nn.functional.one_hot(y, 4).float() * 3
    collapsed = torch.cat([onehot, torch.zeros(400, 4)], 1) + 1e-3 * torch.randn(
        400, 8, generator=g
    )
    feats = {"collapsed": collapsed, **{k: x[:, a:b] for k, (a, b) in SPANS.items()}}
    plain = choose_layer(feats, y, rule="ridge_margin", labels_per_class=10, n_boot=50)
    pre = choose_layer(feats, y, rule="ridge_margin_rankme", labels_per_class=10, n_boot=50)
    assert plain.layer == "collapsed"
    assert pre.scores == plain.scores  # the same margins; only the candidates differ
    med = float(np.median(list(pre.info["rankme"].values())))
    excluded = sorted(k for k, v in pre.info["rankme"].items() if v < med)
    assert sorted(pre.info["excluded"]) == excluded and "collapsed" in excluded
    kept = [k for k in feats if k not in excluded]
    assert pre.layer == max(kept, key=lambda k: pre.scores[k])
    assert not set(pre.tied) & set(excluded)


def test_ridge_cv_is_the_sum_of_the_two_rules_z_scores() -> None:
    x, y = data(n=300)
    feats = {k: x[:, a:b] for k, (a, b) in SPANS.items()}
    kw = {"labels_per_class": 10, "n_boot": 30, "probe_kwargs": {"epochs": 20}}
    both = choose_layer(feats, y, rule="ridge_cv", **kw)  # type: ignore[arg-type]
    ridge = choose_layer(feats, y, rule="ridge_loo", **kw)  # type: ignore[arg-type]
    cv = choose_layer(feats, y, rule="linear_cv", **kw)  # type: ignore[arg-type]

    def z(s: dict[str, float]) -> np.ndarray:
        v = np.array([s[k] for k in feats])
        return (v - v.mean()) / v.std() if v.std() > 0 else np.zeros_like(v)

    expect = z(ridge.scores) + z(cv.scores)
    got = np.array([both.scores[k] for k in feats])
    np.testing.assert_allclose(
        got, expect, rtol=0, atol=100 * np.finfo(np.float64).eps * len(feats)
    )
    assert both.layer == "good" and "noise" not in both.tied


def test_ridge_1se_takes_the_first_layer_within_one_standard_error() -> None:
    x, y = data(n=400)
    g = torch.Generator().manual_seed(5)
    # 'early' is the good layer with a little extra noise: a few points below 'good', so within
    # one standard error of 10 labels per class, and first in the layer order
    early = x[:, :8] + 0.3 * torch.randn(400, 8, generator=g)
    feats = {"early": early, **{k: x[:, a:b] for k, (a, b) in SPANS.items()}}
    ref = choose_layer(feats, y, rule="ridge_loo", labels_per_class=10, n_boot=0)
    c = choose_layer(feats, y, rule="ridge_1se", labels_per_class=10, n_boot=100)
    assert c.scores == ref.scores  # the same leave-one-out accuracies
    top = max(ref.scores.values())
    se = math.sqrt(top * (1 - top) / c.n_samples)
    expect = next(k for k in feats if ref.scores[k] >= top - se - 1e-12)
    assert c.layer == expect and c.info["one_se"] == pytest.approx(se)
    assert c.layer in c.tied and "noise" not in c.tied
    assert c.confidence is not None and 0.0 <= c.confidence <= 1.0
    # order matters: the same layers listed deepest-first pick from the other end
    rev = choose_layer(dict(reversed(list(feats.items()))), y, rule="ridge_1se",
                       labels_per_class=10, n_boot=0)  # fmt: skip
    expect_rev = next(k for k in reversed(list(feats)) if ref.scores[k] >= top - se - 1e-12)
    assert rev.layer == expect_rev


def press_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Explicit leave-one-out squared residuals ``(n,)`` at the rules' lambda with the lowest
    mean (PRESS)."""
    res = [((t - preds) ** 2).sum(1) for preds, t, _, _ in loo_predictions(x, y)]
    return min(res, key=lambda r: float(r.mean()))


def test_ridge_press_alpha_narrows_by_press_and_picks_by_alpha_req() -> None:
    """The rule against references: PRESS from scikit-learn's Ridge refit n times, the layers
    within one paired standard error from those per-sample residuals, alpha-ReQ from the public
    measure on every sample; a projection head's layers are left out."""
    x, y = data(n=300)
    g = torch.Generator().manual_seed(7)
    # 'twin' is 'good' with a little noise (within one standard error of it at 10 labels per
    # class: alpha-ReQ decides between the two); 'projector.out' names the class better than any layer (a head: left out)
    twin = x[:, :8] + 0.1 * torch.randn(300, 8, generator=g)
    head = torch.nn.functional.one_hot(y, 4).float() * 4 + 0.5 * torch.randn(300, 4, generator=g)
    feats = {"twin": twin, **{k: x[:, a:b] for k, (a, b) in SPANS.items()}, "projector.out": head}
    c = choose_layer(feats, y, rule="ridge_press_alpha", labels_per_class=10, n_boot=50)
    keep = _few_labels(y, 10, 0).numpy()
    per = {}
    for k, v in feats.items():
        xs = v.double().numpy()
        xs = (xs - xs.mean(0)) / (xs.std(0) + 1e-6)
        per[k] = -press_reference(xs[keep], y.numpy()[keep])
    n = keep.size
    tol = 1e3 * torch.finfo(torch.float64).eps * n
    for k in feats:
        assert c.scores[k] == pytest.approx(float(per[k].mean()), rel=tol, abs=tol)
    assert c.info["excluded"] == ["projector.out"]
    body = [k for k in feats if k != "projector.out"]
    top = max(body, key=lambda k: per[k].mean())
    near = []
    for k in body:
        d = per[top] - per[k]
        if d.mean() <= d.std(ddof=1) / math.sqrt(n) + 1e-12:
            near.append(k)
    assert c.info["within_1se"] == near == c.tied
    assert len(near) >= 2 and "noise" not in near and "projector.out" not in near
    alphas = {k: alpha_req(feats[k]) for k in near}
    assert {k: c.info["alpha_req"][k] for k in near} == pytest.approx(alphas, rel=1e-6)
    assert c.layer == min(near, key=lambda k: abs(alphas[k] - 1))
    assert c.confidence is not None and 0.0 <= c.confidence <= 1.0
    # every layer in a head: none is left out
    only = choose_layer({"head.a": x[:, :8], "head.b": x[:, 8:16]}, y, rule="ridge_press_alpha",
                        labels_per_class=10, n_boot=0)  # fmt: skip
    assert only.info["excluded"] == [] and only.layer == "head.a"


def test_is_head_reads_module_names() -> None:
    from headkit.probe._few_labels import is_head

    for name in ("head", "head.0", "projection_head.layers.2", "model.projector", "predictor.1"):
        assert is_head(name), name
    for name in ("blocks.3", "encoder.layer.11", "headless.0", 3, "backbone.layer4"):
        assert not is_head(name), name


@pytest.mark.parametrize("width", [8, 64])
def test_ridge_scores_match_the_reference_in_both_forms(width: int) -> None:
    """40 labelled samples: a layer narrower than that takes the primal form (d x d solves), a
    wider one the kernel form (n x n); both equal scikit-learn's Ridge refit n times."""
    x, y = data(n=300)
    g = torch.Generator().manual_seed(11)
    layer = x[:, :8] @ torch.randn(8, width, generator=g) + torch.randn(300, width, generator=g)
    keep = _few_labels(y, 10, 0)
    assert (keep.numel() > width) == (width == 8)
    xs = layer.double().numpy()
    xs = (xs - xs.mean(0)) / (xs.std(0) + 1e-6)
    _, margin = loo_reference(xs[keep.numpy()], y[keep].numpy())
    press = press_reference(xs[keep.numpy()], y[keep].numpy())
    feats = {"a": layer}
    c_mar = choose_layer(feats, y, rule="ridge_margin", labels_per_class=10, n_boot=0)
    c_pre = choose_layer(feats, y, rule="ridge_press_alpha", labels_per_class=10, n_boot=0)
    n = keep.numel()
    tol = 1e3 * torch.finfo(torch.float64).eps * n * width
    assert c_mar.scores["a"] == pytest.approx(margin, rel=tol, abs=tol)
    assert c_pre.scores["a"] == pytest.approx(-float(press.mean()), rel=tol, abs=tol)


def test_a_layer_without_a_spectrum_is_named_or_ranked_last() -> None:
    """A one-direction layer has no eigenvalue decay to fit: the label-free rule refuses it by
    name; ridge_press_alpha still scores it with the labels and ranks it last on alpha-ReQ."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (300,), generator=g)
    one = (y.float() * 3 + torch.randn(300, generator=g)).view(-1, 1)
    two = torch.cat([one, 0.01 * torch.randn(300, 1, generator=g)], 1)
    feats = {"one": one, "two": two, "noise": torch.randn(300, 8, generator=g)}
    with pytest.raises(
        HeadkitError, match="layer 'one' cannot be measured: alpha_req needs at least 2"
    ):
        choose_layer(feats, rule="alpha_req", n_boot=0)
    with pytest.raises(HeadkitError, match="at least 2 non-zero eigenvalues"):
        alpha_req(one)
    c = choose_layer(feats, y, rule="ridge_press_alpha", labels_per_class=10, n_boot=20)
    # 'one' joins the set in some resamples: its alpha-ReQ is recorded as undefined, never picked
    assert math.isnan(c.info["alpha_req"]["one"]) and c.layer == "two"
