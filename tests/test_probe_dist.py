"""2-process gloo tests: distributed sweeps equal one process on the whole data."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from headkit import SweepReport
from headkit.probe import OnlineLayerProbe, extract_features, layer_sweep, recommend_layer

from ._probe_dist_worker import (
    N_TRAIN,
    callback_worker,
    make_data,
    online_worker,
    probe_data,
    sweep_worker,
)

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed not built"
)


def spawn(fn: object, tmp_path: os.PathLike[str], name: str) -> list[dict[str, object]]:
    init = os.path.join(tmp_path, "init")
    mp.spawn(fn, args=(2, init, str(tmp_path)), nprocs=2, join=True)  # type: ignore[arg-type]
    return [
        torch.load(os.path.join(tmp_path, f"{name}{r}.pt"), weights_only=False) for r in range(2)
    ]


def test_distributed_sweep_equals_one_process(tmp_path: os.PathLike[str]) -> None:
    res = spawn(sweep_worker, tmp_path, "rank")
    train, test, net = make_data()
    one = extract_features(net, DataLoader(train, batch_size=4), ["0", "2"], progress=False)
    _, y = train.tensors
    for r in res:
        # every sample of every rank, once, in data-set order, with its label
        assert r["labels"] is not None and torch.equal(r["labels"], y)  # type: ignore[arg-type]
        for k in ("0", "2"):
            torch.testing.assert_close(r["feats"][k], one.feats[k])  # type: ignore[index]
            torch.testing.assert_close(r["stored"][k], one.feats[k])  # type: ignore[index]
        # other sharding: the ranks' own batches concatenated in rank order
        torch.testing.assert_close(r["listed"], one.feats["2"][:N_TRAIN])  # type: ignore[arg-type]
        assert torch.equal(r["listed_labels"], y)  # type: ignore[arg-type]
        assert "same" in r["same"]["error"]  # type: ignore[index]
    # layer_sweep: every rank reports what one process on the whole data reports
    ref = layer_sweep(
        net, DataLoader(train, batch_size=4), DataLoader(test, batch_size=5), layers=["0", "2"],
        metrics=("knn", "rankme", "linear"), probe_kwargs={"epochs": 3}, n_boot=100, knn_k=5,
        progress=False,
    )  # fmt: skip
    ref_held = layer_sweep(
        net, DataLoader(train, batch_size=4), layers=["0", "2"], metrics=("knn", "rankme"),
        n_boot=50, knn_k=3, progress=False,
    )  # fmt: skip
    for r in res:
        rep = SweepReport.from_json(r["report"])  # type: ignore[arg-type]
        assert rep.metrics["knn"] == ref.metrics["knn"]
        # float32 features may differ in the last bit between processes (thread counts)
        assert rep.metrics["rankme"] == pytest.approx(ref.metrics["rankme"], rel=1e-6)
        assert rep.metrics["linear"] == ref.metrics["linear"]
        assert rep.bounds == ref.bounds and rep.ties == ref.ties
        assert rep.info["n_train"] == N_TRAIN and rep.info["n_test"] == 23
        assert rep.info["distributed"]["duplicates_dropped"] == 1  # 37 padded to 38
        held = SweepReport.from_json(r["held_out"])  # type: ignore[arg-type]
        assert held.metrics["knn"] == ref_held.metrics["knn"]
        assert held.metrics["rankme"] == pytest.approx(ref_held.metrics["rankme"], rel=1e-6)
        assert held.info["n_train"] + held.info["n_test"] == N_TRAIN
    choice = recommend_layer(
        net, DataLoader(train, batch_size=4), layers=["0", "2"], n_boot=20, progress=False
    )
    for r in res:
        layer, scores = r["choice"]  # type: ignore[misc]
        assert layer == choice.layer
        assert scores == pytest.approx(choice.scores, rel=1e-6)


def test_online_probe_in_ddp_counts_the_global_accuracy(tmp_path: os.PathLike[str]) -> None:
    res = spawn(online_worker, tmp_path, "online")
    # one process on the global batches: the same trajectory (DDP averages equal-size halves)
    torch.manual_seed(0)
    probe = OnlineLayerProbe({"f": 5}, num_classes=3).double()
    opt = torch.optim.SGD(probe.parameters(), lr=0.5)
    correct = total = 0
    for x, y in zip(*probe_data(), strict=True):
        with torch.no_grad():
            correct += int((probe.probes["f"](x).argmax(1) == y).sum())
            total += y.numel()
        loss = probe({"f": x}, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    truth = correct / total
    assert probe.compute()["f"] == truth
    for r in res:
        assert r["acc"]["f"] == truth  # type: ignore[index]
        torch.testing.assert_close(r["weight"], probe.probes["f"].weight.detach())  # type: ignore[arg-type]


def test_lightning_callback_under_ddp_counts_every_rank(tmp_path: os.PathLike[str]) -> None:
    pytest.importorskip("pytorch_lightning")
    from ._probe_dist_worker import _Module

    res = spawn(callback_worker, tmp_path, "callback")
    module = _Module()
    torch.manual_seed(100)  # rank 0's probe init
    probe = OnlineLayerProbe({"enc": 4}, num_classes=3)
    opt = torch.optim.Adam(probe.parameters(), lr=0.1)
    correct = total = 0
    for x, y in zip(*probe_data(), strict=True):
        f = module(x.float()).detach()
        with torch.no_grad():
            correct += int((probe.probes["enc"](f).argmax(1) == y).sum())
            total += y.numel()
        loss = probe({"enc": f}, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for r in res:
        assert r["history"] == [{"enc": correct / total}]  # type: ignore[index]
        assert r["logged"] == {"probe/enc": correct / total}  # type: ignore[index]
        torch.testing.assert_close(
            r["weight"], probe.probes["enc"].weight.detach(), rtol=1e-5, atol=1e-6
        )  # type: ignore[arg-type]
