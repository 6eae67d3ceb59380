"""Paper claim 2 (Xue et al., ICLR 2024, Sec. 4): with a non-linearity, a lower layer can keep a
feature that the head's output drops entirely.

A small ReLU network (backbone 16 -> 64 -> 32, head 32 -> 32 -> 2) is pretrained with SimCLR
(headkit's NT-Xent) on synthetic inputs carrying two features both views share: a strong one
(z_a) and a weaker one (z_b), plus noise. The head's 2-d output has room for only the dominant
direction of the contrastive objective. Linear regression (ridge, held-out R^2) reads each feature
back from every layer.

    python examples/paper/2_nonlinear.py [--smoke]
"""

from __future__ import annotations

import torch
from _paper import parser, print_table, save_text
from torch import nn

from headkit import LayerTap, MLPHead, NTXentLoss


def data(
    n: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    z = torch.randn(n, 2, generator=g)
    mix = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(7)))[0]

    def view() -> torch.Tensor:
        x = torch.cat([3.0 * z[:, :1], 1.0 * z[:, 1:2], 0.7 * torch.randn(n, 14, generator=g)], 1)
        return x @ mix.T

    return (
        z,
        view(),
        view(),
        (torch.cat([3.0 * z[:, :1], z[:, 1:2], torch.zeros(n, 14)], 1) @ mix.T),
    )


def r2(feats: torch.Tensor, target: torch.Tensor, lam: float = 1e-2) -> float:
    n = feats.shape[0] // 2
    f = (feats - feats[:n].mean(0)) / feats[:n].std(0).clamp_min(1e-6)
    a, b = f[:n], f[n:]
    w = torch.linalg.solve(
        a.T @ a + lam * n * torch.eye(a.shape[1]), a.T @ (target[:n] - target[:n].mean())
    )
    pred = b @ w + target[:n].mean()
    return float(1 - ((pred - target[n:]) ** 2).mean() / target[n:].var())


def main() -> None:
    args = parser(__doc__).parse_args()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    backbone = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
    model = nn.Sequential()
    model.add_module("backbone", backbone)
    model.add_module("head", MLPHead(32, 32, 2, batch_norm=False))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    crit = NTXentLoss(temperature=0.5)
    steps = 50 if args.smoke else 1500
    for _ in range(steps):
        _, x1, x2, _ = data(512, g)
        loss = crit(model(x1), model(x2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    z, x, _, _ = data(4000, torch.Generator().manual_seed(args.seed + 1))
    layers = ["backbone.1", "backbone.3", "head.layers.1", "head"]
    with torch.no_grad():
        feats = LayerTap(model, layers)(x)
    rows, kept = [], {}
    for name in layers:
        ra, rb = r2(feats[name], z[:, 0]), r2(feats[name], z[:, 1])
        kept[name] = rb
        role = (
            "post-projection (head output)"
            if name == "head"
            else (
                "inside head"
                if name.startswith("head")
                else "backbone (pre-projection)"
                if name == "backbone.3"
                else "backbone"
            )
        )
        rows.append([name, role, str(feats[name].shape[1]), f"{ra:.3f}", f"{rb:.3f}"])
    t = print_table(
        f"held-out R^2 of each feature from each layer (SimCLR loss {loss.item():.3f})",
        ["layer", "role", "dim", "strong z_a", "weak z_b"],
        rows,
    )
    lower = max(kept["backbone.1"], kept["backbone.3"])
    verdict = (
        f"weak feature z_b: R^2 up to {lower:.3f} in the backbone vs {kept['head']:.3f} at the head output -> "
        + (
            "a lower layer keeps what the output drops: AGREES"
            if lower > 0.4 and kept["head"] < 0.1
            else "DISAGREES / inconclusive"
        )
    )
    print(verdict)
    save_text(args.out, "2_nonlinear.txt", t + "\n" + verdict)


if __name__ == "__main__":
    main()
