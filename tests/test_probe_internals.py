"""Extraction (batches, devices, stores), streaming probes and kNN, the label-free measures."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from headkit import HeadkitError, layer_sweep
from headkit.probe import (
    METRICS,
    alpha_req,
    extract_features,
    feature_spectrum,
    knn_accuracy,
    lidar,
    linear_probe,
    nesum,
    rankme,
    unevenness,
)
from headkit.probe._extract import placed
from headkit.probe._linear import _stats, _train
from headkit.probe._metrics import encode_labels, knn_predict, moments
from headkit.probe._rows import Rows


def blobs(
    n: int, d: int, c: int = 3, seed: int = 0, sep: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    x = torch.randn(c, d, generator=g)[y] * sep + torch.randn(n, d, generator=g)
    return x, y


# ----------------------------------------------------------------------------- batches


class KwNet(nn.Module):
    """A toy text model called with keywords, as Hugging Face models are."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.block = nn.Linear(8, 8)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.block(self.emb(input_ids))
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return h


def test_dict_batches_pass_keywords_and_take_labels_out() -> None:
    torch.manual_seed(0)
    net = KwNet()
    ids = torch.randint(0, 50, (6, 5))
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[:, 3:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(6) % 2}
    feats, labels = extract_features(net, [batch], ["block"], pool=None, progress=False)
    assert labels is not None and labels.tolist() == [0, 1, 0, 1, 0, 1]
    ref = net.block(net.emb(ids)).detach()
    torch.testing.assert_close(feats["block"], ref.reshape(6, -1))
    # {"image": x, "label": y}: x is passed positionally, metadata is left out of the call
    lin = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(5, 4)
    f2, y2 = extract_features(
        lin, [{"image": x, "label": torch.arange(5), "path": ["a"] * 5}], ["0"], progress=False
    )
    torch.testing.assert_close(f2["0"], lin(x).detach())
    assert y2 is not None and y2.tolist() == list(range(5))
    with pytest.raises(HeadkitError, match="several label keys"):
        extract_features(lin, [{"image": x, "label": y2, "labels": y2}], ["0"], progress=False)
    with pytest.raises(HeadkitError, match="integer class indices"):
        extract_features(lin, [(x, torch.rand(5))], ["0"], progress=False)
    with pytest.raises(HeadkitError, match=r"nn\.Module"):
        extract_features((lin, None), [x], ["0"], progress=False)  # type: ignore[arg-type]


