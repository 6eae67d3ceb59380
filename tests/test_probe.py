from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from headkit import HeadkitError, SweepReport, layer_sweep
from headkit.probe import (
    OnlineLayerProbe,
    extract_features,
    feature_spectrum,
    knn_accuracy,
    linear_probe,
    rankme,
)


def make_layers(n: int = 600, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.randn(3, 16, generator=g) * 3
    informative = centers[y] + torch.randn(n, 16, generator=g)
    noise = torch.randn(n, 16, generator=g)  # holds no label at all
    return {"informative": informative, "noise": noise}, y


def test_linear_probe_known_answer() -> None:
    feats, y = make_layers()
    tr = {k: v[:400] for k, v in feats.items()}
    te = {k: v[400:] for k, v in feats.items()}
    res = linear_probe(tr, y[:400], te, y[400:], epochs=30)
    assert res["informative"] > 0.95
    assert res["noise"] < 0.5  # chance is 1/3
    assert set(res.settings) == {"informative", "noise"}
    assert all(0 <= v <= 1 for v in res.values())
    # a mapping layer -> accuracy
    assert dict(res) == {"informative": res["informative"], "noise": res["noise"]}


def test_linear_probe_matches_sklearn_on_digits() -> None:
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    assert sklearn
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    scaler = StandardScaler().fit(xtr)
    ref = (
        LogisticRegression(max_iter=5000)
        .fit(scaler.transform(xtr), ytr)
        .score(scaler.transform(xte), yte)
    )
    res = linear_probe(
        {"x": torch.tensor(xtr, dtype=torch.float32)},
        torch.tensor(ytr),
        {"x": torch.tensor(xte, dtype=torch.float32)},
        torch.tensor(yte),
    )
    assert abs(res["x"] - ref) <= 0.01, (res["x"], ref)


def test_knn_known_answer() -> None:
    feats, y = make_layers()
    good = knn_accuracy(feats["informative"][:400], y[:400], feats["informative"][400:], y[400:])
    bad = knn_accuracy(feats["noise"][:400], y[:400], feats["noise"][400:], y[400:])
    assert good > 0.95 and bad < 0.5
    x = torch.randn(50, 4)
    assert knn_accuracy(x, torch.arange(50) % 4, x, torch.arange(50) % 4, k=1) == 1.0


def test_knn_matches_dense_reference() -> None:
    g = torch.Generator().manual_seed(3)
    xtr, xte = torch.randn(80, 6, generator=g), torch.randn(30, 6, generator=g)
    ytr, yte = torch.randint(0, 4, (80,), generator=g), torch.randint(0, 4, (30,), generator=g)
    sim = torch.nn.functional.normalize(xte, dim=1) @ torch.nn.functional.normalize(xtr, dim=1).T
    top, idx = sim.topk(7, dim=1)
    votes = torch.zeros(30, 4).scatter_add_(1, ytr[idx], (top / 0.1).exp())
    ref = float((votes.argmax(1) == yte).float().mean())
    assert knn_accuracy(xtr, ytr, xte, yte, k=7, temperature=0.1, chunk=7) == pytest.approx(ref)


def test_rankme_and_spectrum_known_answers() -> None:
    q, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))
    # orthogonal columns scaled by known singular values
    sv = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    x = (q[:, :4] * sv).float()
    p = sv / sv.sum()
    assert rankme(x) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-4)
    assert rankme(torch.eye(5)) == pytest.approx(5.0, rel=1e-5)
    with pytest.raises(HeadkitError, match="same features"):  # constant: refused (docs/probe.md)
        rankme(torch.ones(10, 3))
    g = torch.Generator().manual_seed(0)
    even = torch.randn(20000, 4, generator=g)
    uneven = even * torch.tensor([4.0, 2.0, 1.0, 0.5])
    s_even, s_uneven = feature_spectrum(even), feature_spectrum(uneven)
    var = torch.tensor([16.0, 4.0, 1.0, 0.25])
    torch.testing.assert_close(s_uneven.values, var / var.sum(), rtol=0.05, atol=0.005)
    assert s_even.unevenness < 0.05 < s_uneven.unevenness
    assert s_even.effective_rank == pytest.approx(4.0, rel=0.02)
    assert float(s_uneven.values.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: linear_probe(
                {"a": torch.randn(10, 3)},
                torch.zeros(9).long(),
                {"a": torch.randn(4, 3)},
                torch.zeros(4).long(),
            ),
            "10 rows but there are 9 labels",
        ),
        (
            lambda: linear_probe(
                {"a": torch.randn(10, 3)},
                torch.zeros(10).long(),
                {"a": torch.randn(4, 3)},
                torch.zeros(4).long(),
            ),
            "at least 2 classes",
        ),
        (
            lambda: linear_probe(
                {"a": torch.full((10, 3), float("nan"))},
                torch.arange(10) % 2,
                {"a": torch.randn(4, 3)},
                torch.arange(4) % 2,
            ),
            "NaN",
        ),
        (
            lambda: linear_probe(
                {"a": torch.randn(10, 3)},
                torch.arange(10) % 2,
                {"b": torch.randn(4, 3)},
                torch.arange(4) % 2,
            ),
            "same layers",
        ),
        (
            lambda: knn_accuracy(
                torch.randn(5, 3), torch.arange(5), torch.randn(5, 4), torch.arange(5)
            ),
            "D=3",
        ),
        (lambda: rankme(torch.tensor([[float("nan")]])), "NaN"),
        (lambda: feature_spectrum(torch.randn(5)), r"\(N, D\)"),
        (lambda: extract_features(nn.Linear(3, 3), [], ["weight"]), "no layer named"),
        (
            lambda: extract_features(nn.Sequential(nn.Linear(3, 3)), [], ["0"], progress=False),
            "no samples",
        ),
    ],
)
def test_bad_input(call: object, match: str) -> None:
    with pytest.raises(HeadkitError, match=match):
        call()  # type: ignore[operator]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def loader(
    n: int = 256, batch: int = 64, start: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    feats, y = make_layers(1000)
    x = feats["informative"]
    return [(x[i : i + batch], y[i : i + batch]) for i in range(start, start + n, batch)]


