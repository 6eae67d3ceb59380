from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from torch import nn

import headkit
from headkit import HeadkitError, MLPHead, ReweightHead
from headkit.heads import from_lightly

from ._optional import Optional
from ._tol import magnitude, tol


def _width(m: torch.nn.Module) -> int:
    """The longest sum behind one output value: every Linear's inputs, chained."""
    return sum(int(x.in_features) for x in m.modules() if isinstance(x, torch.nn.Linear)) or 1


lightly_heads = Optional("lightly.models.modules.heads")

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


@pytest.mark.float_sensitive
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
    want = theirs_copy(x)
    torch.testing.assert_close(ours(x), want, **tol(torch.float32, magnitude(want), _width(theirs)))
    if train:  # running stats updated identically
        for a, b in zip(ours.buffers(), theirs_copy.buffers(), strict=True):
            torch.testing.assert_close(a, b)
    # the preset with the same dims builds the same head
    preset = MLPHead.preset(name, **SMALL)
    preset.load_state_dict(theirs.state_dict())
    preset.train(train)
    want = copy.deepcopy(theirs)(x)
    torch.testing.assert_close(
        preset(x), want, **tol(torch.float32, magnitude(want), _width(theirs))
    )


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


@pytest.mark.float_sensitive
@pytest.mark.parametrize(
    "key", ["preset:simclr", "preset:simsiam_projection", "mlp1", "reweight", "reweight-normalize"]
)
def test_head_compile_matches_eager(key: str) -> None:
    head = HEADS[key]().eval()
    x = torch.randn(6, 12)
    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    want = head(x)
    torch.testing.assert_close(
        compiled(x), want, **tol(torch.float32, magnitude(want), _width(head))
    )


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


# ----------------------------------------------------------------------------- lightly's arguments


def _same_head(ours: nn.Module, theirs: nn.Module) -> None:
    assert structure(ours) == structure(theirs)
    ours.load_state_dict(theirs.state_dict())
    for train in (True, False):
        ours.train(train)
        theirs.train(train)
        x = torch.randn(6, 12)
        want = theirs(x)
        torch.testing.assert_close(
            ours(x), want, **tol(torch.float32, magnitude(want), _width(theirs))
        )


@pytest.mark.parametrize("num_layers", [2, 3, 4])
@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize(
    ("preset", "cls"), [("simclr", "SimCLRProjectionHead"), ("moco_v2", "MoCoProjectionHead")]
)
def test_preset_batch_norm_and_num_layers_mean_lightlys(
    preset: str, cls: str, batch_norm: bool, num_layers: int
) -> None:
    """SimCLRProjectionHead(batch_norm=False) has no BN at all; MoCoProjectionHead(batch_norm=True)
    (MoCo v3) has BN on the output too: the preset with the same arguments is the same head."""
    theirs = getattr(lightly_heads, cls)(12, 20, 6, num_layers, batch_norm)
    ours = MLPHead.preset(preset, **SMALL, num_layers=num_layers, batch_norm=batch_norm)
    _same_head(ours, theirs)


def test_preset_vicreg_num_layers_means_lightlys() -> None:
    for n in (2, 3, 5):
        _same_head(
            MLPHead.preset("vicreg", **SMALL, num_layers=n),
            lightly_heads.VICRegProjectionHead(12, 20, 6, num_layers=n),
        )


@pytest.mark.parametrize("preset", ["simclr", "moco_v2", "vicreg"])
def test_preset_refuses_lightly_num_layers_one(preset: str) -> None:
    # lightly's num_layers=1 still builds two linear layers
    assert sum(isinstance(m, nn.Linear) for m in lightly_head(preset, **SMALL).modules()) >= 2
    with pytest.raises(HeadkitError, match=r"num_layers=1.*2 linear layers"):
        MLPHead.preset(preset, **SMALL, num_layers=1)


@pytest.mark.parametrize("preset", ["nnclr", "simsiam_projection"])
def test_preset_refuses_ambiguous_batch_norm(preset: str) -> None:
    with pytest.raises(HeadkitError, match="last_batch_norm"):
        MLPHead.preset(preset, **SMALL, batch_norm=False)
    head = MLPHead.preset(preset, **SMALL, batch_norm=False, last_batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in head.modules())
    # the default value is not an override of meaning: accepted
    assert MLPHead.preset(preset, **SMALL, batch_norm=True).last_batch_norm