def test_hf_bert_from_config_dict_batches() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 60, (4, 7))
    mask = torch.ones(4, 7, dtype=torch.long)
    batches = [{"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 0, 1])}]
    feats, labels = extract_features(
        model, batches, ["encoder.layer.0", "encoder.layer.1"], pool="mean", progress=False
    )
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    torch.testing.assert_close(feats["encoder.layer.1"], hs[2].mean(1), rtol=1e-4, atol=1e-5)
    assert labels is not None and labels.tolist() == [0, 1, 0, 1]


# ----------------------------------------------------------------------------- devices


class DeviceLog(TorchDispatchMode):
    """Records the device of every tensor an op creates."""

    def __init__(self) -> None:
        super().__init__()
        self.devices: set[str] = set()
        self.cpu_dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.devices.add(t.device.type)
                if t.device.type == "cpu":
                    self.cpu_dtypes.add(t.dtype)
        return out


def test_knn_and_probe_keep_their_work_on_the_device() -> None:
    """On "meta" inputs every tensor the kNN, the probe and the spectra create stays on "meta"."""
    x, y = blobs(300, 6)
    meta = torch.device("meta")
    _, yc, _ = encode_labels(y)
    tr, te = Rows(x[:200].to(meta)), Rows(x[200:].to(meta))
    ytr = yc[:200].to(meta)
    with DeviceLog() as log:
        pred = knn_predict(tr, ytr, te, num_classes=3, k=5, device=meta, train_chunk=64)
    assert pred.device.type == "meta" and pred.shape == (100,)
    assert log.devices == {"meta"}, log.devices
    stats = [_stats(tr, meta)]
    lrs, wds, ytr_cpu = torch.tensor([[1e-2, 1e-1]]), torch.zeros(1, 2), yc[:200]
    with DeviceLog() as log:
        params = _train([tr], ytr_cpu, stats, 3, lrs, wds, 2, 64, 0, meta)
    assert params[0][0].device.type == "meta"
    # the only CPU tensors are the shuffling permutation (seeded on the CPU) and its slices
    assert log.cpu_dtypes <= {torch.int64}, log.cpu_dtypes
    with DeviceLog() as log:
        mom = moments(tr, meta)
    assert mom.scatter.device.type == "meta" and log.devices == {"meta"}


def test_device_moves_the_model_and_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """device= moves the model there for the pass and back afterwards (spied on Module.to)."""
    net = nn.Sequential(nn.Linear(4, 3))
    calls: list[object] = []
    orig = nn.Module.to

    def spy(self: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        if self is net:
            calls.append(args[0] if args else kwargs.get("device"))
            return self  # a fake move: there is only the CPU here
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", spy)
    with placed(net, "meta") as dev:
        assert dev == torch.device("meta")
    assert [str(c) for c in calls] == ["meta", "cpu"]


def test_model_on_another_device_runs_there() -> None:
    """A model on "meta" gets its inputs moved there (0.1 moved inputs but not the model)."""
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).to("meta")
    ex = extract_features(
        net, [(torch.randn(2, 4), torch.arange(2))], ["0"], out_device=None, progress=False
    )
    assert ex.feats["0"].device.type == "meta" and ex.feats["0"].shape == (2, 3)


def test_amp_bf16_extraction_returns_float32() -> None:
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(16, 8)
    f32 = extract_features(net, [x], ["2"], progress=False).feats["2"]
    bf16 = extract_features(net, [x], ["2"], amp=True, progress=False).feats["2"]
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, f32, rtol=0.05, atol=0.05)
    assert not torch.equal(bf16, f32)  # autocast really ran in bfloat16


# ----------------------------------------------------------------------------- stores


class DS(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, n: int = 150) -> None:
        self.x, self.y = blobs(n, 16)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def test_store_streams_and_matches_memory(tmp_path: os.PathLike[str]) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    dl = torch.utils.data.DataLoader(DS(), batch_size=40)
    mem = extract_features(net, dl, ["0", "2"], progress=False)
    disk = extract_features(net, dl, ["0", "2"], store=tmp_path, progress=False)
    torch.testing.assert_close(disk.feats["0"], mem.feats["0"])
    assert os.path.getsize(os.path.join(tmp_path, "0.f32")) == 150 * 32 * 4
    # a loader without a dataset length works too (rows are appended)
    gen = (b for b in dl)
    disk2 = extract_features(net, gen, ["2"], store=os.path.join(tmp_path, "g"), progress=False)
    torch.testing.assert_close(disk2.feats["2"], mem.feats["2"])
    # the probe and kNN read stored features batch by batch and give the same answers
    assert mem.labels is not None
    a = linear_probe(
        {k: v[:100] for k, v in mem.feats.items()}, mem.labels[:100],
        {k: v[100:] for k, v in mem.feats.items()}, mem.labels[100:], epochs=5,
    )  # fmt: skip
    r_mem = layer_sweep(
        net, dl, layers=["0", "2"], probe_kwargs={"epochs": 5}, n_boot=50, progress=False
    )
    r_disk = layer_sweep(
        net,
        dl,
        layers=["0", "2"],
        probe_kwargs={"epochs": 5},
        n_boot=50,
        store=tmp_path,
        progress=False,
    )
    assert r_disk.metrics == r_mem.metrics
    assert r_disk.bounds == r_mem.bounds
    assert os.path.exists(os.path.join(tmp_path, "train", "0.f32"))
    assert 0 <= a["0"] <= 1


def test_linear_probe_never_pads_to_the_widest_layer() -> None:
    """Memory follows the data: no tensor as large as L x N x Dmax (0.1 built one)."""
    n = 2000
    y = torch.randint(0, 4, (n,))
    feats = {f"narrow{i}": torch.randn(n, 8) for i in range(5)}
    feats["wide"] = torch.randn(n, 512)
    biggest = 0

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            nonlocal biggest
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    biggest = max(biggest, t.numel())
            return out

    with Sizes():
        linear_probe(
            {k: v[:1500] for k, v in feats.items()}, y[:1500],
            {k: v[1500:] for k, v in feats.items()}, y[1500:], epochs=1,
        )  # fmt: skip
    padded = len(feats) * 1500 * 512
    assert biggest <= 1500 * 512, (biggest, padded)  # never more than one copy of the widest layer


def test_grouped_training_equals_one_layer_at_a_time() -> None:
    """Layers trained together (two widths, grouped) equal each layer trained alone."""
    n, c = 300, 3
    x8a, y = blobs(n, 8, c, seed=1)
    x8b, _ = blobs(n, 8, c, seed=2)
    x5 = x8a[:, :5] + 0.1 * torch.randn(n, 5)
    rows = [Rows(x8a), Rows(x5), Rows(x8b)]
    dev = torch.device("cpu")
    stats = [_stats(r, dev) for r in rows]
    lrs = torch.tensor([[1e-2, 1e-1]] * 3)
    wds = torch.tensor([[0.0, 1e-3]] * 3)
    together = _train(rows, y, stats, c, lrs, wds, 3, 64, 0, dev)
    for i, r in enumerate(rows):
        alone = _train([r], y, [stats[i]], c, lrs[i : i + 1], wds[i : i + 1], 3, 64, 0, dev)[0]
        torch.testing.assert_close(together[i][0], alone[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(together[i][1], alone[1], rtol=1e-5, atol=1e-6)


def test_train_matches_a_float64_adam_reference() -> None:
    n, d, c = 200, 6, 3
    x, y = blobs(n, d, c)
    r = Rows(x)
    st = _stats(r, torch.device("cpu"))
    w, b = _train(
        [r],
        y,
        [st],
        c,
        torch.tensor([[0.05]]),
        torch.tensor([[0.01]]),
        2,
        50,
        3,
        torch.device("cpu"),
    )[0]
    # reference: nn.Linear-style softmax regression with a hand-written Adam, same batches
    xs = ((x - st.mean) / st.std).double()
    W = torch.zeros(d, c, dtype=torch.float64, requires_grad=True)
    B = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    m = [torch.zeros_like(W), torch.zeros_like(B)]
    v = [torch.zeros_like(W), torch.zeros_like(B)]
    gen = torch.Generator().manual_seed(3)
    steps, step = 2 * math.ceil(n / 50), 0
    for _ in range(2):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, 50):
            idx = perm[s : s + 50]
            loss = (
                torch.nn.functional.cross_entropy(xs[idx] @ W + B, y[idx])
                + 0.005 * W.square().sum()
            )
            gW, gB = torch.autograd.grad(loss, [W, B])
            step += 1
            lr = 0.05 * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps))
            with torch.no_grad():
                for j, (p, g) in enumerate(((W, gW), (B, gB))):
                    m[j] = 0.9 * m[j] + 0.1 * g
                    v[j] = 0.999 * v[j] + 0.001 * g * g
                    p -= lr * (m[j] / (1 - 0.9**step)) / ((v[j] / (1 - 0.999**step)).sqrt() + 1e-8)
    torch.testing.assert_close(w[:, 0].double(), W.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b[0].double(), B.detach(), rtol=1e-4, atol=1e-5)


