"""Paper claim 2 (Xue et al., ICLR 2024, Sec. 4): with a non-linearity, a lower layer can keep a
feature that the head's output drops entirely; and progressive feature weighting holds in deeper
non-linear nets. Over seeds.

(A) A small ReLU network (backbone 16 -> 64 -> 32, head 32 -> 32 -> 2) is pretrained with SimCLR
(headkit's NT-Xent) on synthetic inputs carrying two features both views share: a strong one
(z_a) and a weaker one (z_b), plus noise. The head's 2-d output has room for only the dominant
direction. Ridge regression (held-out R^2) reads each feature back from every layer.

(B) Deeper nets (a backbone of 4 layers 16 -> 64 -> 64 -> 64 -> 32 and a head 32 -> 32 -> 4) with
ReLU, GELU, tanh and LeakyReLU, pretrained the same way on 6 shared features of graded strength
(3, 2, 1.5, 1, 0.7, 0.5) in 16-d inputs. Per layer: how evenly the features are kept (the
coefficient of variation of their held-out R^2; lower = more even) and the spectrum unevenness
(`headkit.probe.feature_spectrum`: Gini of the 6 leading variance shares, so that layers of
different widths compare; lower = more even). Claim:
deeper layers weight features more unequally.

Full run: about 8 min on 2 cores (5 seeds). ``--smoke`` (CI) runs tiny sizes and prints no
verdicts.

    python examples/paper/2_nonlinear.py [--smoke] [--seeds 5]
"""

from __future__ import annotations

import time

import torch
from _paper import ACTS, claim, fmt_stat, parser, print_table, save_text, setup
from torch import nn

from headkit import LayerTap, MLPHead, NTXentLoss
from headkit.probe import feature_spectrum


def mixer(d: int = 16) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(7)))[0]


