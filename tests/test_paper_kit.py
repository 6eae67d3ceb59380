"""The experiment kit of the paper scripts and of benchmarks/bench_layer_choice.py: statistics,
verdicts, the layer-choice bookkeeping, the model plumbing and the data stand-ins (quick)."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples", "paper"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import _paper as P  # noqa: E402
import bench_layer_choice as B  # noqa: E402

from headkit import SupConLoss  # noqa: E402


def test_seed_stats_t_interval() -> None:
    m, sd, lo, hi = P.seed_stats([1.0, 2.0, 3.0])
    assert m == 2.0 and sd == 1.0
    half = 4.303 * 1.0 / math.sqrt(3)
    assert lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    # one seed: nothing can be concluded
    m, sd, lo, hi = P.seed_stats([0.5])
    assert math.isnan(sd) and lo == -math.inf and hi == math.inf


def test_verdicts() -> None:
    assert P.verdict(0.1, 0.3) == "AGREES"
    assert P.verdict(-0.3, -0.1) == "DISAGREES"
    assert P.verdict(-0.1, 0.3) == "INCONCLUSIVE"
    assert P.verdict(-0.3, -0.1, "<0") == "AGREES"
    assert P.verdict(0.1, 0.3, "<0") == "DISAGREES"
    line = P.claim("gap", [0.05, 0.06, 0.07], ">0", smoke=False)
    assert line.endswith("AGREES") and "+6.0 +- 1.0" in line
    assert "INCONCLUSIVE" in P.claim("gap", [-0.05, 0.06, 0.01], ">0", smoke=False)
    assert "INCONCLUSIVE" in P.claim("gap", [0.05], ">0", smoke=False)  # one seed


def test_smoke_claims_print_no_verdict() -> None:
    line = P.claim("gap", [0.05, 0.06, 0.07], ">0", smoke=True)
    assert "no verdict" in line
    for word in ("AGREES", "DISAGREES", "INCONCLUSIVE"):
        assert word not in line


def test_fmt_stat_has_no_raw_lists() -> None:
    text = P.fmt_stat([0.81, 0.83, 0.82])
    assert "[" in text and "," in text  # the interval
    assert "0.81" not in text  # values are formatted, not dumped
    assert P.fmt_stat([0.5]) == "50.0 (1 seed)"


def test_wilson_interval() -> None:
    lo, hi = B.wilson(9, 10)
    assert lo < 0.9 < hi and hi <= 1.0
    assert B.wilson(0, 10)[0] == 0.0
    assert B.wilson(10, 10)[1] == 1.0


def test_rule_table_counts_ties_and_points_lost() -> None:
    layers = ["x", "y", "z"]
    cases = [
        B.Case(
            "s",
            "t",
            "none",
            "mlp",
            0,
            layers,
            {"x": 0.9, "y": 0.89, "z": 0.7},
            "x",
            ["x", "y"],
            {"r": "y"},
        ),
        B.Case(
            "s",
            "t",
            "none",
            "mlp",
            1,
            layers,
            {"x": 0.9, "y": 0.8, "z": 0.7},
            "x",
            ["x"],
            {"r": "z"},
        ),
    ]
    _, rows = B.rule_table(cases, "title")
    assert rows[0]["hits"] == 1 and rows[0]["cases"] == 2
    assert rows[0]["mean_lost"] == pytest.approx((1.0 + 20.0) / 2)
    assert rows[0]["worst_lost"] == pytest.approx(20.0)


def test_supcon_dense_matches_headkit() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(24, 2, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (24,), generator=g)
    assert float(P.supcon_dense(z, y, 0.1)) == pytest.approx(
        float(SupConLoss(temperature=0.1)(z, y)), rel=1e-9
    )


@pytest.mark.parametrize("head", ["none", "mlp", "reweight"])
def test_sweep_layers_cover_backbone_and_head(head: str) -> None:
    torch.manual_seed(0)
    bb = P.CNN(1, width=4, out_dim=16)
    model = P.WithHead(bb, P.make_head(head, bb.dim, hidden=8, out=6, depth=3))
    layers, roles = P.sweep_layers(model)
    assert layers[:4] == ["backbone.block1", "backbone.block2", "backbone.block3", "backbone.fc"]
    if head == "none":
        assert "head" not in layers
    else:
        assert layers[-1] == "head" and roles["head"].startswith("post-projection")
    if head == "mlp":
        assert layers[4:6] == ["head.layers.2", "head.layers.5"]  # the hidden ReLUs of 3 layers
    feats = P.layer_features(model, torch.rand(10, 1, 28, 28), layers)
    assert [f.shape[0] for f in feats.values()] == [10] * len(layers)
    assert feats["backbone.fc"].shape[1] == 16


def test_standin_setting_and_cache_key() -> None:
    data = P.load_setting("digits", smoke=True)
    assert data.pre_x.shape[1:] == (1, 8, 8) and set(data.train_y) == {"digit"}
    a = P.cache_key(cfg={"seed": 0, "head": "mlp"}, n=3)
    assert a == P.cache_key(n=3, cfg={"head": "mlp", "seed": 0})
    assert a != P.cache_key(cfg={"seed": 1, "head": "mlp"}, n=3)


def test_composite_drops_the_digit() -> None:
    item = torch.full((2, 1, 4, 4), 0.8)
    digit = torch.zeros(2, 1, 4, 4)
    digit[:, :, 1, 1] = 1.0
    out = P.composite(item, digit, torch.tensor([True, False]))
    assert out[0, 0, 1, 1] == 1.0 and out[1, 0, 1, 1] == pytest.approx(0.4)
    assert torch.allclose(out[:, :, 0, 0], torch.full((2, 1), 0.4))


@pytest.mark.parametrize("name", list(P.SETTINGS))
def test_settings_load_with_standin_data(
    name: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(P, "CACHE", str(tmp_path))  # no registry data here
    data = P.load_setting(name, smoke=True)
    n_pre, _, n_te = P.sizes(True)
    assert data.train_x.shape[0] == data.train_y[next(iter(data.train_y))].shape[0]
    assert set(data.train_y) == set(P.SETTINGS[name].tasks) == set(data.test_y)
    if name != "digits":
        assert data.source == "stand-in" and not data.real
        assert data.pre_x.shape[0] == n_pre and data.test_x.shape[0] == n_te
    if name == "digit_on_fashion":
        assert data.pre_x.shape[1] == 2  # item and digit channels, composed by the augmentation
    if name == "coarse_to_fine":
        assert int(data.pre_y.max()) <= 3 and torch.equal(
            data.train_y["coarse"], P.COARSE[data.train_y["fine"]]
        )
    if name != "digits":  # scikit-learn's digits ship in its wheel; the others need the fetch
        with pytest.raises(SystemExit, match=r"get_data\.sh"):
            P.load_setting(name, smoke=False)
