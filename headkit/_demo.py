"""`headkit demo`: SimCLR three ways on real digits, a layer sweep of each, one table and a plot."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._contrastive import NTXentLoss
from ._errors import HeadkitError
from ._heads import MLPHead, ReweightHead
from ._probe import SweepReport, layer_sweep

__all__ = ["augment", "load_images", "make_encoder", "run_demo", "train_simclr"]


# ----------------------------------------------------------------------------- data


def load_images(
    data_root: str | None = None, size: int = 16, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Images ``(N, C, H, W)`` in [0, 1] and labels ``(N,)``.

    Default: scikit-learn's digits (1,797 real 8x8 digits that ship inside the wheel). With
    ``data_root``: an ``.npz`` with arrays ``x`` (``(N, H, W)``, ``(N, H, W, C)`` or
    ``(N, C, H, W)``) and ``y``, or an image folder with one sub-folder per class (resized to
    ``size``).
    """
    if data_root is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise HeadkitError(
                'the demo data needs scikit-learn: pip install "headkit[demo]"'
            ) from err
        x, y = load_digits(return_X_y=True)
        imgs = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        return imgs, torch.tensor(y, dtype=torch.long)
    if not os.path.exists(data_root):
        raise HeadkitError(
            f"data path {data_root!r} does not exist (expected an .npz or an image folder)"
        )
    if os.path.isfile(data_root):
        return _load_npz(data_root)
    return _load_folder(data_root, size)


def _load_npz(path: str) -> tuple[Tensor, Tensor]:
    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:
        raise HeadkitError(f"cannot read {path!r} as an .npz of arrays: {err}") from err
    keys = set(data.files)
    xk = next((k for k in ("x", "images", "X", "data") if k in keys), None)
    yk = next((k for k in ("y", "labels", "Y", "targets") if k in keys), None)
    if xk is None or yk is None:
        raise HeadkitError(f"{path!r} needs arrays 'x' and 'y'; it has {sorted(keys)}")
    x = torch.tensor(np.asarray(data[xk]), dtype=torch.float32)
    y = torch.tensor(np.asarray(data[yk])).long().reshape(-1)
    if x.dim() == 3:
        x = x[:, None]
    elif x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.dim() != 4 or x.shape[0] != y.shape[0]:
        raise HeadkitError(
            f"{path!r}: x must be (N, H, W[, C]) with N = len(y); got x {tuple(x.shape)}, y {tuple(y.shape)}"
        )
    if x.max() > 1.5:
        x = x / 255.0
    return x.contiguous(), y


def _load_folder(root: str, size: int) -> tuple[Tensor, Tensor]:
    try:
        from PIL import Image
    except ImportError as err:
        raise HeadkitError("reading an image folder needs Pillow: pip install pillow") from err
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise HeadkitError(f"{root!r} has no class sub-folders (expected root/<class>/<image>)")
    xs, ys = [], []
    for ci, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            if not f.lower().endswith(
                (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
            ):
                continue
            img = Image.open(os.path.join(root, c, f)).convert("RGB").resize((size, size))
            xs.append(
                torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3)
            )
            ys.append(ci)
    if not xs:
        raise HeadkitError(f"no images found under {root!r}")
    x = torch.stack(xs).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.tensor(ys)


# ----------------------------------------------------------------------------- model


