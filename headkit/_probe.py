"""Layer sweeps: feature extraction, batched linear probes, kNN, RankMe, spectra, reports."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ._errors import HeadkitError, fmt_shape
from ._model import LayerSpec, has_index_semantics, num_indices, unwrap
from ._pool import Pool
from ._tap import LayerTap

__all__ = [
    "Features",
    "OnlineLayerProbe",
    "ProbeResult",
    "Spectrum",
    "SweepReport",
    "extract_features",
    "feature_spectrum",
    "knn_accuracy",
    "layer_sweep",
    "linear_probe",
    "rankme",
]

FeatureDict = Mapping[LayerSpec, Tensor]


# ----------------------------------------------------------------------------- extraction


class Features(NamedTuple):
    """Per-layer features and labels from `extract_features`.

    A named tuple: ``feats, labels = extract_features(...)`` unpacks it.

    Attributes:
        feats: ``{layer: (N, D) float32 CPU tensor}`` (memory-mapped when a store was asked for).
        labels: ``(N,)`` int64 labels, or None when the loader yields inputs only.

    Example:
        >>> import torch
        >>> from headkit.probe import Features
        >>> feats, labels = Features({"layer3": torch.zeros(4, 8)}, torch.arange(4))
        >>> feats["layer3"].shape
        torch.Size([4, 8])
    """

    feats: dict[LayerSpec, Tensor]
    labels: Tensor | None


def _split_batch(batch: Any) -> tuple[Any, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        x = batch.get("image", batch.get("input", batch.get("x")))
        y = batch.get("label", batch.get("labels", batch.get("y")))
        if x is None:
            raise HeadkitError(f"a dict batch needs an 'image'/'input'/'x' key, got {list(batch)}")
        return x, y
    if isinstance(batch, (tuple, list)) and batch:
        x = batch[0]
        y = batch[1] if len(batch) > 1 else None
        return x, y if isinstance(y, Tensor) or y is None else torch.as_tensor(y)
    raise HeadkitError(
        f"a loader batch must be an inputs tensor or an (inputs, labels) pair, got {type(batch).__name__}"
    )


def _move(x: Any, device: torch.device | None) -> Any:
    if device is None:
        return x
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (tuple, list)):
        return type(x)(_move(v, device) for v in x)
    return x


def _progress(it: Iterable[Any], total: int | None, desc: str, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    bar: Iterable[Any] = tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return bar


def extract_features(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Sequence[LayerSpec] | LayerSpec,
    *,
    pool: Pool = "avg",
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    store: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Features:
    """Features of several layers in one pass over the data.

    Runs the model in eval mode under ``torch.no_grad`` through a `LayerTap` (stopping after the
    deepest tap), pools, flattens to ``(N, D)`` and keeps float32 copies on the CPU. With
    ``store`` the features go to memory-mapped files in that folder (for data sets larger than
    memory; the loader's ``dataset`` must have a length).

    Args:
        model: the encoder (any model `LayerTap` takes).
        loader: yields ``(inputs, labels)`` pairs, or inputs alone.
        layers: layer specs, as for `LayerTap`.
        pool: pooling, as for `LayerTap` (default ``"avg"``); outputs are flattened after it.
        device: where to run the model (default: the device of its first parameter).
        max_samples: stop after this many samples.
        store: folder for memory-mapped ``<layer>.f32`` files, or None to keep them in memory.
        progress: show a tqdm progress bar.

    Returns:
        `Features` with ``feats`` ``{layer: (N, D)}`` and ``labels`` ``(N,)`` (or None).

    Raises:
        HeadkitError: an empty loader, or batches of inconsistent label presence.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from headkit.probe import extract_features
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> data = [(torch.randn(5, 4), torch.randint(0, 2, (5,))) for _ in range(3)]
        >>> feats, labels = extract_features(net, data, ["0", "2"], progress=False)
        >>> feats["0"].shape, labels.shape
        (torch.Size([15, 8]), torch.Size([15]))
    """
    if device is None:
        first = next(iter(model.parameters()), None)
        dev = first.device if first is not None else torch.device("cpu")
    else:
        dev = torch.device(device)
    if max_samples is not None and max_samples <= 0:
        raise HeadkitError(f"max_samples must be positive, got {max_samples}")
    tap = LayerTap(model, layers, pool=pool, detach=True, stop_early=True)
    was_training = model.training
    model.eval()
    chunks: dict[LayerSpec, list[Tensor]] = {k: [] for k in tap.keys}
    label_chunks: list[Tensor] = []
    mm: dict[LayerSpec, Tensor] = {}
    total = len(loader) if isinstance(loader, Sized) else None
    seen = 0
    has_labels: bool | None = None
    n_total: int | None = None
    if store is not None:
        ds = getattr(loader, "dataset", None)
        try:
            n_total = len(ds)  # type: ignore[arg-type]
        except TypeError as err:
            raise HeadkitError("store= needs a loader whose dataset has a length") from err
        if max_samples is not None:
            n_total = min(n_total, max_samples)
        os.makedirs(store, exist_ok=True)
    try:
        with torch.no_grad():
            for batch in _progress(loader, total, "extract features", progress):
                x, y = _split_batch(batch)
                if has_labels is None:
                    has_labels = y is not None
                elif has_labels != (y is not None):
                    raise HeadkitError("some batches have labels and some do not")
                out = tap(_move(x, dev))
                b = next(iter(out.values())).shape[0]
                take = b if max_samples is None else min(b, max_samples - seen)
                for k in tap.keys:
                    f = out[k][:take].reshape(take, -1).float().cpu()
                    if store is not None and n_total is not None:
                        if k not in mm:
                            mm[k] = _memmap(store, k, n_total, f.shape[1])
                        mm[k][seen : seen + take] = f
                    else:
                        chunks[k].append(f)
                if y is not None:
                    label_chunks.append(torch.as_tensor(y)[:take].reshape(-1).long().cpu())
                seen += take
                if max_samples is not None and seen >= max_samples:
                    break
    finally:
        tap.close()
        model.train(was_training)
    if seen == 0:
        raise HeadkitError("extract_features: the loader yielded no samples")
    if mm:
        feats = {k: v[:seen] for k, v in mm.items()}
    else:
        feats = {k: torch.cat(v) for k, v in chunks.items()}
    labels = torch.cat(label_chunks) if label_chunks else None
    return Features(feats, labels)


def _memmap(folder: str | os.PathLike[str], key: LayerSpec, n: int, d: int) -> Tensor:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(key))
    path = os.path.join(folder, f"{safe}.f32")
    with open(path, "wb") as fh:
        fh.truncate(n * d * 4)
    return torch.from_file(path, shared=True, size=n * d, dtype=torch.float32).view(n, d)


# ----------------------------------------------------------------------------- checks


def _as_dict(feats: FeatureDict | Tensor, name: str) -> dict[LayerSpec, Tensor]:
    if isinstance(feats, Tensor):
        return {"features": feats}
    if not isinstance(feats, Mapping) or not feats:
        raise HeadkitError(
            f"{name} must be a non-empty dict layer -> (N, D) tensor, got {type(feats).__name__}"
        )
    return dict(feats)


def _check_xy(x: Tensor, y: Tensor, layer: LayerSpec, split: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        got = fmt_shape(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise HeadkitError(f"{split} features of layer {layer!r} must be (N, D), got {got}")
    if not isinstance(y, Tensor) or y.dim() != 1:
        raise HeadkitError(f"{split} labels must be an (N,) integer tensor, got {y!r}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise HeadkitError(f"{split} labels must be integers, got dtype {y.dtype}")
    if x.shape[0] != y.shape[0]:
        raise HeadkitError(
            f"{split} features of layer {layer!r} have {x.shape[0]} rows but there are {y.shape[0]} labels"
        )
    if x.shape[0] == 0:
        raise HeadkitError(f"{split} features of layer {layer!r} are empty")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise HeadkitError(f"{split} features of layer {layer!r} have NaN/inf values in {bad} rows")


# ----------------------------------------------------------------------------- linear probes


class ProbeResult(dict[LayerSpec, float]):
    """Top-1 test accuracy per layer (a dict), plus the settings chosen on the held-out split.

    Attributes:
        settings: ``{layer: {"lr": ..., "weight_decay": ...}}``.
        val_accuracy: ``{layer: accuracy on the held-out split with the chosen setting}``.

    Example:
        >>> import torch
        >>> from headkit.probe import linear_probe
        >>> x = torch.randn(100, 4); y = (x[:, 0] > 0).long()
        >>> res = linear_probe({"a": x[:80]}, y[:80], {"a": x[80:]}, y[80:], epochs=5)
        >>> sorted(res.settings["a"])
        ['lr', 'weight_decay']
    """

    settings: dict[LayerSpec, dict[str, float]]
    val_accuracy: dict[LayerSpec, float]


def _standardize(train: Tensor, *others: Tensor) -> list[Tensor]:
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def _train_stacked(
    xs: list[Tensor],
    y: Tensor,
    num_classes: int,
    lrs: Tensor,
    wds: Tensor,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Train P probes on each of L layers at once with one batched matmul per step.

    ``lrs`` and ``wds`` are ``(P,)`` (the same grid for every layer) or ``(L, P)``. Features are
    zero-padded to the widest layer; padded weights get zero gradients and stay zero.
    Returns ``(W (L, Dmax, P, C), b (L, P, C))``.
    """
    n_layers = len(xs)
    lrs = lrs.expand(n_layers, -1) if lrs.dim() == 1 else lrs
    wds = wds.expand(n_layers, -1) if wds.dim() == 1 else wds
    p = lrs.shape[1]
    dmax = max(x.shape[1] for x in xs)
    n = y.shape[0]
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(n_layers, dmax, p * num_classes, device=device)
    b = torch.zeros(n_layers, 1, p * num_classes, device=device)
    state = [torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(b), torch.zeros_like(b)]
    lr_cols = lrs.to(device).repeat_interleave(num_classes, dim=1).view(n_layers, 1, -1)
    wd_cols = wds.to(device).repeat_interleave(num_classes, dim=1).view(n_layers, 1, -1)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    padded = torch.zeros(n_layers, n, dmax)
    for i, x in enumerate(xs):
        padded[i, :, : x.shape[1]] = x
    padded = padded.to(device)
    y = y.to(device)
    onehot = torch.eye(num_classes, device=device)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        xs_epoch, y_epoch = padded[:, perm], y[perm]  # one gather per epoch; batches are views
        for s in range(steps_per_epoch):
            xb = xs_epoch[:, s * batch_size : (s + 1) * batch_size]  # (L, B, Dmax)
            yb = y_epoch[s * batch_size : (s + 1) * batch_size]
            logits = torch.baddbmm(b, xb, w).view(n_layers, -1, p, num_classes)
            prob = logits.sub_(logits.amax(-1, keepdim=True)).exp_()
            prob.div_(prob.sum(-1, keepdim=True))
            prob.sub_(onehot[yb].view(1, -1, 1, num_classes))
            grad_logits = prob.view(n_layers, -1, p * num_classes).div_(yb.shape[0])
            gw = torch.bmm(xb.transpose(1, 2), grad_logits) + wd_cols * w
            gb = grad_logits.sum(1, keepdim=True)
            step += 1
            scale = 0.5 * (1 + math.cos(math.pi * (step - 1) / total))
            bc1, bc2 = 1 - beta1**step, 1 - beta2**step
            for param, grad, m, v in ((w, gw, state[0], state[1]), (b, gb, state[2], state[3])):
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                upd = (m / bc1) / ((v / bc2).sqrt_().add_(eps))
                param.sub_(upd * (lr_cols * scale))
    return w.view(n_layers, dmax, p, num_classes), b.view(n_layers, p, num_classes)


def _predict(
    xs: list[Tensor],
    w: Tensor,
    b: Tensor,
    device: torch.device,
    y: Tensor | None = None,
    chunk: int = 8192,
) -> tuple[Tensor, Tensor | None]:
    """Predicted classes ``(L, N, P)`` and, given labels, the mean cross-entropy ``(L, P)``."""
    outs, losses = [], []
    for i, x in enumerate(xs):
        d = x.shape[1]
        wi = w[i, :d].reshape(d, -1)
        preds = []
        loss = torch.zeros(w.shape[2])
        for s in range(0, x.shape[0], chunk):
            logits = (x[s : s + chunk].to(device) @ wi + b[i].reshape(1, -1)).view(
                -1, w.shape[2], w.shape[3]
            )
            preds.append(logits.argmax(-1).cpu())
            if y is not None:
                yy = y[s : s + chunk].to(device)
                lp = logits.log_softmax(-1)[torch.arange(yy.shape[0], device=device), :, yy]
                loss -= lp.sum(0).cpu()
        outs.append(torch.cat(preds))
        losses.append(loss / x.shape[0])
    return torch.stack(outs), (torch.stack(losses) if y is not None else None)


def linear_probe(
    train_feats: FeatureDict | Tensor,
    train_labels: Tensor,
    test_feats: FeatureDict | Tensor,
    test_labels: Tensor,
    *,
    lrs: Sequence[float] = (1e-3, 1e-2, 1e-1),
    weight_decays: Sequence[float] = (0.0, 1e-4, 1e-3, 1e-2),
    epochs: int = 100,
    batch_size: int = 256,
    val_fraction: float = 0.2,
    refit: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> ProbeResult:
    """Linear-probe top-1 accuracy of every layer, all layers and settings trained at once.

    Softmax-regression probes for every layer and every ``(lr, weight_decay)`` pair are stacked
    (features zero-padded to a common width) so one batched matrix multiply serves all of them
    per step; Adam with per-probe learning rates and a cosine schedule. Features are standardised
    per layer with training statistics. The best setting per layer is chosen on a held-out
    ``val_fraction`` of the training features (best accuracy; near-ties go to the lowest held-out
    loss), then, with ``refit``, the chosen probes are retrained on all training features (again
    all layers at once) and scored on the test features.

    Args:
        train_feats: ``{layer: (N, D)}`` (or one ``(N, D)`` tensor, keyed ``"features"``).
        train_labels: ``(N,)`` integer labels.
        test_feats: ``{layer: (M, D)}`` with the same layers.
        test_labels: ``(M,)`` integer labels.
        lrs: learning rates to try.
        weight_decays: L2 penalties (``wd / 2 * ||W||^2``) to try.
        epochs: passes over the training features.
        batch_size: mini-batch size.
        val_fraction: share of the training features held out to choose the setting.
        refit: retrain the chosen setting on all training features (all layers at once) before
            testing; False scores the chosen probe as trained on the fit split (about 2x faster).
        seed: seed of the split and the shuffling.
        device: where to train (default CPU).

    Returns:
        `ProbeResult`: ``{layer: accuracy in [0, 1]}`` with ``.settings`` and ``.val_accuracy``.

    Raises:
        HeadkitError: mismatched counts, empty or non-finite features, one class only, layers
            that differ between train and test.

    Example:
        >>> import torch
        >>> from headkit.probe import linear_probe
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(400, 5, generator=g); y = (x[:, 0] > 0).long()
        >>> acc = linear_probe({"a": x[:300]}, y[:300], {"a": x[300:]}, y[300:], epochs=50)
        >>> acc["a"] > 0.9
        True
    """
    tr = _as_dict(train_feats, "train_feats")
    te = _as_dict(test_feats, "test_feats")
    if list(tr) != list(te):
        raise HeadkitError(
            f"train and test features must have the same layers, got {list(tr)} and {list(te)}"
        )
    for k in tr:
        _check_xy(tr[k], train_labels, k, "train")
        _check_xy(te[k], test_labels, k, "test")
        if tr[k].shape[1] != te[k].shape[1]:
            raise HeadkitError(
                f"layer {k!r}: train features have D={tr[k].shape[1]}, test features D={te[k].shape[1]}"
            )
    classes = torch.unique(train_labels)
    if classes.numel() < 2:
        raise HeadkitError(
            f"linear_probe needs at least 2 classes in the training labels, got {classes.tolist()}"
        )
    if not 0 < val_fraction < 1:
        raise HeadkitError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not lrs or not weight_decays:
        raise HeadkitError("lrs and weight_decays must be non-empty")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    # labels -> 0..C-1
    lut = {int(c): i for i, c in enumerate(classes.tolist())}
    ytr = torch.tensor([lut[int(v)] for v in train_labels.tolist()])
    yte = torch.tensor([lut.get(int(v), -1) for v in test_labels.tolist()])
    c = classes.numel()
    grid = [(lr, wd) for lr in lrs for wd in weight_decays]
    lr_t = torch.tensor([g[0] for g in grid], dtype=torch.float32)
    wd_t = torch.tensor([g[1] for g in grid], dtype=torch.float32)
    keys = list(tr)
    n = ytr.shape[0]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, round(n * val_fraction))
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    if fit_idx.numel() == 0:
        raise HeadkitError(f"too few training samples ({n}) for a held-out split")
    fit_x, val_x = [], []
    for k in keys:
        a, v = _standardize(tr[k][fit_idx].float(), tr[k][val_idx].float())
        fit_x.append(a)
        val_x.append(v)
    w, b = _train_stacked(fit_x, ytr[fit_idx], c, lr_t, wd_t, epochs, batch_size, seed, dev)
    val_pred, val_loss = _predict(val_x, w, b, dev, ytr[val_idx])  # (L, Nv, P), (L, P)
    assert val_loss is not None
    val_acc = (val_pred == ytr[val_idx].view(1, -1, 1)).float().mean(1)  # (L, P)
    # best held-out accuracy; among settings within one sample of it, the lowest held-out loss
    near = val_acc >= val_acc.max(1, keepdim=True).values - 1.0 / val_idx.numel() - 1e-9
    best = torch.where(near, val_loss, torch.inf).argmin(1)
    full_x, test_x = [], []
    for k in keys:
        a, t = _standardize(tr[k].float(), te[k].float())
        full_x.append(a)
        test_x.append(t)
    if refit:
        # retrain the chosen settings on all training features: one probe per layer, all at once
        chosen_lr = lr_t[best].view(-1, 1)
        chosen_wd = wd_t[best].view(-1, 1)
        w2, b2 = _train_stacked(full_x, ytr, c, chosen_lr, chosen_wd, epochs, batch_size, seed, dev)
        test_pred = _predict(test_x, w2, b2, dev)[0][:, :, 0]
    else:
        # the chosen probes as trained on the fit split (standardised with its statistics)
        test_x = [_standardize(tr[k][fit_idx].float(), te[k].float())[1] for k in keys]
        pred, _ = _predict(test_x, w, b, dev)
        test_pred = pred.gather(2, best.view(-1, 1, 1).expand(-1, pred.shape[1], 1))[:, :, 0]
    acc = (test_pred == yte.view(1, -1)).float().mean(1)
    result = ProbeResult({k: float(acc[i]) for i, k in enumerate(keys)})
    result.settings = {
        k: {"lr": grid[int(best[i])][0], "weight_decay": grid[int(best[i])][1]}
        for i, k in enumerate(keys)
    }
    result.val_accuracy = {k: float(val_acc[i, best[i]]) for i, k in enumerate(keys)}
    return result


# ----------------------------------------------------------------------------- kNN and spectra


def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Weighted cosine kNN top-1 accuracy, as in DINO and lightly.

    Each test sample's ``k`` nearest training samples (cosine similarity ``s``) vote for their
    class with weight ``exp(s / temperature)``; the class with the largest total wins.

    Args:
        train_feats: ``(N, D)`` training features.
        train_labels: ``(N,)`` integer labels.
        test_feats: ``(M, D)`` test features.
        test_labels: ``(M,)`` integer labels.
        k: number of neighbours (capped at N).
        temperature: vote temperature, > 0.
        chunk: test rows per similarity block (memory O(chunk * N)).

    Returns:
        Accuracy in [0, 1].

    Raises:
        HeadkitError: mismatched shapes or counts, non-finite features, k or temperature <= 0.

    Example:
        >>> import torch
        >>> from headkit.probe import knn_accuracy
        >>> x = torch.randn(100, 8); y = (x[:, 0] > 0).long()
        >>> knn_accuracy(x, y, x, y, k=1)
        1.0
    """
    _check_xy(train_feats, train_labels, "features", "train")
    _check_xy(test_feats, test_labels, "features", "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise HeadkitError(
            f"train features have D={train_feats.shape[1]}, test features D={test_feats.shape[1]}"
        )
    if k <= 0 or temperature <= 0:
        raise HeadkitError(
            f"k and temperature must be positive, got k={k}, temperature={temperature}"
        )
    classes, ytr = torch.unique(train_labels, return_inverse=True)
    c = classes.numel()
    tr = F.normalize(train_feats.float(), dim=1)
    te = F.normalize(test_feats.float(), dim=1)
    kk = min(k, tr.shape[0])
    correct = 0
    for s in range(0, te.shape[0], chunk):
        sim = te[s : s + chunk] @ tr.T
        top, idx = sim.topk(kk, dim=1)
        weights = (top / temperature).exp()
        votes = torch.zeros(sim.shape[0], c)
        votes.scatter_add_(1, ytr[idx], weights)
        pred = classes[votes.argmax(1)]
        correct += int((pred == test_labels[s : s + chunk]).sum())
    return correct / te.shape[0]


def _check_feats(feats: Tensor, name: str) -> Tensor:
    if (
        not isinstance(feats, Tensor)
        or feats.dim() != 2
        or feats.shape[0] < 1
        or feats.shape[1] < 1
    ):
        got = fmt_shape(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
        raise HeadkitError(f"{name} needs an (N, D) tensor with N, D >= 1, got {got}")
    if not torch.isfinite(feats).all():
        raise HeadkitError(f"{name}: the features have NaN/inf values")
    return feats.double()


def rankme(feats: Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank (Garrido et al. 2023, arXiv 2210.02885).

    ``exp(-sum p_k log p_k)`` with ``p_k = sigma_k / sum(sigma) + eps`` over the singular values
    of the (uncentred) features: between 1 and min(N, D).

    Args:
        feats: ``(N, D)`` features.
        eps: smoothing of the normalised singular values.

    Returns:
        The effective rank (float).

    Example:
        >>> import torch
        >>> from headkit.probe import rankme
        >>> round(rankme(torch.eye(4)), 3)
        4.0
    """
    x = _check_feats(feats, "rankme")
    s = torch.linalg.svdvals(x)
    p = s / s.sum().clamp_min(1e-300) + eps
    return float(torch.exp(-(p * p.log()).sum()))


@dataclass
class Spectrum:
    """Normalised singular-value spectrum of a layer and how unequal it is.

    Attributes:
        values: variance share of each principal direction (``sigma_k^2 / sum sigma^2`` of the
            centred features), descending, summing to 1.
        effective_rank: ``exp(entropy(values))``, between 1 and ``len(values)``.
        unevenness: Gini coefficient of ``values``: 0 when every direction carries the same
            variance, towards 1 when one direction carries all of it (the paper's "progressive
            feature weighting" grows it with depth).

    Example:
        >>> import torch
        >>> from headkit.probe import feature_spectrum
        >>> s = feature_spectrum(torch.randn(500, 4))
        >>> s.values.shape, s.unevenness < 0.2
        (torch.Size([4]), True)
    """

    values: Tensor
    effective_rank: float
    unevenness: float


def feature_spectrum(feats: Tensor) -> Spectrum:
    """Spectrum of the centred features and a scalar measure of its unevenness.

    Args:
        feats: ``(N, D)`` features.

    Returns:
        `Spectrum` with ``values``, ``effective_rank`` and ``unevenness``.

    Example:
        >>> import torch
        >>> from headkit.probe import feature_spectrum
        >>> x = torch.randn(1000, 3) * torch.tensor([3.0, 1.0, 1.0])
        >>> s = feature_spectrum(x)
        >>> round(float(s.values[0]), 1)
        0.8
    """
    x = _check_feats(feats, "feature_spectrum")
    x = x - x.mean(0, keepdim=True)
    s2 = torch.linalg.svdvals(x) ** 2
    total = s2.sum()
    if total <= 0:
        raise HeadkitError("feature_spectrum: the features are constant (zero variance)")
    v = s2 / total
    nz = v[v > 0]
    eff = float(torch.exp(-(nz * nz.log()).sum()))
    asc = v.flip(0)
    n = asc.numel()
    idx = torch.arange(1, n + 1, dtype=asc.dtype)
    gini = float((2 * (idx * asc).sum()) / (n * asc.sum()) - (n + 1) / n) if n > 1 else 0.0
    return Spectrum(values=v.float(), effective_rank=eff, unevenness=gini)


# ----------------------------------------------------------------------------- sweeps

_HIGHER_IS_BETTER = {"linear": True, "knn": True, "rankme": True, "spectrum": False}
_METRIC_NAMES = {
    "linear": "linear probe acc",
    "knn": "kNN acc",
    "rankme": "RankMe",
    "spectrum": "unevenness",
}


@dataclass
class SweepReport:
    """Per-layer metrics of a layer sweep.

    Attributes:
        layers: the layers, in depth order (as given).
        metrics: ``{metric: [value per layer]}`` for ``linear``, ``knn`` (accuracies in [0, 1]),
            ``rankme`` and ``spectrum`` (the unevenness of `feature_spectrum`; lower = more even).
        roles: optional labels per layer, e.g. ``{"backbone": "pre-projection"}``.
        dims: feature width per layer.
        spectra: normalised spectra per layer (top 64 values), for plots.
        info: free-form facts about the run (sample counts, settings).

    Example:
        >>> from headkit import SweepReport
        >>> r = SweepReport(["layer3", "layer4"], {"linear": [0.81, 0.74]}, roles={"layer4": "pre-projection"})
        >>> r.best_layer("linear")
        'layer3'
        >>> SweepReport.from_json(r.to_json()) == r
        True
    """

    layers: list[LayerSpec]
    metrics: dict[str, list[float | None]]
    roles: dict[str, str] = field(default_factory=dict)
    dims: list[int] = field(default_factory=list)
    spectra: list[list[float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def results(self, metric: str) -> dict[LayerSpec, float | None]:
        """``{layer: value}`` of one metric."""
        self._check_metric(metric)
        return dict(zip(self.layers, self.metrics[metric], strict=True))

    def _check_metric(self, metric: str) -> None:
        if metric not in self.metrics:
            raise HeadkitError(
                f"metric {metric!r} is not in this report; it has {list(self.metrics)}"
            )

    def best_layer(self, metric: str = "linear") -> LayerSpec:
        """The layer with the best value of ``metric`` (highest; lowest for ``spectrum``).

        Example:
            >>> from headkit.probe import SweepReport
            >>> SweepReport(["a", "b"], {"linear": [0.5, 0.7]}).best_layer("linear")
            'b'
        """
        self._check_metric(metric)
        vals = [(v, i) for i, v in enumerate(self.metrics[metric]) if v is not None]
        if not vals:
            raise HeadkitError(f"metric {metric!r} has no values")
        sign = 1 if _HIGHER_IS_BETTER.get(metric, True) else -1
        return self.layers[max(vals, key=lambda t: (sign * t[0], -t[1]))[1]]

    def table(self, fmt: str = "text") -> str:
        """The report as a printable table (``fmt``: ``"text"`` or ``"markdown"``)."""
        if fmt not in ("text", "markdown"):
            raise HeadkitError(f"fmt must be 'text' or 'markdown', got {fmt!r}")
        metrics = list(self.metrics)
        head = [
            "layer",
            *(["role"] if self.roles else []),
            "dim",
            *(_METRIC_NAMES.get(m, m) for m in metrics),
        ]
        best = {
            m: self.best_layer(m) for m in metrics if any(v is not None for v in self.metrics[m])
        }
        rows = []
        for i, layer in enumerate(self.layers):
            row = [str(layer)]
            if self.roles:
                row.append(self.roles.get(str(layer), ""))
            row.append(str(self.dims[i]) if i < len(self.dims) else "")
            for m in metrics:
                v = self.metrics[m][i]
                cell = (
                    "-"
                    if v is None
                    else (f"{100 * v:.1f}%" if m in ("linear", "knn") else f"{v:.3f}")
                )
                if best.get(m) == layer:
                    cell += " *"
                row.append(cell)
            rows.append(row)
        if fmt == "markdown":
            lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            return "\n".join(lines) + "\n\n`*` best layer per metric"
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        fmt_row = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt_row.format(*head), fmt_row.format(*("-" * w for w in widths))]
        lines += [fmt_row.format(*r) for r in rows]
        return "\n".join(lines) + "\n* best layer per metric"

    def to_json(self) -> str:
        """The report as JSON text (`SweepReport.from_json` reads it back)."""
        return json.dumps(
            {
                "layers": self.layers,
                "metrics": self.metrics,
                "roles": self.roles,
                "dims": self.dims,
                "spectra": self.spectra,
                "info": self.info,
                "format": "headkit.SweepReport/1",
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> SweepReport:
        """Read a report written by `SweepReport.to_json`."""
        try:
            d = json.loads(text)
            return cls(
                layers=list(d["layers"]),
                metrics={k: list(v) for k, v in d["metrics"].items()},
                roles=dict(d.get("roles", {})),
                dims=list(d.get("dims", [])),
                spectra=[list(s) for s in d.get("spectra", [])],
                info=dict(d.get("info", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise HeadkitError(f"not a headkit SweepReport JSON: {err}") from err

    def plot(self, path: str | os.PathLike[str], title: str | None = None) -> str:
        """Plot every metric against depth (and the spectra) into an image file.

        Needs matplotlib (``pip install "headkit[plot]"``).

        Args:
            path: output file (``.png``, ``.pdf``, ``.svg``).
            title: figure title.

        Returns:
            The path written.
        """
        try:
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise HeadkitError(
                'SweepReport.plot needs matplotlib: pip install "headkit[plot]"'
            ) from err
        metrics = [m for m in self.metrics if any(v is not None for v in self.metrics[m])]
        n = len(metrics) + (1 if self.spectra else 0)
        fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
        xs = list(range(len(self.layers)))
        labels = [
            f"{layer}\n({self.roles[str(layer)]})" if str(layer) in self.roles else str(layer)
            for layer in self.layers
        ]
        for ax, m in zip(axes[0], metrics, strict=False):
            vals = [float("nan") if v is None else v for v in self.metrics[m]]
            ax.plot(xs, vals, marker="o")
            ax.set_title(_METRIC_NAMES.get(m, m))
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
            ax.grid(alpha=0.3)
        if self.spectra:
            ax = axes[0][-1]
            cmap = plt.get_cmap("viridis")
            for i, s in enumerate(self.spectra):
                ax.semilogy(
                    range(1, len(s) + 1),
                    s,
                    color=cmap(i / max(1, len(self.spectra) - 1)),
                    label=labels[i].replace("\n", " "),
                )
            ax.set_title("spectrum (variance share)")
            ax.set_xlabel("direction")
            ax.legend(fontsize=6)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return str(path)


def layer_sweep(
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any] | None = None,
    layers: Sequence[LayerSpec] | None = None,
    metrics: Sequence[str] = ("linear", "knn", "rankme", "spectrum"),
    *,
    pool: Pool = "avg",
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    roles: Mapping[LayerSpec, str] | None = None,
    probe_kwargs: Mapping[str, Any] | None = None,
    knn_k: int = 20,
    seed: int = 0,
    progress: bool = True,
) -> SweepReport:
    """Which layer should I use? Probe every layer of ``model`` in one pass over the data.

    Extracts the features of all ``layers`` in one pass per loader (`extract_features`), then
    computes per layer: ``linear`` (`linear_probe` accuracy), ``knn`` (`knn_accuracy`) — both need
    labels — and the label-free ``rankme`` (`rankme`) and ``spectrum`` (unevenness of
    `feature_spectrum`). Without a ``test_loader`` a seeded 20% of the training set is held out
    for the labelled metrics. Layers may include taps inside a projection head through a model
    that wraps backbone and head (mark them with ``roles``).

    Args:
        model: the encoder (any model `LayerTap` takes).
        train_loader: yields ``(inputs, labels)`` (or inputs alone: label-free metrics only).
        test_loader: optional held-out data of the same form.
        layers: layer specs as for `LayerTap`; default: every timm index for timm models, the
            top-level children otherwise.
        metrics: any of ``"linear"``, ``"knn"``, ``"rankme"``, ``"spectrum"``.
        pool: pooling before flattening, as for `LayerTap`.
        device: where to run the model.
        max_samples: cap on samples per loader.
        roles: labels per layer shown in the table, e.g. ``{"head": "post-projection"}``.
        probe_kwargs: extra arguments of `linear_probe`.
        knn_k: neighbours of the kNN metric.
        seed: seed of the held-out split.
        progress: progress bars.

    Returns:
        `SweepReport`.

    Raises:
        HeadkitError: unknown metric, labelled metrics without labels, empty loader.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from headkit.probe import layer_sweep
        >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        >>> data = [(torch.randn(32, 4), torch.randint(0, 2, (32,))) for _ in range(4)]
        >>> report = layer_sweep(net, data, metrics=("knn", "rankme"), progress=False)
        >>> report.layers
        ['0', '1', '2']
    """
    unknown = [m for m in metrics if m not in _HIGHER_IS_BETTER]
    if unknown or not metrics:
        raise HeadkitError(f"unknown metrics {unknown}; choose from {list(_HIGHER_IS_BETTER)}")
    if layers is None:
        layers = _default_layers(model)
    tr_feats, tr_labels = extract_features(
        model,
        train_loader,
        layers,
        pool=pool,
        device=device,
        max_samples=max_samples,
        progress=progress,
    )
    keys = list(tr_feats)
    labelled = [m for m in metrics if m in ("linear", "knn")]
    te_feats: dict[LayerSpec, Tensor] | None = None
    te_labels: Tensor | None = None
    info: dict[str, Any] = {
        "n_train": int(next(iter(tr_feats.values())).shape[0]),
        "pool": str(pool),
    }
    if labelled:
        if tr_labels is None:
            raise HeadkitError(
                f"metrics {labelled} need labels, but the train loader yields inputs only"
            )
        if test_loader is not None:
            te_feats, te_labels = extract_features(
                model,
                test_loader,
                layers,
                pool=pool,
                device=device,
                max_samples=max_samples,
                progress=progress,
            )
            if te_labels is None:
                raise HeadkitError(
                    f"metrics {labelled} need labels, but the test loader yields inputs only"
                )
        else:
            n = tr_labels.shape[0]
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            n_te = max(1, n // 5)
            te_idx, tr_idx = perm[:n_te], perm[n_te:]
            te_feats = {k: v[te_idx] for k, v in tr_feats.items()}
            te_labels = tr_labels[te_idx]
            tr_feats = {k: v[tr_idx] for k, v in tr_feats.items()}
            tr_labels = tr_labels[tr_idx]
            info["held_out"] = "20% of the train loader"
        info["n_test"] = int(te_labels.shape[0])
    out: dict[str, list[float | None]] = {}
    if "linear" in metrics:
        assert te_feats is not None and te_labels is not None and tr_labels is not None
        res = linear_probe(
            tr_feats, tr_labels, te_feats, te_labels, seed=seed, **dict(probe_kwargs or {})
        )
        out["linear"] = [res[k] for k in keys]
        info["linear_settings"] = {str(k): v for k, v in res.settings.items()}
    if "knn" in metrics:
        assert te_feats is not None and te_labels is not None and tr_labels is not None
        out["knn"] = [
            knn_accuracy(tr_feats[k], tr_labels, te_feats[k], te_labels, k=knn_k) for k in keys
        ]
    spectra: list[list[float]] = []
    if "rankme" in metrics:
        out["rankme"] = [rankme(tr_feats[k]) for k in keys]
    if "spectrum" in metrics:
        specs = [feature_spectrum(tr_feats[k]) for k in keys]
        out["spectrum"] = [s.unevenness for s in specs]
        spectra = [s.values[:64].tolist() for s in specs]
    return SweepReport(
        layers=keys,
        metrics=out,
        roles={str(k): v for k, v in (roles or {}).items()},
        dims=[int(tr_feats[k].shape[1]) for k in keys],
        spectra=spectra,
        info=info,
    )


def _default_layers(model: nn.Module) -> list[LayerSpec]:
    inner = unwrap(model)
    if has_index_semantics(inner):
        return list(range(num_indices(inner)))
    names = [n for n, m in inner.named_children()]
    if not names:
        raise HeadkitError(f"{type(inner).__name__} has no child modules; pass layers=[...]")
    return list(names)


# ----------------------------------------------------------------------------- online probes


class OnlineLayerProbe(nn.Module):
    """Linear probes on several layers, trained during pretraining on detached features.

    Add its parameters to your optimizer (or give it its own) and add its loss to yours: the
    features are detached, so no gradient reaches the encoder. Accuracy counts accumulate until
    `compute` and are summed over ranks under ``torch.distributed``; wrapped in DDP with the
    model, its gradients are averaged like any other parameter.

    Args:
        layers_dims: ``{layer: feature width}``.
        num_classes: number of classes.

    Shapes:
        ``forward({layer: (B, D) or (B, C, H, W) or (B, T, C)}, labels (B,))`` -> scalar loss.

    Example:
        >>> import torch
        >>> from headkit.probe import OnlineLayerProbe
        >>> probe = OnlineLayerProbe({"layer3": 256, "layer4": 512}, num_classes=10)
        >>> feats = {"layer3": torch.randn(8, 256), "layer4": torch.randn(8, 512)}
        >>> loss = probe(feats, torch.randint(0, 10, (8,)))
        >>> sorted(probe.compute())
        ['layer3', 'layer4']
    """

    correct: Tensor
    total: Tensor

    def __init__(self, layers_dims: Mapping[LayerSpec, int], num_classes: int) -> None:
        super().__init__()
        if not layers_dims:
            raise HeadkitError("OnlineLayerProbe needs at least one layer")
        if num_classes < 2:
            raise HeadkitError(f"num_classes must be >= 2, got {num_classes}")
        self.layers = list(layers_dims)
        self.num_classes = num_classes
        self.probes = nn.ModuleDict(
            {self._key(k): nn.Linear(int(d), num_classes) for k, d in layers_dims.items()}
        )
        self.register_buffer("correct", torch.zeros(len(self.layers)), persistent=False)
        self.register_buffer("total", torch.zeros(()), persistent=False)

    @staticmethod
    def _key(layer: LayerSpec) -> str:
        return str(layer).replace(".", "__")

    def forward(self, feats: Mapping[LayerSpec, Tensor], labels: Tensor) -> Tensor:
        """Cross-entropy summed over layers, on detached features; updates the accuracy counts."""
        loss = torch.zeros((), device=labels.device)
        for i, layer in enumerate(self.layers):
            if layer not in feats:
                raise HeadkitError(
                    f"OnlineLayerProbe: no features for layer {layer!r}; got {list(feats)}"
                )
            f = feats[layer].detach()
            if f.dim() == 4:
                f = f.mean((2, 3))
            elif f.dim() == 3:
                f = f.mean(1)
            probe = self.probes[self._key(layer)]
            assert isinstance(probe, nn.Linear)
            if f.shape[-1] != probe.in_features:
                raise HeadkitError(
                    f"OnlineLayerProbe: layer {layer!r} expected width {probe.in_features}, got {fmt_shape(f.shape)}"
                )
            logits = probe(f.float())
            loss = loss + F.cross_entropy(logits, labels)
            with torch.no_grad():
                self.correct[i] += (logits.argmax(1) == labels).sum()
        with torch.no_grad():
            self.total += labels.shape[0]
        return loss

    def compute(self, reset: bool = True) -> dict[LayerSpec, float]:
        """Accuracy per layer since the last reset (summed over ranks when distributed)."""
        correct, total = self.correct.clone(), self.total.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(correct)
            dist.all_reduce(total)
        if reset:
            self.correct.zero_()
            self.total.zero_()
        t = float(total)
        return {
            layer: (float(correct[i]) / t if t else float("nan"))
            for i, layer in enumerate(self.layers)
        }