def test_extract_features_memmap(tmp_path: os.PathLike[str]) -> None:
    class DS(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
        def __init__(self) -> None:
            self.items = [(x, y) for xb, yb in loader() for x, y in zip(xb, yb, strict=True)]

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.items[i]

    dl = torch.utils.data.DataLoader(DS(), batch_size=50)
    net = Net().eval()
    mem = extract_features(net, dl, ["backbone", "head.0"], progress=False)
    disk = extract_features(
        net, dl, ["backbone", "head.0"], store=tmp_path, max_samples=120, progress=False
    )
    assert disk.feats["backbone"].shape == (120, 32)
    torch.testing.assert_close(disk.feats["backbone"], mem.feats["backbone"][:120])
    assert os.path.exists(os.path.join(tmp_path, "head.0.f32"))
    assert mem.labels is not None and mem.labels.shape == (256,)
    assert net.training is False


def test_layer_sweep_report(tmp_path: os.PathLike[str]) -> None:
    torch.manual_seed(0)
    net = Net()
    roles = {"backbone": "pre-projection", "head": "post-projection"}
    report = layer_sweep(
        net,
        loader(),
        loader(128, start=512),
        layers=["backbone.0", "backbone", "head.1", "head"],
        roles=roles,
        probe_kwargs={"epochs": 20},
        progress=False,
    )
    assert report.layers == ["backbone.0", "backbone", "head.1", "head"]
    assert set(report.metrics) == {"linear", "knn", "rankme", "unevenness"}
    assert report.metrics["spectrum"] == report.metrics["unevenness"]  # 0.1's name still reads
    assert report.info["n_train"] == 256 and report.info["n_test"] == 128
    assert set(report.intervals("linear")) == set(report.layers)
    assert report.tied_with_best("knn")[0] == report.best_layer("knn")
    assert report.best_layer("linear") in report.layers
    assert report.results("knn")["backbone.0"] > 0.9  # the label is linear in the input
    text = report.table()
    assert "pre-projection" in text and "post-projection" in text and "*" in text
    md = report.table("markdown")
    assert md.startswith("| layer | role | dim |")
    again = SweepReport.from_json(report.to_json())
    assert again == report
    json.loads(report.to_json())
    pytest.importorskip("matplotlib")
    path = report.plot(os.path.join(tmp_path, "sweep.png"))
    assert os.path.getsize(path) > 1000


def test_layer_sweep_without_labels_and_defaults() -> None:
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    data = [torch.randn(32, 16) for _ in range(3)]
    report = layer_sweep(net, data, metrics=("rankme", "spectrum"), progress=False)
    assert report.layers == ["0", "2"]  # default_layers: no parameter-free ReLU
    with pytest.raises(HeadkitError, match="need labels"):
        layer_sweep(net, data, progress=False)
    with pytest.raises(HeadkitError, match="unknown metrics"):
        layer_sweep(net, data, metrics=("accuracy",), progress=False)


def test_layer_sweep_timm_defaults() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    data = [(torch.randn(8, 3, 32, 32), torch.arange(8) % 2) for _ in range(3)]
    report = layer_sweep(model, data, metrics=("knn", "rankme"), progress=False)
    assert report.layers == [0, 1, 2, 3, 4]
    assert report.dims == [64, 64, 128, 256, 512]


def test_online_probe_no_gradient_to_encoder() -> None:
    enc = nn.Linear(16, 8)
    probe = OnlineLayerProbe({"enc": 8, "raw": 16}, num_classes=3)
    x = torch.randn(32, 16)
    y = torch.randint(0, 3, (32,))
    feats = {"enc": enc(x), "raw": x}
    loss = probe(feats, y)
    loss.backward()
    assert enc.weight.grad is None
    assert all(p.grad is not None for p in probe.parameters())
    opt = torch.optim.SGD(probe.parameters(), lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        probe({"enc": enc(x), "raw": x}, y).backward()
        opt.step()
    acc = probe.compute()
    assert set(acc) == {"enc", "raw"} and 0 <= acc["raw"] <= 1
    probe({"enc": enc(x), "raw": x}, y)
    assert probe.compute()["raw"] > 0.6  # learns the training batch
    with pytest.raises(HeadkitError, match="expected width 8"):
        probe({"enc": torch.randn(4, 5), "raw": torch.randn(4, 16)}, y[:4])


def test_lightning_callback(tmp_path: os.PathLike[str]) -> None:
    pl = pytest.importorskip("pytorch_lightning")
    from headkit.integrations.lightning import LayerProbeCallback

    class Module(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
            self.head = nn.Linear(32, 8)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
            x, _ = batch
            return self.head(self.backbone(x)).square().mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    feats, y = make_layers(256)
    ds = torch.utils.data.TensorDataset(feats["informative"], y)
    dl = torch.utils.data.DataLoader(ds, batch_size=32)
    module = Module()
    before = [p.detach().clone() for p in module.backbone.parameters()]
    cb = LayerProbeCallback(["backbone", "backbone.0"], num_classes=3, lr=0.05)
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        accelerator="cpu",
    )
    trainer.fit(module, dl)
    assert len(cb.history) == 3
    assert cb.history[-1]["backbone.0"] > 0.9
    assert cb.tap is None  # hooks removed at the end
    assert all(not m._forward_hooks for m in module.modules())
    assert any(
        not torch.equal(a, b) for a, b in zip(before, module.backbone.parameters(), strict=True)
    )