def test_knn_streaming_equals_dense_and_leave_one_out() -> None:
    x, y = blobs(500, 5, 4, sep=1.0)
    _, yc, _ = encode_labels(y)
    dense = knn_predict(Rows(x[:400]), yc[:400], Rows(x[400:]), num_classes=4, k=7)
    streamed = knn_predict(
        Rows(x[:400]), yc[:400], Rows(x[400:]), num_classes=4, k=7, train_chunk=33, chunk=17
    )
    assert torch.equal(dense, streamed)
    # leave-one-out: the sample itself is never its own neighbour
    loo = knn_predict(Rows(x), yc, Rows(x), num_classes=4, k=1, exclude_self=True)
    sim = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(x, dim=1).T
    sim.fill_diagonal_(-math.inf)
    assert torch.equal(loo, yc[sim.argmax(1)])
    acc = knn_accuracy(x[:400], y[:400], x[400:], y[400:], k=7)
    assert acc == float((dense == yc[400:]).double().mean())


# ----------------------------------------------------------------------------- label-free measures


def orthogonal(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """``(n, d)`` centred orthonormal columns."""
    a = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    q, _ = torch.linalg.qr(a - a.mean(0))
    return q


def test_spectral_measures_known_answers() -> None:
    q = orthogonal(300, 40)
    k = torch.arange(1, 41, dtype=torch.float64)
    x = q * k.pow(-1.3).sqrt()  # covariance eigenvalues exactly k^-1.3 (up to 1/(n-1))
    assert alpha_req(x) == pytest.approx(1.3, abs=1e-6)
    assert alpha_req(x, fit_range=(5, 30)) == pytest.approx(1.3, abs=1e-6)
    lam = k.pow(-1.3)
    assert nesum(x) == pytest.approx(float(lam.sum() / lam[0]), rel=1e-6)
    iso = orthogonal(200, 10)
    assert nesum(iso) == pytest.approx(10.0, rel=1e-6)
    assert unevenness(iso) == pytest.approx(0.0, abs=1e-6)
    assert unevenness(x) == pytest.approx(feature_spectrum(x).unevenness)
    # RankMe uses the uncentred singular values, which orthonormal columns make exact
    sv = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    p = sv / sv.sum() + 1e-7
    assert rankme(orthogonal(64, 4) * sv) == pytest.approx(
        float(torch.exp(-(p * p.log()).sum())), rel=1e-6
    )
    # wide features (D > N) go through the N x N Gram matrix and agree with the SVD
    wide = torch.randn(20, 300, dtype=torch.float64)
    s = torch.linalg.svdvals(wide)
    p = s / s.sum() + 1e-7
    assert rankme(wide) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)
    with pytest.raises(HeadkitError, match="constant"):
        nesum(torch.ones(10, 3))