@pytest.mark.parametrize("preset", ["byol_projection", "barlow_twins", "simsiam_prediction"])
def test_preset_batch_norm_where_it_is_every_bn(preset: str) -> None:
    head = MLPHead.preset(preset, **SMALL, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in head.modules())


def test_preset_unknown_argument_lists_the_known_ones() -> None:
    with pytest.raises(HeadkitError, match=r"use_bias.*input_dim, hidden_dim"):
        MLPHead.preset("simclr", use_bias=False)


LIGHTLY_HEAD_CLASSES = [
    "BarlowTwinsProjectionHead",
    "BYOLProjectionHead",
    "BYOLPredictionHead",
    "DenseCLProjectionHead",
    "LeJEPAProjectionHead",
    "LeWMProjectionHead",
    "MMCRProjectionHead",
    "MoCoProjectionHead",
    "MSNProjectionHead",
    "NNCLRProjectionHead",
    "NNCLRPredictionHead",
    "SimCLRProjectionHead",
    "SimSiamProjectionHead",
    "SimSiamPredictionHead",
    "SMoGProjectionHead",
    "SMoGPredictionHead",
    "SwaVProjectionHead",
    "TiCoProjectionHead",
    "VICRegProjectionHead",
]


@pytest.mark.float_sensitive
@pytest.mark.parametrize("cls", LIGHTLY_HEAD_CLASSES)
def test_from_lightly_every_plain_lightly_head(cls: str) -> None:
    torch.manual_seed(0)
    theirs = getattr(lightly_heads, cls)(12, 20, 6)
    ours = from_lightly(theirs)
    for train in (True, False):
        theirs.train(train)
        ours.train(train)
        x = torch.randn(5, 12)
        want = theirs(x)
        torch.testing.assert_close(
            ours(x), want, **tol(torch.float32, magnitude(want), _width(theirs))
        )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: lightly_heads.DINOProjectionHead(16, 32, 8, 12),
            r"`last_layer` \(a weight-normalised Linear",
        ),
        (lambda: lightly_heads.DINOv2ProjectionHead(16, 32, 8, 12), "`last_layer`"),
        (lambda: lightly_heads.VicRegLLocalProjectionHead(8, 16, 4), r"layers\[1\] is LayerNorm"),
        (lambda: lightly_heads.CAPIProjectionHead(8, 16), "CAPIProjectionHead has none"),
        (lambda: lightly_heads.SwaVPrototypes(8, 4), "SwaVPrototypes has none"),
        (lambda: nn.Sequential(), "has none"),
    ],
    ids=["dino", "dinov2", "vicregl", "capi", "swav_prototypes", "sequential"],
)
def test_from_lightly_names_the_layer_it_cannot_map(make: object, match: str) -> None:
    with pytest.warns() if "DINO" in match or "last_layer" in match else _no_warn():
        head = make()  # type: ignore[operator]
    with pytest.raises(HeadkitError, match=match):
        from_lightly(head)


class _no_warn:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def test_from_lightly_refuses_a_head_with_its_own_forward() -> None:
    class Normalised(lightly_heads.ProjectionHead):  # type: ignore[misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(self.layers(x), dim=-1)

    Normalised.__module__ = "lightly.models.modules.heads"
    head = Normalised([(8, 4, None, None)])
    with pytest.raises(HeadkitError, match="its forward"):
        from_lightly(head)


# ----------------------------------------------------------------------------- ReweightHead exactness


def _exact_weights(kappa: float, dim: int) -> torch.Tensor:
    return torch.tensor([kappa ** (-i) for i in range(dim)], dtype=torch.float64)


