"""Linear probes: per layer a grid of L2 penalties solved at once (full-batch L-BFGS), or every
layer and every (lr, weight decay) setting trained at once with mini-batch Adam; streaming."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from .._errors import HeadkitError
from .._layers.model import LayerSpec
from ._checks import check_layers
from ._metrics import check_xy, encode_labels
from ._rows import Rows
from ._solver import Blocks, eig_gram, fit_softmax

__all__ = [
    "ProbeResult",
    "ProbeSettings",
    "fit_linear",
    "linear_probe",
]

FeatureDict = Mapping[LayerSpec, Tensor]

SOLVERS = ("lbfgs", "adam")
# L2 penalties (on the mean loss) tried by the full-batch solver; scikit-learn's C is 1 / (wd n)
LBFGS_WEIGHT_DECAYS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
ADAM_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)
# a layer's standardised training features are kept in memory for the full-batch solver up to
# this size; larger ones are standardised block by block at every pass
_KEEP_BYTES = 128 << 20
# the grid is solved to a 10x looser tolerance than the refit: enough to rank the settings
_GRID_TOL = 10.0


class ProbeResult(dict[LayerSpec, float]):
    """Top-1 test accuracy per layer (a dict), with the chosen settings and per-sample results.

    Attributes:
        settings: ``{layer: {"weight_decay": ..., "C": ...}}`` chosen on the held-out split
            (``C = 1 / (weight_decay * n)``, scikit-learn's ``C`` for the ``n`` samples of the
            final fit); with ``solver="adam"``, ``{layer: {"lr": ..., "weight_decay": ...}}``.
        val_accuracy: ``{layer: accuracy on the held-out split with the chosen setting}``.
        predictions: ``{layer: (M,) predicted labels of the test samples}`` (CPU).
        correct: ``{layer: (M,) bool, whether each test sample was classified right}`` (CPU);
            the bootstrap intervals of `layer_sweep` resample these.

    Example:
        >>> import torch
        >>> from headkit.probe import linear_probe
        >>> x = torch.randn(100, 4); y = (x[:, 0] > 0).long()
        >>> res = linear_probe({"a": x[:80]}, y[:80], {"a": x[80:]}, y[80:])
        >>> sorted(res.settings["a"]), res.correct["a"].shape
        (['C', 'weight_decay'], torch.Size([20]))
    """

    settings: dict[LayerSpec, dict[str, float]]
    val_accuracy: dict[LayerSpec, float]
    predictions: dict[LayerSpec, Tensor]
    correct: dict[LayerSpec, Tensor]


@dataclass
class _Stats:
    mean: Tensor  # (D,) float32 on the probe device
    std: Tensor


def _stats(rows: Rows, dev: torch.device) -> _Stats:
    """Mean and (unbiased) standard deviation per feature, in one streamed pass.

    Each block's mean and variance take two passes over the block (the mean, then the mean
    square of the centred block: no cancellation; ``torch.var_mean`` over rows is ~10x slower on
    the CPU); the blocks are merged in float64 (Chan et al.'s pairwise update).
    """
    n = 0
    mean = torch.zeros(rows.d, dtype=torch.float64, device=dev)
    m2 = torch.zeros(rows.d, dtype=torch.float64, device=dev)
    for block in rows.chunks():
        k = int(block.shape[0])
        if k == 0:
            continue
        b = block.to(dev)
        if b.dtype != torch.float64:
            b = b.float()
        mean_b = b.mean(0)
        var_b = (b - mean_b).square_().mean(0)
        delta = mean_b.double() - mean
        tot = n + k
        mean += delta * (k / tot)
        m2 += var_b.double() * k + delta.square() * (n * k / tot)
        n = tot
    var = m2 / max(1, n - 1)
    std = var.clamp_min(0).sqrt().clamp_min(1e-6)
    return _Stats(mean.float(), std.float())


@dataclass
class _Group:
    members: list[int]
    d: int
    w: Tensor  # (G, D, P*C) views into the flat parameters
    b: Tensor  # (G, 1, P*C)
    gw: Tensor
    gb: Tensor
    mean: Tensor  # (G, 1, D)
    std: Tensor


def _train(
    rows: list[Rows],
    y: Tensor,
    stats: list[_Stats],
    num_classes: int,
    lrs: Tensor,
    wds: Tensor,
    epochs: int,
    batch_size: int,
    seed: int,
    dev: torch.device,
) -> list[tuple[Tensor, Tensor]]:
    """Train ``P`` softmax probes on each of ``L`` layers at once.

    Layers of equal width share one batched matmul per step; no layer is padded to another's
    width. All parameters live in one flat buffer, so one Adam update serves every probe.
    ``lrs`` and ``wds`` are ``(L, P)``. Reads one batch of rows per layer per step, so memory is
    a batch plus the probes. Returns ``[(W (D, P, C), b (P, C))]`` per layer.
    """
    n_layers, p = lrs.shape
    c = num_classes
    pc = p * c
    by_width: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_width.setdefault(r.d, []).append(i)
    sizes = [len(m) * (d + 1) * pc for d, m in by_width.items()]
    total = sum(sizes)
    theta = torch.zeros(total, device=dev)
    grad = torch.zeros_like(theta)
    m1 = torch.zeros_like(theta)
    m2 = torch.zeros_like(theta)
    lr_flat = torch.empty_like(theta)
    wd_flat = torch.empty_like(theta)
    groups: list[_Group] = []
    off = 0
    for d, members in by_width.items():
        g = len(members)
        nw = g * d * pc
        lr_g = lrs.to(dev)[members].repeat_interleave(c, dim=1).view(g, 1, pc)
        wd_g = wds.to(dev)[members].repeat_interleave(c, dim=1).view(g, 1, pc)
        lr_flat[off : off + nw].view(g, d, pc).copy_(lr_g.expand(g, d, pc))
        wd_flat[off : off + nw].view(g, d, pc).copy_(wd_g.expand(g, d, pc))
        lr_flat[off + nw : off + nw + g * pc].view(g, 1, pc).copy_(lr_g)
        wd_flat[off + nw : off + nw + g * pc].zero_()  # no decay on the biases
        groups.append(
            _Group(
                members,
                d,
                theta[off : off + nw].view(g, d, pc),
                theta[off + nw : off + nw + g * pc].view(g, 1, pc),
                grad[off : off + nw].view(g, d, pc),
                grad[off + nw : off + nw + g * pc].view(g, 1, pc),
                torch.stack([stats[i].mean for i in members]).view(g, 1, d),
                torch.stack([stats[i].std for i in members]).view(g, 1, d),
            )
        )
        off += nw + g * pc
    n = int(y.shape[0])
    y_dev = y.to(dev)
    onehot = torch.eye(c, device=dev)
    gen = torch.Generator().manual_seed(seed)
    sort_idx = any(r.on_disk for r in rows)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, epochs * steps_per_epoch)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    buffers: dict[tuple[int, int], Tensor] = {}
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size : (s + 1) * batch_size]
            if sort_idx:
                idx = idx.sort().values  # the order within a batch does not matter
            b = int(idx.numel())
            target = onehot[y_dev[idx.to(dev)]].view(1, b, 1, c)
            for gi, grp in enumerate(groups):
                xb = buffers.get((gi, b))
                if xb is None:
                    xb = buffers[(gi, b)] = torch.empty(len(grp.members), b, grp.d, device=dev)
                for j, li in enumerate(grp.members):
                    r = rows[li]
                    if r.device == dev:
                        r.take(idx, out=xb[j])
                    else:
                        xb[j].copy_(r.take(idx))
                xb.sub_(grp.mean).div_(grp.std)
                logits = torch.baddbmm(grp.b, xb, grp.w).view(len(grp.members), b, p, c)
                prob = logits.sub_(logits.amax(-1, keepdim=True)).exp_()
                prob.div_(prob.sum(-1, keepdim=True)).sub_(target)
                gl = prob.view(len(grp.members), b, pc).div_(b)
                torch.bmm(xb.transpose(1, 2), gl, out=grp.gw)
                torch.sum(gl, 1, keepdim=True, out=grp.gb)
            grad.addcmul_(wd_flat, theta)
            step += 1
            scale = 0.5 * (1 + math.cos(math.pi * (step - 1) / total_steps))
            bc1, bc2 = 1 - beta1**step, 1 - beta2**step
            m1.mul_(beta1).add_(grad, alpha=1 - beta1)
            m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = m2.sqrt().div_(math.sqrt(bc2)).add_(eps)
            theta.addcdiv_(m1 * lr_flat, denom, value=-scale / bc1)
    for r in rows:
        r.release()
    out: dict[int, tuple[Tensor, Tensor]] = {}
    for grp in groups:
        for j, li in enumerate(grp.members):
            out[li] = (grp.w[j].view(grp.d, p, c).clone(), grp.b[j].view(p, c).clone())
    return [out[i] for i in range(n_layers)]


def _predict(
    rows: Rows,
    params: tuple[Tensor, Tensor],
    stats: _Stats,
    dev: torch.device,
    y: Tensor | None = None,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Predicted classes ``(M, P)`` and, given class indices, the summed cross-entropy ``(P,)``."""
    w, b = params
    d, p, c = w.shape
    if chunk is None:  # a block of features and one of logits of about 16 MiB each
        chunk = max(64, min(8192, (4 << 20) // max(d, p * c)))
    wt = w.reshape(d, p * c).T  # class-major logits: BLAS's fast layout (see _solver._loss_grad)
    bt = b.reshape(p * c, 1)
    preds = []
    loss = torch.zeros(p, device=dev, dtype=torch.float64) if y is not None else None
    for s, block in zip(range(0, rows.n, chunk), rows.chunks(chunk), strict=True):
        x = (block.to(dev) - stats.mean) / stats.std
        m = int(x.shape[0])
        logits = torch.addmm(bt, wt, x.T).view(p, c, m)
        preds.append(logits.transpose(1, 2).contiguous().argmax(2).T)  # argmax is slow strided
        if y is not None and loss is not None:
            yy = y[s : s + m].to(dev).view(1, 1, m).expand(p, 1, m)
            lp = logits.log_softmax(1).gather(1, yy)
            loss -= lp.double().sum((1, 2))
    return torch.cat(preds), loss


def _kept(rows: Rows, stats: _Stats, dev: torch.device) -> Tensor | None:
    """``rows`` standardised with ``stats`` as one float32 tensor, if it is at most
    ``_KEEP_BYTES``; else None."""
    if rows.n * rows.d * 4 > _KEEP_BYTES:
        return None
    x = torch.empty(rows.n, rows.d, device=dev)
    s = 0
    for block in rows.chunks():
        m = int(block.shape[0])
        torch.div(block.to(dev) - stats.mean, stats.std, out=x[s : s + m])
        s += m
    return x


def _one(x: Tensor) -> Blocks:
    """A pass over a kept tensor: one block."""

    def kept() -> Iterator[tuple[int, Tensor]]:
        yield 0, x

    return kept


def _standardised(rows: Rows, stats: _Stats, dev: torch.device) -> Blocks:
    """A pass over ``rows`` standardised with ``stats``: one kept tensor, or blocks re-read."""
    x = _kept(rows, stats, dev)
    if x is not None:
        return _one(x)

    def streamed() -> Iterator[tuple[int, Tensor]]:
        s = 0
        for block in rows.chunks():
            yield s, (block.to(dev) - stats.mean) / stats.std
            s += int(block.shape[0])

    return streamed


def _choose(val_acc: Tensor, val_loss: Tensor, n_val: int) -> Tensor:
    """Per layer, the setting with the best held-out accuracy; among those within one sample of
    it, the lowest held-out loss. ``(L, P)`` -> ``(L,)``."""
    near = val_acc >= val_acc.max(1, keepdim=True).values - 1.0 / n_val - 1e-9
    return torch.where(near, val_loss, torch.full_like(val_loss, math.inf)).argmin(1).cpu()


def _fit_lbfgs(
    train: list[Rows],
    test: list[Rows],
    ytr: Tensor,
    c: int,
    wds: Tensor,
    fit_idx: Tensor,
    val_idx: Tensor,
    max_iter: int,
    tol: float,
    refit: bool,
    dev: torch.device,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Full-batch probes, one layer at a time, all penalties of a layer at once.

    Returns the chosen setting per layer ``(L,)``, the held-out accuracies ``(L, P)`` and the
    test predictions per layer.
    """
    best_rows, val_rows_acc, preds = [], [], []
    n_fit = int(fit_idx.numel())
    # the training rows in the order [fit, held out]: when a layer is kept in memory, one
    # standardised copy serves the grid (its first rows), the held-out scores and the refit
    order = torch.cat([fit_idx, val_idx])
    y_order = ytr[order].to(dev)
    y_fit, y_val = y_order[:n_fit], y_order[n_fit:]
    unit = _Stats(torch.zeros((), device=dev), torch.ones((), device=dev))
    for tr, te in zip(train, test, strict=True):
        stats = _stats(tr, dev)  # all training rows: label-free, shared by fit and refit
        x = _kept(tr.select(order), stats, dev)
        if x is not None:
            fit_x: Blocks = _one(x[:n_fit])
            all_x: Blocks = _one(x)
            val_rows, val_stats = Rows(x[n_fit:]), unit
        else:
            fit_x = _standardised(tr.select(fit_idx), stats, dev)
            all_x = _standardised(tr.select(order), stats, dev)
            val_rows, val_stats = tr.select(val_idx), stats
        eig = eig_gram(fit_x, tr.d, max_rows=max(2048, 4 * tr.d))
        w, b, _ = fit_softmax(fit_x, y_fit, c, wds, eig=eig, max_iter=max_iter, tol=tol * _GRID_TOL)
        params = (w, b)
        pred, loss = _predict(val_rows, params, val_stats, dev, y_val)
        assert loss is not None
        acc = (pred == y_val.view(-1, 1)).double().mean(0)
        # the lowest held-out cross-entropy: over a few hundred held-out samples it ranks the
        # penalties with less noise than their accuracy (which moves in steps of 1 / n_val)
        best = int(loss.argmin())
        if refit:
            params = fit_softmax(
                all_x,
                y_order,
                c,
                wds[best : best + 1],
                eig=eig,
                max_iter=max_iter,
                tol=tol,
                init=(w[:, best : best + 1], b[best : best + 1]),
            )[:2]
            preds.append(_predict(te, params, stats, dev)[0][:, 0])
        else:
            preds.append(_predict(te, params, stats, dev)[0][:, best])
        best_rows.append(best)
        val_rows_acc.append(acc)
        del x, fit_x, all_x, val_rows
    return torch.tensor(best_rows), torch.stack(val_rows_acc), preds


def _fit_adam(
    train: Mapping[LayerSpec, Rows],
    keys: list[LayerSpec],
    test: Mapping[LayerSpec, Rows],
    ytr: Tensor,
    c: int,
    lrs: Sequence[float],
    weight_decays: Sequence[float],
    fit_idx: Tensor,
    val_idx: Tensor,
    epochs: int,
    batch_size: int,
    refit: bool,
    seed: int,
    dev: torch.device,
) -> tuple[Tensor, Tensor, list[Tensor], list[tuple[float, float]]]:
    """Mini-batch Adam probes: every layer and every ``(lr, weight decay)`` at once."""
    grid = [(float(lr), float(wd)) for lr in lrs for wd in weight_decays]
    lr_t = torch.tensor([g[0] for g in grid], dtype=torch.float32)
    wd_t = torch.tensor([g[1] for g in grid], dtype=torch.float32)
    n_layers = len(keys)
    n_val = int(val_idx.numel())
    fit_rows = [train[k].select(fit_idx) for k in keys]
    val_rows = [train[k].select(val_idx) for k in keys]
    fit_stats = [_stats(r, dev) for r in fit_rows]
    params = _train(
        fit_rows,
        ytr[fit_idx],
        fit_stats,
        c,
        lr_t.expand(n_layers, -1),
        wd_t.expand(n_layers, -1),
        epochs,
        batch_size,
        seed,
        dev,
    )
    yval = ytr[val_idx].to(dev)
    val_acc_rows, val_loss_rows = [], []
    for i in range(n_layers):
        pred, loss = _predict(val_rows[i], params[i], fit_stats[i], dev, ytr[val_idx])
        assert loss is not None
        val_acc_rows.append((pred == yval.view(-1, 1)).double().mean(0))
        val_loss_rows.append(loss / n_val)
    val_acc = torch.stack(val_acc_rows)  # (L, P)
    val_loss = torch.stack(val_loss_rows)
    best = _choose(val_acc, val_loss, n_val)
    if refit:
        full_stats = [_stats(train[k], dev) for k in keys]
        chosen = _train(
            [train[k] for k in keys],
            ytr,
            full_stats,
            c,
            lr_t[best].view(-1, 1),
            wd_t[best].view(-1, 1),
            epochs,
            batch_size,
            seed,
            dev,
        )
        preds = [
            _predict(test[k], chosen[i], full_stats[i], dev)[0][:, 0] for i, k in enumerate(keys)
        ]
    else:
        preds = []
        for i, k in enumerate(keys):
            pred = _predict(test[k], params[i], fit_stats[i], dev)[0]
            preds.append(pred[:, int(best[i])])
    return best, val_acc, preds, grid


@dataclass(frozen=True)
class ProbeSettings:
    """The settings of the linear probes (see `linear_probe` for each): one object that
    `linear_probe`, `layer_sweep`'s ``probe_kwargs`` and the few-label rules pass down."""

    lrs: Sequence[float] = (1e-3, 1e-2, 1e-1)
    weight_decays: Sequence[float] | None = None
    epochs: int | None = None
    batch_size: int = 256
    val_fraction: float = 0.2
    refit: bool = True
    seed: int = 0
    device: torch.device | str | None = None
    solver: str = "lbfgs"
    tol: float = 1e-4


def fit_linear(
    train: Mapping[LayerSpec, Rows],
    train_labels: Tensor,
    test: Mapping[LayerSpec, Rows],
    test_labels: Tensor,
    settings: ProbeSettings | None = None,
    **overrides: Any,
) -> ProbeResult:
    """`linear_probe` on `Rows` (features in memory or on disk), with `ProbeSettings` (or
    keyword overrides of the defaults)."""
    st = replace(settings or ProbeSettings(), **overrides)
    lrs, weight_decays, epochs, batch_size = st.lrs, st.weight_decays, st.epochs, st.batch_size
    val_fraction, refit, seed, device, solver, tol = (
        st.val_fraction,
        st.refit,
        st.seed,
        st.device,
        st.solver,
        st.tol,
    )
    keys = list(train)
    if keys != list(test):
        raise HeadkitError(
            f"train and test features must have the same layers, got {keys} and {list(test)}"
        )
    if not keys:
        raise HeadkitError("linear_probe needs at least one layer")
    check_layers(train, train_labels, test, test_labels)
    for k in keys:
        if train[k].n != train_labels.shape[0]:
            raise HeadkitError(
                f"train features of layer {k!r} have {train[k].n} rows but there are "
                f"{train_labels.shape[0]} labels"
            )
        if test[k].n != test_labels.shape[0]:
            raise HeadkitError(
                f"test features of layer {k!r} have {test[k].n} rows but there are "
                f"{test_labels.shape[0]} labels"
            )
        if train[k].d != test[k].d:
            raise HeadkitError(
                f"layer {k!r}: train features have D={train[k].d}, test features D={test[k].d}"
            )
        if train[k].n == 0 or test[k].n == 0:
            raise HeadkitError(f"the features of layer {k!r} are empty")
    if not 0 < val_fraction < 1:
        raise HeadkitError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if solver not in SOLVERS:
        raise HeadkitError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if weight_decays is None:
        weight_decays = LBFGS_WEIGHT_DECAYS if solver == "lbfgs" else ADAM_WEIGHT_DECAYS
    if not lrs or not weight_decays:
        raise HeadkitError("lrs and weight_decays must be non-empty")
    if any(not math.isfinite(float(w)) or float(w) < 0 for w in weight_decays):
        raise HeadkitError(f"weight_decays must be finite and >= 0, got {list(weight_decays)}")
    if epochs is None:
        epochs = 100
    if isinstance(epochs, bool) or epochs < 1 or batch_size < 1:
        raise HeadkitError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if not tol > 0:
        raise HeadkitError(f"tol must be > 0, got {tol}")
    dev = torch.device(device) if device is not None else next(iter(train.values())).device
    classes, ytr, (yte,) = encode_labels(train_labels.cpu(), test_labels.cpu())
    c = classes.numel()
    if c < 2:
        raise HeadkitError(
            f"linear_probe needs at least 2 classes in the training labels, got {classes.tolist()}"
        )
    n = int(ytr.shape[0])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    val_idx, fit_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    if fit_idx.numel() == 0:
        raise HeadkitError(f"too few training samples ({n}) for a held-out split")
    chosen: list[dict[str, float]]
    if solver == "lbfgs":
        wd_list = [float(w) for w in weight_decays]
        wd_l = torch.tensor(wd_list, dtype=torch.float32)
        best, val_acc, preds = _fit_lbfgs(
            [train[k] for k in keys],
            [test[k] for k in keys],
            ytr,
            c,
            wd_l,
            fit_idx,
            val_idx,
            epochs,
            tol,
            refit,
            dev,
        )
        n_used = n if refit else int(fit_idx.numel())
        chosen = [
            {
                "weight_decay": wd_list[int(i)],
                "C": 1.0 / (wd_list[int(i)] * n_used) if wd_list[int(i)] > 0 else math.inf,
            }
            for i in best
        ]
    else:
        best, val_acc, preds, grid = _fit_adam(
            train,
            keys,
            test,
            ytr,
            c,
            lrs,
            weight_decays,
            fit_idx,
            val_idx,
            epochs,
            batch_size,
            refit,
            seed,
            dev,
        )
        chosen = [{"lr": grid[int(i)][0], "weight_decay": grid[int(i)][1]} for i in best]
    yte_dev = yte.to(dev)
    result = ProbeResult()
    result.settings, result.val_accuracy, result.predictions, result.correct = {}, {}, {}, {}
    for i, k in enumerate(keys):
        ok = (preds[i] == yte_dev).cpu()
        result[k] = float(ok.double().mean())
        result.correct[k] = ok
        result.predictions[k] = classes[preds[i].cpu()]
        result.settings[k] = chosen[i]
        result.val_accuracy[k] = float(val_acc[i, int(best[i])])
    return result


def _as_dict(feats: FeatureDict | Tensor, name: str) -> dict[LayerSpec, Tensor]:
    if isinstance(feats, Tensor):
        return {"features": feats}
    if not isinstance(feats, Mapping) or not feats:
        raise HeadkitError(
            f"{name} must be a non-empty dict layer -> (N, D) tensor, got {type(feats).__name__}"
        )
    return dict(feats)


def linear_probe(
    train_feats: FeatureDict | Tensor,
    train_labels: Tensor,
    test_feats: FeatureDict | Tensor,
    test_labels: Tensor,
    *,
    lrs: Sequence[float] = (1e-3, 1e-2, 1e-1),
    weight_decays: Sequence[float] | None = None,
    epochs: int | None = None,
    batch_size: int = 256,
    val_fraction: float = 0.2,
    refit: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
    solver: str = "lbfgs",
    tol: float = 1e-4,
) -> ProbeResult:
    """Linear-probe top-1 accuracy of every layer, each with its L2 penalty chosen on held-out data.

    A softmax-regression probe per layer (features standardised with the layer's training mean
    and standard deviation). The default solver (``"lbfgs"``) minimises the mean cross-entropy
    plus ``wd / 2 * ||W||^2`` (biases not penalised; scikit-learn's ``LogisticRegression`` with
    ``C = 1 / (wd * n)``) with full-batch L-BFGS, preconditioned by the inverse Hessian at the
    start (from the eigendecomposition of the features' ``D x D`` second moments); every penalty
    of a layer is solved at once, in one matrix multiply per pass, and each stops on its own at
    scikit-learn's criterion (``max |gradient| <= tol``). Layers are solved one after another:
    memory is one layer's training features (kept standardised up to 128 MiB; larger layers,
    and features memory-mapped from a ``store`` folder beyond that, are read block by block at
    every pass) plus the probes. The best penalty per layer is the one with the lowest
    cross-entropy on a held-out ``val_fraction`` of the training features; with ``refit`` it is
    solved again on all training features (warm-started) and scored on the test features.
    ``solver="adam"`` trains mini-batch probes for every ``(lr, weight_decay)`` pair instead (all
    layers and settings at once, cosine schedule; the best held-out accuracy wins, near-ties
    going to the lowest held-out loss).

    Args:
        train_feats: ``{layer: (N, D)}`` (or one ``(N, D)`` tensor, keyed ``"features"``).
        train_labels: ``(N,)`` integer labels.
        test_feats: ``{layer: (M, D)}`` with the same layers.
        test_labels: ``(M,)`` integer labels (classes absent from training count as wrong).
        lrs: learning rates to try (``solver="adam"`` only).
        weight_decays: L2 penalties (``wd / 2 * ||W||^2`` on the mean loss) to try. Default:
            ``(1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)`` for ``"lbfgs"``,
            ``(0, 1e-4, 1e-3, 1e-2)`` for ``"adam"``.
        epochs: ``"lbfgs"``: the most iterations (each one pass over the training features,
            plus one per line-search backtrack; default 100, scikit-learn's ``max_iter``);
            ``"adam"``: passes over the training features (default 100).
        batch_size: mini-batch size (``"adam"`` only).
        val_fraction: share of the training features held out to choose the setting.
        refit: fit the chosen setting again on all training features before testing; False
            scores the chosen probe as fitted on the fit split.
        seed: seed of the split (and of the shuffling for ``"adam"``).
        device: where to train (default: the device of the training features).
        solver: ``"lbfgs"`` (full batch, default) or ``"adam"`` (mini-batch).
        tol: ``"lbfgs"``: a probe stops once its largest gradient entry is at most ``tol``
            (scikit-learn's default, 1e-4, for the refit; the grid before selection stops at
            ``10 * tol``, enough to rank the penalties).

    Returns:
        `ProbeResult`: ``{layer: accuracy in [0, 1]}`` with ``.settings``, ``.val_accuracy``,
        ``.predictions`` and ``.correct``.

    Raises:
        HeadkitError: mismatched counts, empty or non-finite features, one class only, layers
            that differ between train and test, an unknown solver, negative penalties.

    Example:
        >>> import torch
        >>> from headkit.probe import linear_probe
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(400, 5, generator=g); y = (x[:, 0] > 0).long()
        >>> acc = linear_probe({"a": x[:300]}, y[:300], {"a": x[300:]}, y[300:])
        >>> chosen = acc.settings["a"]
        >>> acc["a"] > 0.9, chosen["weight_decay"] in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
        (True, True)
    """
    tr = _as_dict(train_feats, "train_feats")
    te = _as_dict(test_feats, "test_feats")
    if list(tr) != list(te):
        raise HeadkitError(
            f"train and test features must have the same layers, got {list(tr)} and {list(te)}"
        )
    for k in tr:
        check_xy(tr[k], train_labels, k, "train")
        check_xy(te[k], test_labels, k, "test")
    return fit_linear(
        {k: Rows.of(v) for k, v in tr.items()},
        train_labels,
        {k: Rows.of(v) for k, v in te.items()},
        test_labels,
        ProbeSettings(
            lrs, weight_decays, epochs, batch_size, val_fraction, refit, seed, device, solver, tol
        ),
    )