def augment(x: Tensor, generator: torch.Generator | None = None, drop: float = 0.25) -> Tensor:
    """SimCLR-style views of small images: random shift, contrast, noise and cut-out."""
    b, _, h, w = x.shape
    g = generator
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).clamp(max=h + 2 * pad - 1)
    cols = (dx[:, None] + torch.arange(w)[None]).clamp(max=w + 2 * pad - 1)
    out = xp[
        torch.arange(b)[:, None, None, None],
        torch.arange(x.shape[1])[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    scale = 0.6 + 0.8 * torch.rand(b, 1, 1, 1, generator=g)
    out = out * scale + 0.1 * torch.randn(out.shape, generator=g)
    keep = torch.rand(b, 1, h, w, generator=g) > drop
    views: Tensor = out * keep
    return views


class Encoder(nn.Module):
    """A small MLP encoder: three blocks, then an optional head."""

    def __init__(self, in_dim: int, width: int = 256, out_dim: int = 128) -> None:
        super().__init__()
        self.backbone = nn.Sequential()
        self.backbone.add_module(
            "block1",
            nn.Sequential(nn.Flatten(), nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU()),
        )
        self.backbone.add_module(
            "block2", nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU())
        )
        self.backbone.add_module(
            "block3", nn.Sequential(nn.Linear(width, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU())
        )
        self.head: nn.Module = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.backbone(x))
        return out


def make_encoder(
    in_dim: int, head: str, width: int = 256, out_dim: int = 128, kappa: float = 1.05
) -> Encoder:
    """The demo's encoder with ``head`` in ``{"none", "mlp", "reweight"}``."""
    enc = Encoder(in_dim, width, out_dim)
    if head == "mlp":
        enc.head = MLPHead(out_dim, out_dim, 64, num_layers=2)
    elif head == "reweight":
        enc.head = ReweightHead(out_dim, kappa=kappa)
    elif head != "none":
        raise HeadkitError(f"head must be 'none', 'mlp' or 'reweight', got {head!r}")
    return enc


def train_simclr(
    model: nn.Module,
    x: Tensor,
    *,
    epochs: int = 40,
    batch_size: int = 256,
    lr: float = 2e-3,
    temperature: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    desc: str = "SimCLR",
) -> list[float]:
    """Pretrain ``model`` with SimCLR (headkit's NT-Xent) on images ``x``; returns epoch losses."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    crit = NTXentLoss(temperature)
    losses = []
    it: Any = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, leave=False, dynamic_ncols=True)
    model.train()
    for _ in it:
        perm = torch.randperm(x.shape[0], generator=g)
        total, count = 0.0, 0
        for s in range(0, x.shape[0] - 1, batch_size):
            xb = x[perm[s : s + batch_size]]
            if xb.shape[0] < 2:
                continue
            loss = crit(model(augment(xb, g)), model(augment(xb, g)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * xb.shape[0]
            count += xb.shape[0]
        losses.append(total / max(count, 1))
        if progress:
            it.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


# ----------------------------------------------------------------------------- the demo


@dataclass
class DemoResult:
    """What `run_demo` produced."""

    reports: dict[str, SweepReport]
    plot: str | None
    seconds: float


def _batches(x: Tensor, y: Tensor, bs: int = 512) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, x.shape[0], bs)]


def run_demo(
    *,
    data_root: str | None = None,
    epochs: int = 40,
    out_dir: str = ".",
    seed: int = 0,
    size: int = 16,
    heads: Sequence[str] = ("none", "mlp", "reweight"),
    progress: bool = True,
    plot: bool = True,
    print_fn: Any = print,
) -> DemoResult:
    """Pretrain three times (no head, `MLPHead`, `ReweightHead`), sweep the layers, report."""
    t0 = time.time()
    x, y = load_images(data_root, size=size, seed=seed)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    n_test = max(1, x.shape[0] // 5)
    te, tr = perm[:n_test], perm[n_test:]
    print_fn(
        f"headkit demo: {x.shape[0]} images {tuple(x.shape[1:])} ({'scikit-learn digits' if data_root is None else data_root}), "
        f"{len(torch.unique(y))} classes; train {tr.numel()}, test {te.numel()}; seed {seed}"
    )
    in_dim = int(x[0].numel())
    reports: dict[str, SweepReport] = {}
    names = {"none": "no head", "mlp": "MLPHead", "reweight": "ReweightHead(kappa=1.05)"}
    for head in heads:
        torch.manual_seed(seed)
        model = make_encoder(in_dim, head)
        train_simclr(
            model, x[tr], epochs=epochs, seed=seed, progress=progress, desc=f"SimCLR, {names[head]}"
        )
        layers: list[str] = ["backbone.block1", "backbone.block2", "backbone"]
        roles: dict[int | str, str] = {
            "backbone": "pre-projection" if head != "none" else "output (no head)"
        }
        if head == "mlp":
            layers += ["head.layers.2", "head"]
            roles["head.layers.2"] = "inside head"
            roles["head"] = "post-projection"
        elif head == "reweight":
            layers += ["head"]
            roles["head"] = "post-projection"
        report = layer_sweep(
            model,
            _batches(x[tr], y[tr]),
            _batches(x[te], y[te]),
            layers=layers,
            roles=roles,
            progress=progress,
            seed=seed,
        )
        report.info["head"] = names[head]
        reports[head] = report
        print_fn(f"\n== SimCLR with {names[head]}")
        print_fn(report.table())
        print_fn(
            f"best layer (linear probe): {report.best_layer('linear')}   (kNN): {report.best_layer('knn')}"
        )
    path = None
    if plot:
        path = _plot(reports, names, out_dir)
        print_fn(f"\nplot written to {path}")
    best = max(
        (
            (h, r.best_layer("linear"), max(v for v in r.metrics["linear"] if v is not None))
            for h, r in reports.items()
        ),
        key=lambda t: t[2],
    )
    print_fn(
        f"\nbest overall: {names[best[0]]}, layer {best[1]!r} with {100 * best[2]:.1f}% linear-probe accuracy"
    )
    secs = time.time() - t0
    print_fn(f"done in {secs:.0f} s")
    return DemoResult(reports, path, secs)


def _plot(reports: dict[str, SweepReport], names: dict[str, str], out_dir: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('(no plot: matplotlib is not installed; pip install "headkit[plot]")')
        return None
    os.makedirs(out_dir, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    longest = max(reports.values(), key=lambda r: len(r.layers))
    position = {str(layer): i for i, layer in enumerate(longest.layers)}
    for head, rep in reports.items():
        xs = [position.get(str(layer), i) for i, layer in enumerate(rep.layers)]
        for ax, m in zip(axes, ("linear", "knn", "spectrum"), strict=True):
            ax.plot(xs, rep.metrics[m], marker="o", label=names[head])
    titles = ("linear-probe accuracy", "kNN accuracy", "spectrum unevenness (Gini)")
    labels = [
        f"{layer}\n[{longest.roles[str(layer)]}]" if str(layer) in longest.roles else str(layer)
        for layer in longest.layers
    ]
    for ax, t in zip(axes, titles, strict=True):
        ax.set_title(t)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SimCLR on digits: representation quality by layer")
    fig.tight_layout()
    path = os.path.join(out_dir, "headkit-demo.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
