from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import headkit
from headkit import HeadkitError, MLPHead, ReweightHead
from headkit.heads import from_lightly

lightly_heads = pytest.importorskip("lightly.models.modules.heads")

SMALL = {"input_dim": 12, "hidden_dim": 20, "output_dim": 6}


def lightly_head(name: str, **dims: int) -> nn.Module:
    i, h, o = dims["input_dim"], dims["hidden_dim"], dims["output_dim"]
    lh = lightly_heads
    return {
        "simclr": lambda: lh.SimCLRProjectionHead(i, h, o),
        "moco_v2": lambda: lh.MoCoProjectionHead(i, h, o),
        "byol_projection": lambda: lh.BYOLProjectionHead(i, h, o),
        "byol_prediction": lambda: lh.BYOLPredictionHead(i, h, o),
        "simsiam_projection": lambda: lh.SimSiamProjectionHead(i, h, o),
        "simsiam_prediction": lambda: lh.SimSiamPredictionHead(i, h, o),
        "barlow_twins": lambda: lh.BarlowTwinsProjectionHead(i, h, o),
        "vicreg": lambda: lh.VICRegProjectionHead(i, h, o),
        "nnclr": lambda: lh.NNCLRProjectionHead(i, h, o),
    }[name]()


LIGHTLY_DEFAULTS = {
    "simclr": "SimCLRProjectionHead",
    "moco_v2": "MoCoProjectionHead",
    "byol_projection": "BYOLProjectionHead",
    "byol_prediction": "BYOLPredictionHead",
    "simsiam_projection": "SimSiamProjectionHead",
    "simsiam_prediction": "SimSiamPredictionHead",
    "barlow_twins": "BarlowTwinsProjectionHead",
    "vicreg": "VICRegProjectionHead",
    "nnclr": "NNCLRProjectionHead",
}


def structure(m: nn.Module) -> list[tuple[str, tuple[object, ...]]]:
    out = []
    for name, mod in m.named_modules():
        if isinstance(mod, nn.Linear):
            out.append((name, ("linear", mod.in_features, mod.out_features, mod.bias is not None)))
        elif isinstance(mod, nn.BatchNorm1d):
            out.append((name, ("bn", mod.num_features, mod.affine, mod.eps, mod.momentum)))
        elif isinstance(mod, nn.ReLU):
            out.append((name, ("relu",)))
    return out


def test_presets_listed() -> None:
    assert MLPHead.presets() == sorted(LIGHTLY_DEFAULTS)


@pytest.mark.parametrize("name", sorted(LIGHTLY_DEFAULTS))
def test_preset_defaults_match_lightly_structure(name: str) -> None:
    theirs = getattr(lightly_heads, LIGHTLY_DEFAULTS[name])()
    with torch.device("meta"):
        ours = MLPHead.preset(name)
    assert structure(ours) == structure(theirs)


@pytest.mark.parametrize("name", sorted(LIGHTLY_DEFAULTS))
@pytest.mark.parametrize("train", [True, False])
def test_from_lightly_parity(name: str, train: bool) -> None:
    theirs = lightly_head(name, **SMALL)
    # non-trivial BN statistics and affine parameters
    theirs.train()
    for _ in range(3):
        theirs(torch.randn(16, SMALL["input_dim"]) * 3 + 1)
    for m in theirs.modules():
        if isinstance(m, nn.BatchNorm1d) and m.affine:
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    theirs.train(train)
    ours = from_lightly(theirs)
    assert ours.training == train
    assert structure(ours) == structure(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(10, SMALL["input_dim"])
    theirs_copy = copy.deepcopy(theirs)
    torch.testing.assert_close(ours(x), theirs_copy(x), rtol=1e-6, atol=1e-6)
    if train:  # running stats updated identically
        for a, b in zip(ours.buffers(), theirs_copy.buffers(), strict=True):
            torch.testing.assert_close(a, b)
    # the preset with the same dims builds the same head
    preset = MLPHead.preset(name, **SMALL)
    preset.load_state_dict(theirs.state_dict())
    preset.train(train)
    torch.testing.assert_close(preset(x), copy.deepcopy(theirs)(x), rtol=1e-6, atol=1e-6)


def test_from_lightly_rejects_non_mlp() -> None:
    dino = lightly_heads.DINOProjectionHead(16, 32, 8, 12)
    with pytest.raises(HeadkitError, match="DINOProjectionHead"):
        from_lightly(dino)


HEADS = {
    **{f"preset:{n}": (lambda n=n: MLPHead.preset(n, **SMALL)) for n in MLPHead.presets()},
    "mlp1": lambda: MLPHead(12, 20, 6, num_layers=1),
    "mlp-gelu-nobn": lambda: MLPHead(12, 20, 6, 3, batch_norm=False, act_layer=nn.GELU),
    "reweight": lambda: ReweightHead(12, kappa=1.05),
    "reweight-trainable": lambda: ReweightHead(12, kappa=1.2, trainable=True),
    "reweight-normalize": lambda: ReweightHead(12, kappa=1.1, trainable=True, normalize=True),
}


def has_bn(m: nn.Module) -> bool:
    return any(isinstance(x, nn.BatchNorm1d) for x in m.modules())


@pytest.mark.parametrize("key", sorted(HEADS))
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("train", [True, False])
def test_head_contract(key: str, batch: int, train: bool) -> None:
    head = HEADS[key]()
    head.train(train)
    x = torch.randn(batch, 12)
    if train and batch == 1 and has_bn(head):
        with pytest.raises(ValueError, match="more than 1 value"):
            head(x)
        return
    y = head(x)
    assert y.shape[0] == batch and torch.isfinite(y).all()
    # token input (B, T, D)
    tok = head(torch.randn(batch, 5, 12))
    assert tok.shape[:2] == (batch, 5) and torch.isfinite(tok).all()
    # every parameter receives a gradient
    head.zero_grad()
    xin = torch.randn(4, 3, 12, requires_grad=True)
    out = head(xin)
    (out.square().sum() + out[..., 0].sum()).backward()
    assert xin.grad is not None and torch.isfinite(xin.grad).all()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("key", sorted(HEADS))
def test_head_state_dict_roundtrip(key: str) -> None:
    head = HEADS[key]()
    head.train()
    head(torch.randn(8, 12))
    buf = io.BytesIO()
    torch.save(head.state_dict(), buf)
    buf.seek(0)
    other = HEADS[key]()
    if isinstance(other, ReweightHead):
        other = ReweightHead(12, kappa=3.0, trainable=other.trainable, normalize=other.normalize)
    other.load_state_dict(torch.load(buf, weights_only=True))
    head.eval()
    other.eval()
    x = torch.randn(4, 12)
    torch.testing.assert_close(head(x), other(x))


@pytest.mark.parametrize(
    "key", ["preset:simclr", "preset:simsiam_projection", "mlp1", "reweight", "reweight-normalize"]
)
def test_head_compile_matches_eager(key: str) -> None:
    head = HEADS[key]().eval()
    x = torch.randn(6, 12)
    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), head(x), rtol=1e-5, atol=1e-6)


