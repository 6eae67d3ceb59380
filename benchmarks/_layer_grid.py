"""The grid of `bench_layer_choice.py`: data, five encoder families tapped at every block, four
pretraining objectives, training, and the cached per-layer features of every trained model.

Data (fixed draws; the same for every seed and family): 20x20 images made of a Fashion-MNIST
item (dimmed to half brightness, mirrored left-right in half of the images) and two MNIST digits
(10 px; digit a in the left half, digit b in the right half, 4-6 px from the top), composed with
``max``. 2,000 images pretrain, 2,000 train the probes, 1,000 test them (Fashion-MNIST's
test split; no digit is used twice). Downstream tasks read five properties of the same images:

    item     Fashion-MNIST class (10)   kept by every view        -> none (SimCLR, BYOL, MAE);
                                                                      sub-class for SupCon
    coarse   the 4 coarse groups (ours) SupCon's labels           -> none (SupCon models only)
    digit_a  MNIST class (10)           each view drops it, p=0.5 -> disrupted (mild)
    digit_b  MNIST class (10)           each view drops it, p=0.9 -> disrupted (strong)
    mirror   item mirrored or not (2)   no augmentation touches it -> untargeted

Augmentation of every pretraining view: digit a dropped with p = 0.5, digit b with p = 0.9
(independently), then a random shift (pad 2 + crop) and brightness x U(0.6, 1.4).

Families (widths 32-128, CPU-sized), every block tapped (``taps``: name -> (N, D), depth order):
    mlp     the demo's MLP encoder made deeper: 6 blocks Linear-BN-ReLU, width 128
    cnn3    the 3-block CNN of the paper scripts (32, 64, 128 channels) + fc (backbone output)
    resnet  stem + 4 stages x 2 basic residual blocks (32, 48, 64, 96 channels)
    vit     patch 5, 16 patches + class token, dim 64, 8 blocks; class token and patch mean of
            every block are separate candidates; final LayerNorm's class token = backbone output
    mixer   MLP-Mixer, patch 5, dim 64, 6 blocks (token mean per block); final norm = output
Every SSL model has a projection head (headkit ``MLPHead(dim, 128, 64)``): its hidden activation
and its output (post-projection) are candidates too. MAE has no projection head.

Objectives: ``simclr`` (headkit NT-Xent, t = 0.2), ``supcon`` (coarse labels, t = 0.1),
``byol`` (predictor + EMA teacher, momentum 0.99, lightly's losses are not needed), ``mae``
(ViT only: 75% of patches masked, 2-block decoder, pixel loss on masked patches).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headkit import MLPHead, NTXentLoss

CACHE = os.environ.get("HEADKIT_DATA", os.path.expanduser("~/.cache/headkit"))
S = 20  # image side
FAMILIES = ["mlp", "cnn3", "resnet", "vit", "mixer"]
OBJECTIVES = ["simclr", "supcon", "byol", "mae"]  # mae: vit only
DROPS = [0.5, 0.9]
COARSE = torch.tensor([0, 1, 0, 1, 0, 2, 0, 2, 3, 2])


# ----------------------------------------------------------------------------- data


@dataclass
class GridData:
    pre: Tensor  # (N, 3, S, S): item, digit a, digit b canvases
    pre_coarse: Tensor  # (N,) coarse labels (SupCon)
    train_x: Tensor  # (M, 1, S, S) composites
    train_c: (
        Tensor  # (M, 3, S, S) their canvases (for views made with the pretraining augmentation)
    )
    test_x: Tensor
    train_y: dict[str, Tensor]
    test_y: dict[str, Tensor]
    real: bool


def _have_real() -> bool:
    return all(
        os.path.exists(os.path.join(CACHE, f)) for f in ("fashion_mnist.npz", "mnist_digits.npz")
    )


def _resize(x: Tensor, size: int) -> Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def _items(x: Tensor, mirror: Tensor) -> Tensor:
    """Items on the 20x20 canvas, mirrored left-right where ``mirror``; dimmed to 0.5."""
    big = _resize(x, S)
    return torch.where(mirror[:, None, None, None], big.flip(-1), big) * 0.5


def _digits(d: Tensor, g: torch.Generator, left: bool) -> Tensor:
    """10 px digits on a 20x20 canvas: in its left (x = 0) or right (x = 10) half, at a height
    of 4, 5 or 6 px."""
    n = d.shape[0]
    small = _resize(d, 10)
    out = torch.zeros(n, 1, S, S)
    ox = 0 if left else 10
    oy = torch.randint(4, 7, (n,), generator=g)
    for i in range(n):
        out[i, :, oy[i] : oy[i] + 10, ox : ox + 10] = small[i]
    return out


def load(smoke: bool) -> GridData:
    """The grid's data (fixed draws). ``smoke`` shrinks it; without the registry data (smoke
    only) random stand-in images."""
    n_pre, n_tr, n_te = (256, 300, 200) if smoke else (2000, 2000, 1000)
    g = torch.Generator().manual_seed(20)
    real = _have_real()
    if real:
        fm = np.load(os.path.join(CACHE, "fashion_mnist.npz"))
        md = np.load(os.path.join(CACHE, "mnist_digits.npz"))
        fx = torch.tensor(np.concatenate([fm["x_train"], fm["x_test"]])).float().div(255)
        fy = torch.tensor(np.concatenate([fm["y_train"], fm["y_test"]])).long()
        n_fit = fm["x_train"].shape[0]
        dx, dy = torch.tensor(md["x"]).float().div(255), torch.tensor(md["y"]).long()
        fx, dx = fx.reshape(-1, 1, 28, 28), dx.reshape(-1, 1, 28, 28)
    else:
        if not smoke:
            raise SystemExit(
                f"real data not found in {CACHE}: run `bash scripts/get_data.sh` first"
            )
        n_fit = 2000
        fx, fy = (
            torch.rand(2600, 1, 28, 28, generator=g),
            torch.randint(0, 10, (2600,), generator=g),
        )
        dx, dy = (
            torch.rand(1600, 1, 28, 28, generator=g),
            torch.randint(0, 10, (1600,), generator=g),
        )
    fperm = torch.randperm(n_fit, generator=g)
    i_pre, i_tr = fperm[:n_pre], fperm[n_pre : n_pre + n_tr]
    i_te = n_fit + torch.randperm(fx.shape[0] - n_fit, generator=g)[:n_te]
    dperm = torch.randperm(dx.shape[0], generator=g)  # two digits per image, none reused
    cuts = np.cumsum([0, n_pre, n_pre, n_tr, n_tr, n_te, n_te])
    d = [dperm[cuts[i] : cuts[i + 1]] for i in range(6)]

    def part(ii: Tensor, da: Tensor, db: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        mirror = torch.rand(ii.numel(), generator=g) < 0.5
        canv = torch.cat(
            [_items(fx[ii], mirror), _digits(dx[da], g, True), _digits(dx[db], g, False)], 1
        )
        y = {
            "item": fy[ii],
            "coarse": COARSE[fy[ii]],
            "digit_a": dy[da],
            "digit_b": dy[db],
            "mirror": mirror.long(),
        }
        return canv, y

    pc, py = part(i_pre, d[0], d[1])
    tc, ty = part(i_tr, d[2], d[3])
    ec, ey = part(i_te, d[4], d[5])
    return GridData(pc, py["coarse"], compose(tc), tc, compose(ec), ty, ey, real)


def compose(c: Tensor, keep_a: Tensor | None = None, keep_b: Tensor | None = None) -> Tensor:
    """(item, digit a, digit b) canvases ``(B, 3, S, S)`` -> images ``(B, 1, S, S)``
    (``max``); a digit whose ``keep`` is False is left out."""
    a, b = c[:, 1:2], c[:, 2:3]
    if keep_a is not None:
        a = a * keep_a[:, None, None, None]
    if keep_b is not None:
        b = b * keep_b[:, None, None, None]
    return torch.maximum(c[:, :1], torch.maximum(a, b))


def augment(c: Tensor, g: torch.Generator) -> Tensor:
    """One pretraining view of canvases ``(B, 3, S, S)`` -> ``(B, 1, S, S)``: digit a dropped
    with probability ``DROPS[0]``, digit b with ``DROPS[1]``; shift (pad 2 + crop) and
    brightness x U(0.6, 1.4)."""
    b = c.shape[0]
    keep_a = torch.rand(b, generator=g) >= DROPS[0]
    keep_b = torch.rand(b, generator=g) >= DROPS[1]
    return shift_jitter(compose(c, keep_a, keep_b), g)


def shift_jitter(x: Tensor, g: torch.Generator, pad: int = 2) -> Tensor:
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :]
    x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    return (x * (0.6 + 0.8 * torch.rand(b, 1, 1, 1, generator=g))).clamp(0, 1)


def user_views(x: Tensor, q: int, seed: int) -> Tensor:
    """``q`` views of each downstream image made with the user's own augmentation (shift and
    brightness: the digit cannot be dropped from a composite), ``(N, q, 1, S, S)``."""
    g = torch.Generator().manual_seed(seed)
    xs = x.repeat_interleave(q, 0)
    return shift_jitter(xs, g).reshape(x.shape[0], q, *x.shape[1:])


# ----------------------------------------------------------------------------- families


class Family(nn.Module):
    """A backbone: ``forward(x) -> (B, dim)`` backbone output; ``taps(x) -> {name: (B, D)}``
    every candidate layer of the backbone in depth order; ``blocks``: the names that are block
    outputs (in order); ``out_name``: the backbone output's tap; ``dino``: the DINOv2-style
    default (last block, class token where there is one)."""

    dim: int
    blocks: list[str]
    out_name: str
    dino: str

    def taps(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError


def _gap(t: Tensor) -> Tensor:
    return t.mean((2, 3))


class MLPNet(Family):
    def __init__(self, depth: int = 6, width: int = 128) -> None:
        super().__init__()
        layers = []
        d_in = S * S
        for _ in range(depth):
            layers.append(nn.Sequential(nn.Linear(d_in, width), nn.BatchNorm1d(width), nn.ReLU()))
            d_in = width
        self.layers = nn.ModuleList(layers)
        self.dim = width
        self.blocks = [f"block{i + 1}" for i in range(depth)]
        self.out_name = self.blocks[-1]
        self.dino = self.blocks[-1]

    def taps(self, x: Tensor) -> dict[str, Tensor]:
        h = x.flatten(1)
        out = {}
        for name, m in zip(self.blocks, self.layers, strict=True):
            h = m(h)
            out[name] = h
        return out

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for m in self.layers:
            h = m(h)
        return h


def _conv_bn(i: int, o: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class CNN3(Family):
    def __init__(self, width: int = 32, out_dim: int = 128) -> None:
        super().__init__()
        self.b1 = nn.Sequential(_conv_bn(1, width), nn.MaxPool2d(2))
        self.b2 = nn.Sequential(_conv_bn(width, 2 * width), nn.MaxPool2d(2))
        self.b3 = _conv_bn(2 * width, 4 * width)
        self.fc = nn.Sequential(
            nn.Linear(4 * width, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU()
        )
        self.dim = out_dim
        self.blocks = ["block1", "block2", "block3"]
        self.out_name = "fc"
        self.dino = "block3"

    def taps(self, x: Tensor) -> dict[str, Tensor]:
        h1 = self.b1(x)
        h2 = self.b2(h1)
        h3 = self.b3(h2)
        return {"block1": _gap(h1), "block2": _gap(h2), "block3": _gap(h3), "fc": self.fc(_gap(h3))}

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(_gap(self.b3(self.b2(self.b1(x)))))


class Basic(nn.Module):
    def __init__(self, i: int, o: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.n1 = nn.BatchNorm2d(o)
        self.c2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.n2 = nn.BatchNorm2d(o)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or i != o:
            self.short = nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.n1(self.c1(x)))
        return F.relu(self.n2(self.c2(h)) + self.short(x))


class ResNet(Family):
    def __init__(self, widths: tuple[int, ...] = (32, 48, 64, 96), per_stage: int = 2) -> None:
        super().__init__()
        self.stem = _conv_bn(1, widths[0], stride=2)  # 20 -> 10
        mods = []
        names = []
        i = widths[0]
        for s, w in enumerate(widths):
            for b in range(per_stage):
                mods.append(Basic(i, w, 2 if (b == 0 and s > 0) else 1))
                names.append(f"s{s + 1}b{b + 1}")
                i = w
        self.body = nn.ModuleList(mods)
        self.dim = widths[-1]
        self.blocks = names
        self.out_name = names[-1]
        self.dino = names[-1]

    def taps(self, x: Tensor) -> dict[str, Tensor]:
        h = self.stem(x)
        out = {}
        for n, m in zip(self.blocks, self.body, strict=True):
            h = m(h)
            out[n] = _gap(h)
        return out

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for m in self.body:
            h = m(h)
        return _gap(h)


class TBlock(nn.Module):
    def __init__(self, d: int, heads: int = 4, ratio: int = 2) -> None:
        super().__init__()
        self.n1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.n2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, ratio * d), nn.GELU(), nn.Linear(ratio * d, d))

    def forward(self, x: Tensor) -> Tensor:
        h = self.n1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.n2(x))


class ViT(Family):
    def __init__(self, d: int = 64, depth: int = 8, patch: int = 5) -> None:
        super().__init__()
        self.patch = patch
        self.np = (S // patch) ** 2
        self.embed = nn.Linear(patch * patch, d)
        self.pos = nn.Parameter(torch.randn(1, self.np, d) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.body = nn.ModuleList([TBlock(d) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.dim = d
        self.blocks = [f"b{i + 1}" for i in range(depth)]
        self.out_name = "out.cls"
        self.dino = "out.cls"

    def patches(self, x: Tensor) -> Tensor:
        p = self.patch
        b = x.shape[0]
        t = x.unfold(2, p, p).unfold(3, p, p)  # (B, 1, h, w, p, p)
        return t.reshape(b, self.np, p * p)

    def tokens(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        t = self.embed(self.patches(x)) + self.pos
        if keep is not None:
            t = torch.gather(t, 1, keep[..., None].expand(-1, -1, t.shape[-1]))
        return torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1)

    def taps(self, x: Tensor) -> dict[str, Tensor]:
        h = self.tokens(x)
        out = {}
        for n, m in zip(self.blocks, self.body, strict=True):
            h = m(h)
            out[n + ".cls"] = h[:, 0]
            out[n + ".mean"] = h[:, 1:].mean(1)
        out["out.cls"] = self.norm(h)[:, 0]
        return out

    def encode(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        h = self.tokens(x, keep)
        for m in self.body:
            h = m(h)
        return self.norm(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x)[:, 0]


class MixerBlock(nn.Module):
    def __init__(self, n: int, d: int, tok: int = 32, ch: int = 128) -> None:
        super().__init__()
        self.n1 = nn.LayerNorm(d)
        self.tok = nn.Sequential(nn.Linear(n, tok), nn.GELU(), nn.Linear(tok, n))
        self.n2 = nn.LayerNorm(d)
        self.ch = nn.Sequential(nn.Linear(d, ch), nn.GELU(), nn.Linear(ch, d))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.tok(self.n1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.ch(self.n2(x))


class Mixer(Family):
    def __init__(self, d: int = 64, depth: int = 6, patch: int = 5) -> None:
        super().__init__()
        self.patch = patch
        n = (S // patch) ** 2
        self.embed = nn.Conv2d(1, d, patch, patch)
        self.body = nn.ModuleList([MixerBlock(n, d) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.dim = d
        self.blocks = [f"b{i + 1}" for i in range(depth)]
        self.out_name = "out"
        self.dino = "out"

    def taps(self, x: Tensor) -> dict[str, Tensor]:
        h = self.embed(x).flatten(2).transpose(1, 2)
        out = {}
        for n, m in zip(self.blocks, self.body, strict=True):
            h = m(h)
            out[n] = h.mean(1)
        out["out"] = self.norm(h).mean(1)
        return out

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2)
        for m in self.body:
            h = m(h)
        return self.norm(h).mean(1)


def make_family(name: str) -> Family:
    return {"mlp": MLPNet, "cnn3": CNN3, "resnet": ResNet, "vit": ViT, "mixer": Mixer}[name]()


class Model(nn.Module):
    """Backbone + projection head (None for MAE). ``taps`` adds the head's hidden activation
    (``head.hidden``) and output (``head.out``)."""

    def __init__(self, family: str, head: bool) -> None:
        super().__init__()
        self.backbone = make_family(family)
        self.head = MLPHead(self.backbone.dim, 128, 64, num_layers=2) if head else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.backbone(x)
        return self.head(h) if self.head is not None else h

    def taps(self, x: Tensor) -> dict[str, Tensor]:
        out = self.backbone.taps(x)
        if self.head is not None:
            h = out[self.backbone.out_name]
            hid = self.head.layers[:-1](h)
            out["head.hidden"] = hid
            out["head.out"] = self.head.layers[-1](hid)
        return out

    def roles(self) -> dict[str, str]:
        """The fixed defaults: name -> tap."""
        bb = self.backbone
        return {
            "last block": bb.blocks[-1] + (".cls" if isinstance(bb, ViT) else ""),
            "backbone output": bb.out_name,
            "post-projection": "head.out" if self.head is not None else bb.out_name,
            "DINOv2-style": bb.dino,
        }


# ----------------------------------------------------------------------------- objectives


def supcon(z: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss ("L_out", Khosla et al. 2020) of ``z`` (B, V, D)."""
    b, v, _ = z.shape
    q = F.normalize(z.reshape(b * v, -1), dim=1)
    lab = labels.repeat_interleave(v)
    sim = q @ q.T / temperature
    eye = torch.eye(b * v, dtype=torch.bool)
    sim = sim.masked_fill(eye, float("-inf"))
    lse = torch.logsumexp(sim, 1)
    pos = (lab[:, None] == lab[None, :]) & ~eye
    mean_pos = torch.where(pos, sim, 0.0).sum(1) / pos.sum(1).clamp_min(1)
    return (lse - mean_pos).mean()


