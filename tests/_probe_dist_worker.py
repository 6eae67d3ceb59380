"""Workers of the 2-process gloo tests of headkit.probe (importable, so spawn can pickle them)."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

N_TRAIN, N_TEST = 37, 23  # not multiples of 2: the sampler pads


def make_data() -> tuple[TensorDataset, TensorDataset, nn.Module]:
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 3, (N_TRAIN + N_TEST,), generator=g)
    x = torch.randn(3, 6, generator=g)[y] * 2 + torch.randn(N_TRAIN + N_TEST, 6, generator=g)
    torch.manual_seed(11)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5))
    train = TensorDataset(x[:N_TRAIN], y[:N_TRAIN])
    test = TensorDataset(x[N_TRAIN:], y[N_TRAIN:])
    return train, test, net


def probe_data(steps: int = 4, b: int = 6) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Global batches (2 ranks x b samples) of features and labels for the online probe."""
    g = torch.Generator().manual_seed(21)
    xs = [torch.randn(2 * b, 5, generator=g, dtype=torch.float64) for _ in range(steps)]
    ys = [torch.randint(0, 3, (2 * b,), generator=g) for _ in range(steps)]
    return xs, ys


def run(
    fn: Callable[[int, int, str], None], rank: int, world: int, init_file: str, out_dir: str
) -> None:
    """Run one rank; exit through ``os._exit`` so gloo's thread teardown cannot abort the process."""
    code = 1
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
        )
        try:
            fn(rank, world, out_dir)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def sweep_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    run(_sweep, rank, world, init_file, out_dir)


def _sweep(rank: int, world: int, out_dir: str) -> None:
    from headkit.probe import extract_features, layer_sweep, recommend_layer

    train, test, net = make_data()
    tr_loader = DataLoader(
        train, batch_size=4, sampler=DistributedSampler(train, shuffle=True, seed=3)
    )
    te_loader = DataLoader(test, batch_size=5, sampler=DistributedSampler(test, shuffle=False))
    feats = extract_features(net, tr_loader, ["0", "2"], progress=False)
    # other sharding (no DistributedSampler): each rank's own list of batches, in rank order
    x, y = train.tensors
    lo, hi = rank * 20, min(N_TRAIN, rank * 20 + 20)
    own = [(x[i : min(hi, i + 3)], y[i : min(hi, i + 3)]) for i in range(lo, hi, 3)]
    listed = extract_features(net, own, ["2"], progress=False)
    report = layer_sweep(
        net, tr_loader, te_loader, layers=["0", "2"], metrics=("knn", "rankme", "linear"),
        probe_kwargs={"epochs": 3}, n_boot=100, knn_k=5, progress=False,
    )  # fmt: skip
    held_out = layer_sweep(
        net,
        tr_loader,
        layers=["0", "2"],
        metrics=("knn", "rankme"),
        n_boot=50,
        knn_k=3,
        progress=False,
    )
    choice = recommend_layer(net, tr_loader, layers=["0", "2"], n_boot=20, progress=False)
    store = os.path.join(out_dir, "store")
    stored = extract_features(net, tr_loader, ["0", "2"], store=store, progress=False)
    same: dict[str, Any] = {}
    try:  # every rank extracting the whole data set is refused
        extract_features(net, DataLoader(train, batch_size=8), ["2"], progress=False)
    except ValueError as err:
        same["error"] = str(err)
    torch.save(
        {
            "feats": feats.feats,
            "labels": feats.labels,
            "listed": listed.feats["2"],
            "listed_labels": listed.labels,
            "report": report.to_json(),
            "held_out": held_out.to_json(),
            "choice": (choice.layer, choice.scores),
            "stored": {k: v.clone() for k, v in stored.feats.items()},
            "same": same,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


def online_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    run(_online, rank, world, init_file, out_dir)


def _online(rank: int, world: int, out_dir: str) -> None:
    from headkit.probe import OnlineLayerProbe

    torch.manual_seed(0)
    probe = OnlineLayerProbe({"f": 5}, num_classes=3).double()
    ddp = DDP(probe)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    xs, ys = probe_data()
    b = xs[0].shape[0] // world
    for x, y in zip(xs, ys, strict=True):
        sl = slice(rank * b, (rank + 1) * b)
        loss = ddp({"f": x[sl]}, y[sl])
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = probe.compute()
    torch.save(
        {"acc": acc, "weight": probe.probes["f"].weight.detach()},
        os.path.join(out_dir, f"online{rank}.pt"),
    )


def callback_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    run(_callback, rank, world, init_file, out_dir)


class _Module(nn.Module):
    """Stands in for a LightningModule: the callback only taps it and calls ``log``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.enc = nn.Linear(5, 4)
        self.logged: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)

    def log(self, name: str, value: float, **kwargs: Any) -> None:
        self.logged[name] = value


def _callback(rank: int, world: int, out_dir: str) -> None:
    from headkit.integrations.lightning import LayerProbeCallback

    module = _Module()
    torch.manual_seed(100 + rank)  # each rank's random probe init differs: rank 0's must win
    cb = LayerProbeCallback(["enc"], num_classes=3, lr=0.1)
    cb.on_fit_start(None, module)
    xs, ys = probe_data()
    b = xs[0].shape[0] // world
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        sl = slice(rank * b, (rank + 1) * b)
        module(x[sl].float())
        cb.on_train_batch_end(None, module, None, (x[sl].float(), y[sl]), i)
    assert cb.probe is not None
    weight = cb.probe.probes["enc"].weight.detach().clone()
    cb.on_train_epoch_end(None, module)
    cb.on_fit_end(None, module)
    torch.save(
        {"history": cb.history, "weight": weight, "logged": module.logged},
        os.path.join(out_dir, f"callback{rank}.pt"),
    )
