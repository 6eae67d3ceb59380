"""`layer_sweep`: which layer should I use? Every layer probed from one pass over the data."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from .._dist import dist_state
from .._errors import HeadkitError
from .._layers.model import LayerSpec
from .._layers.pool import Pool
from ._checks import check_layers, knn_k_for
from ._extract import Extracted, ExtractOptions, extract
from ._linear import ProbeSettings, fit_linear
from ._metrics import encode_labels, knn_predict, moments
from ._registry import ALIASES, METRICS, SPECTRAL, get_metric, spectrum_values
from ._report import SweepReport
from ._rows import Rows
from ._stats import paired_bootstrap
from ._views import merge, view_stats

__all__ = ["DEFAULT_METRICS", "layer_sweep"]

DEFAULT_METRICS = ("linear", "knn", "rankme", "unevenness")
_PROBE_ARGS = {f.name for f in fields(ProbeSettings)}


def _probe_kwargs(
    probe_kwargs: Mapping[str, Any] | None, seed: int, device: torch.device
) -> ProbeSettings:
    kw = dict(probe_kwargs or {})
    unknown = sorted(set(kw) - _PROBE_ARGS)
    if unknown:
        raise HeadkitError(
            f"probe_kwargs has unknown arguments {unknown}; linear_probe takes {sorted(_PROBE_ARGS)}"
        )
    return ProbeSettings(**{"seed": seed, "device": device, **kw})


def _known(name: object) -> bool:
    return isinstance(name, str) and (name in METRICS or name in ALIASES)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def layer_sweep(
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any] | None = None,
    layers: Sequence[LayerSpec] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    pool: Pool = "auto",
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    store: str | os.PathLike[str] | None = None,
    n_boot: int = 1000,
    roles: Mapping[LayerSpec, str] | None = None,
    probe_kwargs: Mapping[str, Any] | None = None,
    knn_k: int | None = None,
    seed: int = 0,
    progress: bool = True,
    amp: bool | torch.dtype = False,
    views: Iterable[Any] | None = None,
    test_fraction: float = 0.2,
    distributed: bool | None = None,
) -> SweepReport:
    """Which layer should I use? Probe every layer of ``model`` from one pass over the data.

    Extracts the features of all ``layers`` in one pass per loader (`extract_features`), then
    computes per layer the metrics of the registry (`METRICS`): ``linear`` (`linear_probe`) and
    ``knn`` (`knn_accuracy`) need labels and get a 95% interval (Wilson score: never of width 0,
    also at 0% and 100%) and the set of layers tied with the best, from a bootstrap over the
    test samples paired across layers (the same resamples for every layer); the label-free ``rankme``, ``unevenness`` (alias ``spectrum``),
    ``alpha_req`` and ``nesum`` are computed on every sample of ``train_loader``; ``lidar`` on the
    augmented views of ``views``. Without a ``test_loader`` a seeded ``test_fraction`` of the
    training samples is held out for the labelled metrics. Layers may include taps inside a
    projection head through a model that wraps backbone and head (mark them with ``roles``).

    ``device`` is where the model and the probes run (see `extract_features`: the model is moved
    there for the sweep and back afterwards); features stay float32 on the CPU, or on disk with
    ``store``, and are read a batch at a time, so memory is bounded by a batch and the probes.
    Under ``torch.distributed`` each rank passes its shard and every rank returns the same report,
    equal to one process on the whole data (see `extract_features` for samplers).

    Args:
        model: the encoder (any model `LayerTap` takes).
        train_loader: yields ``(inputs, labels)`` (or inputs alone: label-free metrics only).
        test_loader: optional held-out data of the same form.
        layers: layer specs as for `LayerTap`; default: the model's default layers (every timm
            index for timm models, the blocks of Hugging Face / open_clip encoders, the top-level
            children otherwise).
        metrics: names from `METRICS` (default ``linear``, ``knn``, ``rankme``, ``unevenness``).
        pool: pooling before flattening, as for `LayerTap`.
        device: where the model and the probes run (default: where the model is).
        max_samples: cap on samples per loader.
        store: folder for memory-mapped features (``train/`` and ``test/`` inside it).
        n_boot: bootstrap resamples for the intervals and ties (0 turns them off).
        roles: labels per layer shown in the table, e.g. ``{"head": "post-projection"}``.
        probe_kwargs: arguments of `linear_probe` (``epochs``, ``lrs``, ``seed``, ...).
        knn_k: neighbours of the kNN metric (more than the training samples is refused); None:
            20, or every training sample when there are fewer (``info["knn"]["k"]`` says).
        seed: seed of the held-out split, the probes (unless ``probe_kwargs`` sets one) and the
            bootstrap.
        progress: progress bars (rank 0 only).
        amp: bfloat16 autocast for the extraction (or the dtype given).
        views: for ``lidar``: a loader of several augmented views of each sample,
            ``([view_1, view_2, ...], ...)`` or ``{"views": [...]}`` batches.
        test_fraction: share held out when there is no ``test_loader``.
        distributed: as for `extract_features` (None: automatic).

    Returns:
        `SweepReport` (``info`` records ``n_train``, ``n_test``, ``split``, ``n_unlabelled``,
        ``pool``, ``device``, ``amp``, ``seed``, ``n_boot``, ``time_s`` and the probe settings).

    Raises:
        HeadkitError: unknown metric, labelled metrics without labels, ``lidar`` without views,
            unknown ``probe_kwargs``, empty loader, degenerate data of any layer (non-finite or
            constant features, one class, fewer samples than classes or than ``knn_k``: the one
            policy of ``docs/probe.md``, "Degenerate data"), before any metric is computed.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from headkit.probe import layer_sweep
        >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        >>> data = [(torch.randn(32, 4), torch.randint(0, 2, (32,))) for _ in range(4)]
        >>> report = layer_sweep(net, data, metrics=("knn", "rankme"), progress=False)
        >>> report.layers
        ['0', '2']
        >>> sorted(report.intervals("knn")) == report.layers
        True
    """
    t0 = time.perf_counter()
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if not _known(m)]
    if unknown:
        raise HeadkitError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    names = list(dict.fromkeys(get_metric(m).name for m in metrics))
    if not names:
        raise HeadkitError("metrics must name at least one metric")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise HeadkitError(f"n_boot must be an int >= 0 (0: no intervals), got {n_boot!r}")
    if not 0 < test_fraction < 1:
        raise HeadkitError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if knn_k is not None and knn_k < 1:
        raise HeadkitError(f"knn_k must be >= 1, got {knn_k}")
    labelled = [m for m in names if get_metric(m).needs_labels]
    if "lidar" in names and views is None:
        raise HeadkitError(
            "metric 'lidar' needs positive pairs: pass views= a loader of several augmented "
            "views of each sample"
        )
    d = dist_state(distributed)
    folder = None if store is None else os.fspath(store)
    common = ExtractOptions(pool, device, max_samples, None, progress, amp, distributed)
    tr = extract(
        model,
        train_loader,
        layers,
        replace(common, store=None if folder is None else os.path.join(folder, "train")),
        desc="extract train",
        where="layer_sweep",
    )
    keys = list(tr.rows)
    check_layers(tr.rows)  # the one policy of degenerate data (docs/probe.md), every metric
    dev = torch.device(tr.info["device"])  # where the model ran: the probes run there too
    info: dict[str, Any] = {
        "n_unlabelled": tr.n,
        "pool": tr.info["pool"],
        "device": str(dev),
        "amp": tr.info["amp"],
        "seed": seed,
        "metrics": names,
    }
    if tr.info.get("distributed"):
        info["distributed"] = tr.info["distributed"]
    if folder is not None:
        info["store"] = folder
    out: dict[str, list[float | None]] = {}
    bounds: dict[str, list[list[float] | None]] = {}
    ties: dict[str, list[LayerSpec]] = {}
    if labelled:
        _labelled(
            model, tr, test_loader, keys, labelled, folder, common, dev, seed, test_fraction,
            probe_kwargs, knn_k, n_boot, out, bounds, ties, info,
        )  # fmt: skip
    spectra: list[list[float]] = []
    spectral = [m for m in names if m in SPECTRAL]
    if spectral:
        for m in spectral:
            out[m] = []
        for k in keys:
            unc, cen = moments(tr.rows[k], dev).eigenvalues()
            for m in spectral:
                out[m].append(SPECTRAL[m](unc, cen))
            if "unevenness" in spectral:
                spectra.append(spectrum_values(unc, cen))
    if "lidar" in names:
        assert views is not None
        vs = view_stats(model, views, keys, common, d=d)
        out["lidar"] = [merge(vs[k]).value(layer=k) for k in keys]
        info["n_views_samples"] = next(iter(vs.values()))[0].n
    info["n_boot"] = n_boot if labelled else 0
    info["time_s"] = round(time.perf_counter() - t0, 2)
    report = SweepReport(
        layers=keys,
        metrics={m: out[m] for m in names},
        roles={str(k): v for k, v in (roles or {}).items()},
        dims=[tr.rows[k].d for k in keys],
        spectra=spectra,
        info=_jsonable(info),
        bounds=bounds,
        ties=ties,
    )
    if d.on:
        report = d.broadcast_object(report)
    return report


def _labelled(
    model: nn.Module,
    tr: Extracted,
    test_loader: Iterable[Any] | None,
    keys: list[LayerSpec],
    labelled: list[str],
    folder: str | None,
    common: ExtractOptions,
    dev: torch.device,
    seed: int,
    test_fraction: float,
    probe_kwargs: Mapping[str, Any] | None,
    knn_k: int | None,
    n_boot: int,
    out: dict[str, list[float | None]],
    bounds: dict[str, list[list[float] | None]],
    ties: dict[str, list[LayerSpec]],
    info: dict[str, Any],
) -> None:
    """The labelled metrics, their intervals and ties (fills ``out``, ``bounds``, ``ties``)."""
    if tr.labels is None:
        raise HeadkitError(
            f"metrics {labelled} need labels, but the train loader yields inputs only"
        )
    kw = _probe_kwargs(probe_kwargs, seed, dev)
    train_rows: dict[LayerSpec, Rows]
    test_rows: dict[LayerSpec, Rows]
    if test_loader is not None:
        te = extract(
            model,
            test_loader,
            keys,
            replace(common, store=None if folder is None else os.path.join(folder, "test")),
            desc="extract test",
            where="layer_sweep",
        )
        if te.labels is None:
            raise HeadkitError(
                f"metrics {labelled} need labels, but the test loader yields inputs only"
            )
        train_rows, test_rows = tr.rows, te.rows
        ytr, yte = tr.labels, te.labels
        info["split"] = "test loader"
    else:
        n = tr.n
        n_te = max(1, round(n * test_fraction))
        if n - n_te < 2:
            raise HeadkitError(
                f"{n} samples are too few to hold out a test split; pass test_loader"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        te_idx, tr_idx = perm[:n_te].sort().values, perm[n_te:].sort().values
        train_rows = {k: r.select(tr_idx) for k, r in tr.rows.items()}
        test_rows = {k: r.select(te_idx) for k, r in tr.rows.items()}
        ytr, yte = tr.labels[tr_idx], tr.labels[te_idx]
        info["split"] = f"held out {n_te} of the train loader's {n} samples (seed {seed})"
    check_layers(train_rows, ytr, test_rows, yte, k=knn_k if "knn" in labelled else None)
    info["n_train"] = int(ytr.shape[0])
    info["n_test"] = int(yte.shape[0])
    correct: dict[str, Tensor] = {}
    if "linear" in labelled:
        res = fit_linear(train_rows, ytr, test_rows, yte, kw)
        out["linear"] = [res[k] for k in keys]
        correct["linear"] = torch.stack([res.correct[k] for k in keys])
        info["linear"] = {
            "seed": kw.seed,
            "solver": kw.solver,
            "settings": {str(k): v for k, v in res.settings.items()},
            **{
                a: getattr(kw, a)
                for a in ("epochs", "batch_size", "lrs", "weight_decays")
                if a in (probe_kwargs or {})
            },
        }
    if "knn" in labelled:
        knn_k = knn_k_for(knn_k, int(ytr.shape[0]))
        classes, ytr_c, (yte_c,) = encode_labels(ytr, yte)
        rows = []
        for k in keys:
            pred = knn_predict(
                train_rows[k], ytr_c, test_rows[k], num_classes=classes.numel(), k=knn_k, device=dev
            )
            rows.append((pred == yte_c.to(pred.device)).cpu())
        correct["knn"] = torch.stack(rows)
        out["knn"] = [float(r.double().mean()) for r in rows]
        info["knn"] = {"k": knn_k, "temperature": 0.07}
    for m, c in correct.items():
        if n_boot > 0:
            boot = paired_bootstrap(c, n_boot, seed)
            iv = boot.intervals()
            bounds[m] = [[float(iv[i, 0]), float(iv[i, 1])] for i in range(len(keys))]
            ties[m] = [keys[i] for i in boot.tied(boot.point)]
    if n_boot > 0:
        info["bootstrap"] = {"n_boot": n_boot, "seed": seed, "level": 0.95, "paired": True}
        info["intervals"] = "95% Wilson score interval of each accuracy; ties: paired bootstrap"