@pytest.mark.parametrize("kappa", [1.01, 1.05, 1.1, 0.97])
def test_reweight_head_exact_after_double(kappa: float) -> None:
    """kappa is not rounded to float32: ``.double()`` (and float64 input) is exact."""
    want = _exact_weights(kappa, 128)
    h = torch.randn(4, 128, dtype=torch.float64)
    for head in (
        ReweightHead(128, kappa).double(),
        ReweightHead(128, kappa).to(torch.float64),
        ReweightHead(128, kappa),  # float32 head applied to float64 input
        ReweightHead(128, kappa, trainable=True).double(),
        ReweightHead(128, kappa).half().double(),
    ):
        torch.testing.assert_close(head(h), h * want, rtol=1e-14, atol=0)
    head = ReweightHead(128, kappa).double()
    torch.testing.assert_close(head.weights, want, rtol=1e-14, atol=0)
    assert head.log_kappa.item() == math.log(kappa)
    assert head.kappa.item() == pytest.approx(kappa, rel=1e-15)
    norm = ReweightHead(128, kappa, normalize=True).double()
    torch.testing.assert_close(
        norm(h), nn.functional.normalize(h * want, dim=-1), rtol=1e-13, atol=1e-15
    )


def test_reweight_head_state_dict_keeps_the_value() -> None:
    src = ReweightHead(32, kappa=1.3).double()
    dst = ReweightHead(32, kappa=1.01).double()
    dst.load_state_dict(src.state_dict())
    h = torch.randn(2, 32, dtype=torch.float64)
    torch.testing.assert_close(dst(h), h * _exact_weights(1.3, 32), rtol=1e-14, atol=0)
    # a float32 checkpoint of the same kappa keeps the exact value
    dst32 = ReweightHead(32, kappa=1.3)
    dst32.load_state_dict(ReweightHead(32, kappa=1.3).state_dict())
    torch.testing.assert_close(dst32.double()(h), h * _exact_weights(1.3, 32), rtol=1e-14, atol=0)
    # an in-place edit is seen
    with torch.no_grad():
        dst.log_kappa.fill_(math.log(2.0))
    torch.testing.assert_close(dst(h), h * _exact_weights(2.0, 32), rtol=1e-14, atol=0)
    copied = copy.deepcopy(dst)
    torch.testing.assert_close(copied(h), dst(h), rtol=0, atol=0)


# ----------------------------------------------------------------------------- no host syncs


def test_trainable_reweight_head_training_step_reads_no_device_value() -> None:
    """On the meta device any read of kappa raises: a training step must not read it."""
    head = ReweightHead(64, kappa=1.05, trainable=True, device="meta")
    head.train()
    x = torch.randn(8, 64, device="meta", requires_grad=True)
    for normalize in (False, True):
        head.normalize = normalize
        out = head(x)
        out.sum().backward()
    assert out.device.type == "meta"


def test_trainable_reweight_head_checks_only_on_meaningful_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import headkit.heads._reweight as H

    calls: list[float] = []
    real = H._dead_count

    def counting(dim: int, log_kappa: float, dtype: torch.dtype) -> int:
        calls.append(log_kappa)
        return real(dim, log_kappa, dtype)

    monkeypatch.setattr(H, "_dead_count", counting)
    head = ReweightHead(256, kappa=1.05, trainable=True)
    opt = torch.optim.SGD(head.parameters(), lr=1e-7)
    calls.clear()
    for _ in range(50):  # tiny steps: the tail weights move by far less than 0.1%
        opt.zero_grad()
        head(torch.randn(4, 256)).square().sum().backward()
        opt.step()
    assert len(calls) <= 1
    assert len(head._dead) == 1  # one entry per working dtype: bounded
    for dtype in (torch.float64, torch.float16, torch.bfloat16, torch.float32):
        head(torch.randn(2, 256, dtype=dtype))
    assert len(head._dead) == 4


def test_trainable_reweight_head_warns_when_kappa_drifts_into_dead_range() -> None:
    head = ReweightHead(2048, kappa=1.01, trainable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head(torch.randn(2, 2048))
    with torch.no_grad():
        head.log_kappa.fill_(math.log(1.1))  # as an optimiser step far out would
    with pytest.warns(RuntimeWarning, match="957 of 2048"):
        head(torch.randn(2, 2048))
    with warnings.catch_warnings():  # the same count again: no second warning
        warnings.simplefilter("error")
        head(torch.randn(2, 2048))
    head.eval()
    with torch.no_grad():
        head.log_kappa.fill_(math.log(1.2))
    with pytest.warns(RuntimeWarning, match="underflow"):
        head(torch.randn(2, 2048))