def test_lidar_known_answer() -> None:
    # within-sample scatter exactly s^2/4 I, between-sample covariance diag(a)/n: LiDAR is the
    # effective rank of a / (s^2/4 + delta)
    d, n, s2 = 4, 8, 0.25
    e = torch.cat([torch.eye(d), torch.eye(d)]).double() * s2**0.5
    mu = (
        torch.cat([torch.eye(d), -torch.eye(d)]).double()
        * torch.tensor([3.0, 2.0, 1.0, 0.5]).double()
    )
    views = torch.stack([mu + e, mu - e], 1)  # (n, 2, d)
    a = (mu.T @ mu).diagonal() / n
    lam = a / (s2 * 2 * 2 / (n * 2) + 1e-4)
    p = lam / lam.sum() + 1e-7
    assert lidar(views) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-9)
    assert lidar([views[:, 0], views[:, 1]]) == pytest.approx(lidar(views))
    with pytest.raises(HeadkitError, match="Q >= 2"):
        lidar(views[:, :1])


def test_registry_is_the_one_source() -> None:
    assert list(METRICS) == ["linear", "knn", "rankme", "unevenness", "alpha_req", "nesum", "lidar"]
    for m in METRICS.values():
        assert m.direction in ("higher", "lower", "target") and m.display and m.description
    assert METRICS["linear"].format(0.981) == "98.1"
    assert METRICS["alpha_req"].key(1.1) > METRICS["alpha_req"].key(0.5)
    assert METRICS["unevenness"].key(0.1) > METRICS["unevenness"].key(0.3)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
    x, y = blobs(120, 16)
    r = layer_sweep(
        net,
        [(x, y)],
        metrics=("spectrum", "alpha_req", "nesum", "rankme"),
        n_boot=0,
        progress=False,
    )
    assert list(r.metrics) == ["unevenness", "alpha_req", "nesum", "rankme"]
    feats = extract_features(net, [(x, y)], ["0"], progress=False).feats["0"]
    assert r.results("nesum")["0"] == pytest.approx(nesum(feats), rel=1e-9)
    assert r.results("alpha_req")["0"] == pytest.approx(alpha_req(feats), rel=1e-9)
    with pytest.raises(HeadkitError, match="positive pairs"):
        layer_sweep(net, [(x, y)], metrics=("lidar",), progress=False)


def test_online_probe_never_syncs_with_the_host() -> None:
    """On "meta" tensors any .item()/float()/bool() per step would raise: forward runs there."""
    from headkit.probe import OnlineLayerProbe

    probe = OnlineLayerProbe({"a": 8, "b": 4}, num_classes=3).to("meta")
    feats = {"a": torch.randn(5, 8, 2, 2, device="meta"), "b": torch.randn(5, 3, 4, device="meta")}
    labels = torch.randint(0, 3, (5,), device="meta")
    for _ in range(3):
        loss = probe(feats, labels)
        loss.backward()
    assert loss.device.type == "meta"
    assert probe._correct is not None and probe._correct.device.type == "meta"
    assert "_correct" not in dict(probe.named_buffers()) and not list(probe.buffers())
    cpu = OnlineLayerProbe({"a": 8}, num_classes=3)
    cpu({"a": torch.randn(4, 8)}, torch.arange(4) % 3)
    assert cpu.to(torch.float64)._correct is not None  # counts follow .to() and stay int64
    assert cpu._correct.dtype == torch.int64 and cpu.compute()["a"] >= 0


def _rss_file_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    raise RuntimeError("no RssFile")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux /proc")
def test_random_rows_of_a_file_do_not_keep_the_file_mapped(tmp_path: Path) -> None:
    # a probe reads 256 random rows per step; each read fault maps its 64 KiB fault-around
    # window, so counting only the rows' own bytes left a whole 64 MiB file mapped
    n, d = 32768, 512
    path = str(tmp_path / "feats.f32")
    torch.randn(n, d).numpy().tofile(path)
    with open(path, "rb") as fh:
        fh.read()  # in the page cache, where fault-around applies
    r = Rows(path, (n, d))
    g = torch.Generator().manual_seed(0)
    out = torch.empty(256, d)
    r.take(torch.arange(256), out=out)  # the kernels' own code pages are mapped in here
    r.release()
    before = _rss_file_kib()
    peak = before
    for _ in range(60):
        r.take(torch.randint(0, n, (256,), generator=g), out=out)
        peak = max(peak, _rss_file_kib())
    r.release()
    assert (peak - before) < 48 * 1024, f"{(peak - before) / 1024:.0f} MiB of a 64 MiB file mapped"