def test_reweight_formula_float64() -> None:
    for kappa in [1.0, 1.01, 1.05, 1.1, 2.0, 0.97]:
        head = ReweightHead(64, kappa=kappa, dtype=torch.float64)
        h = torch.randn(3, 7, 64, dtype=torch.float64)
        want = h * torch.tensor([kappa ** (-i) for i in range(64)], dtype=torch.float64)
        torch.testing.assert_close(head(h), want, rtol=1e-13, atol=0)
        torch.testing.assert_close(
            head.weights,
            torch.tensor([kappa ** (-i) for i in range(64)], dtype=torch.float64),
            rtol=1e-13,
            atol=0,
        )
        assert head.kappa.item() == pytest.approx(kappa, rel=1e-15)
    h = torch.randn(4, 10, dtype=torch.float64)
    torch.testing.assert_close(ReweightHead(10, kappa=1.0, dtype=torch.float64)(h), h)


def test_reweight_normalize_head_float64() -> None:
    head = ReweightHead(32, kappa=1.3, normalize=True, dtype=torch.float64)
    h = torch.randn(5, 32, dtype=torch.float64)
    w = torch.tensor([1.3 ** (-i) for i in range(32)], dtype=torch.float64)
    want = torch.nn.functional.normalize(h * w, dim=-1)
    torch.testing.assert_close(head(h), want, rtol=1e-12, atol=1e-14)


def test_trainable_kappa_learns() -> None:
    head = ReweightHead(16, kappa=1.05, trainable=True)
    assert isinstance(head.log_kappa, nn.Parameter)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    before = head.kappa.item()
    loss = head(torch.randn(8, 16)).square().sum()  # shrinking outputs wants a larger kappa
    loss.backward()
    assert head.log_kappa.grad is not None and head.log_kappa.grad.abs() > 0
    opt.step()
    assert head.kappa.item() > before
    assert head.kappa.item() > 0
    # fixed head: no parameters
    assert list(ReweightHead(16).parameters()) == []


def test_dead_coordinate_warning() -> None:
    with pytest.warns(RuntimeWarning, match=r"(\d+) of 2048 weights underflow"):
        head = ReweightHead(2048, kappa=1.1)
    exact = torch.tensor([1.1 ** (-i) for i in range(2048)], dtype=torch.float64)
    expected = int((exact.to(torch.float32) == 0).sum())
    assert expected > 900
    assert head.dead_coordinates() == expected
    assert int((head.weights == 0).sum()) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = ReweightHead(2048, kappa=1.01)
        ok(torch.randn(2, 2048))
        assert ok.dead_coordinates() == 0
    # the same head in float16 has dead coordinates: warned at forward time
    half = ReweightHead(2048, kappa=1.01)
    with pytest.warns(RuntimeWarning, match="float16"):
        half(torch.randn(2, 2048, dtype=torch.float16))
    with pytest.warns(RuntimeWarning, match="overflow"):
        ReweightHead(2048, kappa=0.9)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MLPHead(0, 4, 4), "input_dim"),
        (lambda: MLPHead(4, -1, 4), "hidden_dim"),
        (lambda: MLPHead(4, 4, 4, num_layers=0), "num_layers"),
        (lambda: MLPHead.preset("simclrr"), "simclr"),
        (lambda: ReweightHead(0), "dim"),
        (lambda: ReweightHead(4, kappa=0.0), "kappa"),
        (lambda: ReweightHead(4, kappa=-1.0), "kappa"),
        (lambda: ReweightHead(4, kappa=float("nan")), "kappa"),
        (lambda: ReweightHead(4, kappa=float("inf")), "kappa"),
    ],
)
def test_bad_construction(make: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()  # type: ignore[operator]


def test_unknown_preset_lists_known() -> None:
    with pytest.raises(HeadkitError) as err:
        MLPHead.preset("dino")
    for name in MLPHead.presets():
        assert name in str(err.value)


def test_wrong_input_dim_message() -> None:
    with pytest.raises(HeadkitError, match=r"expected input of shape \(\.\.\., 12\), got \(3, 7\)"):
        MLPHead(12, 8, 4)(torch.randn(3, 7))
    with pytest.raises(HeadkitError, match=r"\(\.\.\., 12\), got \(3, 11\)"):
        ReweightHead(12)(torch.randn(3, 11))


def test_headkit_error_is_value_error() -> None:
    assert issubclass(headkit.HeadkitError, ValueError)