def views(
    n: int, strengths: torch.Tensor, g: torch.Generator, noise: float = 0.7, d: int = 16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents z (n, k), two views sharing z with fresh noise, and the noise-free input."""
    k = strengths.numel()
    z = torch.randn(n, k, generator=g)
    mix = mixer(d)

    def view() -> torch.Tensor:
        return torch.cat([strengths * z, noise * torch.randn(n, d - k, generator=g)], 1) @ mix.T

    clean = torch.cat([strengths * z, torch.zeros(n, d - k)], 1) @ mix.T
    return z, view(), view(), clean


def r2(feats: torch.Tensor, target: torch.Tensor, lam: float = 1e-2) -> float:
    """Held-out R^2 of a ridge regression (first half fits, second half tests)."""
    n = feats.shape[0] // 2
    f = (feats - feats[:n].mean(0)) / feats[:n].std(0).clamp_min(1e-6)
    a, b = f[:n], f[n:]
    w = torch.linalg.solve(
        a.T @ a + lam * n * torch.eye(a.shape[1]), a.T @ (target[:n] - target[:n].mean())
    )
    pred = b @ w + target[:n].mean()
    return float(1 - ((pred - target[n:]) ** 2).mean() / target[n:].var())


def top_gini(feats: torch.Tensor, k: int) -> float:
    """Gini coefficient of the ``k`` leading variance shares (`headkit.probe.feature_spectrum`),
    zero-padded when the layer has fewer dimensions: how unequally the layer weights its ``k``
    main directions, comparable across layers of different width."""
    v = feature_spectrum(feats).values[:k].double()
    v = torch.cat([v, torch.zeros(k - v.numel(), dtype=v.dtype)]) / v.sum()
    asc = v.flip(0)
    idx = torch.arange(1, k + 1, dtype=v.dtype)
    return float(2 * (idx * asc).sum() / k - (k + 1) / k)


def pretrain(
    backbone: nn.Sequential, head: nn.Module, strengths: torch.Tensor, steps: int, seed: int
) -> nn.Sequential:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential()
    model.add_module("backbone", backbone)
    model.add_module("head", head)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    crit = NTXentLoss(temperature=0.5)
    for _ in range(steps):
        _, x1, x2, _ = views(512, strengths, g)
        loss = crit(model(x1), model(x2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def part_a(seeds: list[int], steps: int, smoke: bool) -> str:
    strengths = torch.tensor([3.0, 1.0])
    layers = ["backbone.1", "backbone.3", "head.layers.1", "head"]
    rows_a: dict[str, list[float]] = {k: [] for k in layers}
    rows_b: dict[str, list[float]] = {k: [] for k in layers}
    kept_gap = []
    for seed in seeds:
        torch.manual_seed(seed)
        backbone = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        model = pretrain(backbone, MLPHead(32, 32, 2, batch_norm=False), strengths, steps, seed)
        z, _, _, x = views(4000, strengths, torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            feats = LayerTap(model, layers)(x)
        for k in layers:
            rows_a[k].append(r2(feats[k], z[:, 0]))
            rows_b[k].append(r2(feats[k], z[:, 1]))
        kept_gap.append(
            max(rows_b["backbone.1"][-1], rows_b["backbone.3"][-1]) - rows_b["head"][-1]
        )
    roles = {
        "backbone.1": "backbone",
        "backbone.3": "backbone output (pre-projection)",
        "head.layers.1": "inside the head",
        "head": "post-projection (head output)",
    }
    rows = [
        [
            k,
            roles[k],
            fmt_stat(rows_a[k], scale=1.0, digits=3),
            fmt_stat(rows_b[k], scale=1.0, digits=3),
        ]
        for k in layers
    ]
    t = print_table(
        f"(A) held-out R^2 of each feature from each layer; mean +- sd [95% t-interval] over {len(seeds)} seed(s)",
        ["layer", "role", "strong z_a", "weak z_b"],
        rows,
    )
    line = claim(
        "weak feature z_b: best backbone R^2 - head output R^2 (claim: > 0, a lower layer keeps what the output drops)",
        kept_gap,
        ">0",
        smoke,
        scale=1.0,
        digits=3,
    )
    print(line)
    return t + "\n" + line


def part_b(seeds: list[int], steps: int, smoke: bool) -> str:
    strengths = torch.tensor([3.0, 2.0, 1.5, 1.0, 0.7, 0.5])
    acts = ["relu"] if smoke else ["relu", "gelu", "tanh", "leaky_relu"]
    make = {**ACTS, "leaky_relu": lambda: nn.LeakyReLU(0.1)}
    layers = ["backbone.1", "backbone.3", "backbone.5", "backbone.7", "head.layers.1", "head"]
    names = ["layer 1", "layer 2", "layer 3", "layer 4 (pre)", "head hidden", "head out (post)"]
    rows, lines = [], []
    for act in acts:
        cv_r2: dict[str, list[float]] = {k: [] for k in layers}
        gini: dict[str, list[float]] = {k: [] for k in layers}
        for seed in seeds:
            torch.manual_seed(seed)
            mods: list[nn.Module] = []
            dims = [16, 64, 64, 64, 32]
            for i in range(4):
                mods += [nn.Linear(dims[i], dims[i + 1]), make[act]()]
            head = MLPHead(32, 32, 4, batch_norm=False, act_layer=make[act])
            model = pretrain(nn.Sequential(*mods), head, strengths, steps, seed)
            z, _, _, x = views(4000, strengths, torch.Generator().manual_seed(seed + 1))
            with torch.no_grad():
                feats = LayerTap(model, layers)(x)
            for k in layers:
                r = torch.tensor([max(r2(feats[k], z[:, j]), 0.0) for j in range(z.shape[1])])
                cv_r2[k].append(float(r.std() / r.mean().clamp_min(1e-6)))
                gini[k].append(top_gini(feats[k][:2000], z.shape[1]))
        for k, nm in zip(layers, names, strict=True):
            rows.append(
                [
                    act,
                    nm,
                    fmt_stat(cv_r2[k], scale=1.0, digits=3),
                    fmt_stat(gini[k], scale=1.0, digits=3),
                ]
            )
        lines.append(
            claim(
                f"{act}: CV of the features' R^2, layer 4 (pre-projection) - layer 1 (claim: > 0)",
                [a - b for a, b in zip(cv_r2["backbone.7"], cv_r2["backbone.1"], strict=True)],
                ">0",
                smoke,
                scale=1.0,
                digits=3,
            )
        )
        lines.append(
            claim(
                f"{act}: CV of the features' R^2, head output - layer 4 (claim: > 0)",
                [a - b for a, b in zip(cv_r2["head"], cv_r2["backbone.7"], strict=True)],
                ">0",
                smoke,
                scale=1.0,
                digits=3,
            )
        )
        lines.append(
            claim(
                f"{act}: spectrum unevenness, head output - layer 1 (claim: > 0)",
                [a - b for a, b in zip(gini["head"], gini["backbone.1"], strict=True)],
                ">0",
                smoke,
                scale=1.0,
                digits=3,
            )
        )
    t = print_table(
        "\n(B) deeper nets: how unequally each layer keeps 6 features of graded strength "
        f"(lower = more even); mean +- sd [95% t-interval] over {len(seeds)} seed(s)",
        [
            "activation",
            "layer",
            "CV of the features' R^2",
            "unevenness of the top 6 directions (Gini)",
        ],
        rows,
    )
    print("\n".join(lines))
    return t + "\n" + "\n".join(lines)


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(seeds=5)
    args = p.parse_args()
    setup(args)
    t0 = time.time()
    if args.smoke:
        print("SMOKE RUN (tiny sizes): checks that the code runs; the numbers mean nothing\n")
    seeds = list(range(args.seeds))
    steps = 30 if args.smoke else 1500
    a = part_a(seeds, steps, args.smoke)
    b = part_b(seeds, 30 if args.smoke else 1000, args.smoke)
    tail = f"total time {time.time() - t0:.0f} s"
    print(tail)
    save_text(args.out, "2_nonlinear.txt", "\n\n".join([a, b, tail]))


if __name__ == "__main__":
    main()
