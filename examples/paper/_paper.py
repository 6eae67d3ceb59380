"""Shared pieces of the paper reproductions: data (with a cache from scripts/get_data.sh),
a small CNN, SimCLR / supervised training loops, probes and table printing."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

CACHE = os.environ.get("HEADKIT_DATA", os.path.expanduser("~/.cache/headkit"))


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/paper", help="folder for plots and results")
    p.add_argument(
        "--data-root", default=None, help="a torchvision-layout folder with CIFAR (download=False)"
    )
    return p


def fashion_mnist(smoke: bool) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Fashion-MNIST as float (N, 1, 28, 28) in [0, 1], or None when not fetched."""
    path = os.path.join(CACHE, "fashion_mnist.npz")
    if not os.path.exists(path):
        return None
    d = np.load(path)
    n_tr, n_te = (2000, 500) if smoke else (60000, 10000)
    xtr = torch.tensor(d["x_train"][:n_tr]).float().div(255).unsqueeze(1)
    xte = torch.tensor(d["x_test"][:n_te]).float().div(255).unsqueeze(1)
    return (
        xtr,
        torch.tensor(d["y_train"][:n_tr]).long(),
        xte,
        torch.tensor(d["y_test"][:n_te]).long(),
    )


def mnist_digits() -> tuple[Tensor, Tensor] | None:
    path = os.path.join(CACHE, "mnist_digits.npz")
    if not os.path.exists(path):
        return None
    d = np.load(path)
    return torch.tensor(d["x"]).float().div(255).unsqueeze(1), torch.tensor(d["y"]).long()


def need_data(smoke: bool) -> bool:
    """True when the real data is there; in smoke mode a stand-in is allowed (said loudly)."""
    if os.path.exists(os.path.join(CACHE, "fashion_mnist.npz")) and os.path.exists(
        os.path.join(CACHE, "mnist_digits.npz")
    ):
        return True
    msg = f"real data not found in {CACHE}: run `bash scripts/get_data.sh` first"
    if not smoke:
        raise SystemExit(msg)
    print(f"WARNING: {msg}; --smoke continues on random stand-in images (numbers meaningless)")
    return False


def standin(n: int, classes: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, classes, (n,), generator=g)


class CNN(nn.Module):
    """conv(32) -> conv(64) -> conv(128) -> global average: a 128-d representation."""

    def __init__(self, in_chs: int = 1, width: int = 32) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1, bias=False),
                nn.BatchNorm2d(o),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.block1 = block(in_chs, width)
        self.block2 = block(width, 2 * width)
        self.block3 = nn.Sequential(
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dim = 4 * width

    def forward(self, x: Tensor) -> Tensor:
        return self.block3(self.block2(self.block1(x)))


class WithHead(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def crop_flip(x: Tensor, g: torch.Generator, pad: int = 3) -> Tensor:
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    rows = dy[:, None] + torch.arange(h)[None]
    cols = dx[:, None] + torch.arange(w)[None]
    out = xp[
        torch.arange(b)[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    flip = torch.rand(b, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    scale = 0.7 + 0.6 * torch.rand(b, 1, 1, 1, generator=g)
    return (out * scale).clamp(0, 1)


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
) -> float:
    """Train ``model`` with ``loss_fn(model, xb, yb, g)``; returns seconds."""
    t0 = time.time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    params = list(model.parameters()) + (extra_params or [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, x.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for s in range(0, x.shape[0] - batch_size + 1, batch_size):
            idx = perm[s : s + batch_size]
            loss = loss_fn(model, x[idx], y[idx], g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return time.time() - t0


@torch.no_grad()
def features(model: nn.Module, x: Tensor, bs: int = 1000) -> Tensor:
    model.eval()
    return torch.cat([model(x[i : i + bs]).flatten(1) for i in range(0, x.shape[0], bs)])


def print_table(title: str, head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    text = "\n".join(
        [
            title,
            line.format(*head),
            line.format(*("-" * w for w in widths)),
            *(line.format(*r) for r in rows),
        ]
    )
    print(text)
    return text


def save_text(out: str, name: str, text: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name), "w") as fh:
        fh.write(text + "\n")