class MAEDecoder(nn.Module):
    def __init__(self, n: int, d: int, dd: int = 32, depth: int = 2, pix: int = 25) -> None:
        super().__init__()
        self.proj = nn.Linear(d, dd)
        self.mask = nn.Parameter(torch.zeros(1, 1, dd))
        self.pos = nn.Parameter(torch.randn(1, n, dd) * 0.02)
        self.body = nn.Sequential(*[TBlock(dd, heads=2) for _ in range(depth)])
        self.out = nn.Linear(dd, pix)
        self.n = n

    def forward(self, enc: Tensor, keep: Tensor) -> Tensor:
        b = enc.shape[0]
        t = self.proj(enc[:, 1:])
        full = self.mask.expand(b, self.n, -1).clone()
        full.scatter_(1, keep[..., None].expand(-1, -1, t.shape[-1]), t)
        return self.out(self.body(full + self.pos))


@dataclass(frozen=True)
class Cfg:
    family: str
    objective: str
    seed: int
    epochs: int
    n_pre: int
    real: bool
    v: int = 1

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def name(self) -> str:
        return f"{self.family}-{self.objective}-s{self.seed}"


EPOCHS = {"mlp": 30, "cnn3": 12, "resnet": 5, "vit": 5, "mixer": 6}


def train(cfg: Cfg, data: GridData, smoke: bool) -> tuple[Model, dict[str, float]]:
    """Pretrain one model of the grid. Returns it (eval mode) and its wall seconds and loss."""
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = Model(cfg.family, head=cfg.objective != "mae")
    params = list(model.parameters())
    extra: dict[str, nn.Module] = {}
    if cfg.objective == "byol":
        extra["pred"] = MLPHead(64, 128, 64, num_layers=2)
        teacher = copy.deepcopy(model)
        for p in teacher.parameters():
            p.requires_grad_(False)
    if cfg.objective == "mae":
        bb = model.backbone
        assert isinstance(bb, ViT)
        extra["dec"] = MAEDecoder(bb.np, bb.dim, pix=bb.patch**2)
    for m in extra.values():
        params += list(m.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    bs = 64 if smoke else 256
    x, yc = data.pre, data.pre_coarse
    per_epoch = max(1, x.shape[0] // bs)
    total = cfg.epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=total, pct_start=0.1)
    nt = NTXentLoss(temperature=0.2)
    model.train()
    for m in extra.values():
        m.train()
    step = 0
    last: list[float] = []
    for _ in range(cfg.epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        last = []
        for s in range(per_epoch):
            idx = perm[s * bs : (s + 1) * bs]
            xb = x[idx]
            if cfg.objective == "mae":
                bb = model.backbone
                assert isinstance(bb, ViT)
                v = augment(xb, g)
                n_keep = bb.np // 4
                noise = torch.rand(xb.shape[0], bb.np, generator=g)
                order = noise.argsort(1)
                keep = order[:, :n_keep].sort(1).values
                pred = extra["dec"](bb.encode(v, keep), keep)
                target = bb.patches(v)
                target = (target - target.mean(-1, keepdim=True)) / (
                    target.var(-1, keepdim=True) + 1e-6
                ).sqrt()
                masked = torch.ones(xb.shape[0], bb.np, dtype=torch.bool)
                masked.scatter_(1, keep, False)
                loss = ((pred - target) ** 2).mean(-1)[masked].mean()
            else:
                v1, v2 = augment(xb, g), augment(xb, g)
                if cfg.objective == "simclr":
                    loss = nt(model(v1), model(v2))
                elif cfg.objective == "supcon":
                    z = torch.stack([model(v1), model(v2)], 1)
                    loss = supcon(z, yc[idx])
                else:  # byol
                    p1, p2 = extra["pred"](model(v1)), extra["pred"](model(v2))
                    with torch.no_grad():
                        t1, t2 = teacher(v1), teacher(v2)
                    loss = (
                        4
                        - 2 * F.cosine_similarity(p1, t2, dim=-1).mean()
                        - 2 * F.cosine_similarity(p2, t1, dim=-1).mean()
                    )
            if not torch.isfinite(loss.detach()):
                raise FloatingPointError(f"{cfg.name()}: training diverged")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if cfg.objective == "byol":
                tau = 1 - (1 - 0.99) * (math.cos(math.pi * step / total) + 1) / 2
                with torch.no_grad():
                    for pt, po in zip(teacher.parameters(), model.parameters(), strict=True):
                        pt.mul_(tau).add_(po.detach(), alpha=1 - tau)
                    for bt, bo in zip(teacher.buffers(), model.buffers(), strict=True):
                        bt.copy_(bo)
            last.append(float(loss.detach()))
    model.eval()
    return model, {"seconds": time.time() - t0, "loss": float(np.mean(last))}


@torch.no_grad()
def taps(model: Model, x: Tensor, bs: int = 500) -> dict[str, Tensor]:
    """Every candidate layer's features of ``x``: ``{name: (N, D)}`` in depth order."""
    model.eval()
    parts: dict[str, list[Tensor]] = {}
    for i in range(0, x.shape[0], bs):
        for k, v in model.taps(x[i : i + bs]).items():
            parts.setdefault(k, []).append(v.float())
    return {k: torch.cat(v) for k, v in parts.items()}


def grid(seeds: int, smoke: bool, real: bool) -> list[Cfg]:
    """Every model of the grid, seed by seed, cheap families first."""
    out = []
    n_pre = 256 if smoke else 2000
    for seed in range(seeds):
        for fam in FAMILIES:
            for obj in OBJECTIVES:
                if obj == "mae" and fam != "vit":
                    continue
                if smoke and obj != "simclr" and (fam, obj) not in SMOKE_EXTRA:
                    continue
                ep = 1 if smoke else EPOCHS[fam]
                out.append(Cfg(fam, obj, seed, ep, n_pre, real))
    return out


SMOKE_EXTRA = {("vit", "mae"), ("mlp", "supcon"), ("mlp", "byol")}
TASKS = {
    "coarse": "none",
    "item": "none",
    "digit_a": f"disrupted p={DROPS[0]}",
    "digit_b": f"disrupted p={DROPS[1]}",
    "mirror": "untargeted",
}


def tasks_of(cfg: Cfg) -> dict[str, str]:
    """Downstream tasks of a model and their mismatch with its pretraining."""
    t = {k: v for k, v in TASKS.items() if k != "coarse"}
    if cfg.objective == "supcon":
        return {"coarse": "none", **t, "item": "sub-class"}
    return t
