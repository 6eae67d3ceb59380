"""Paper claim 1 (Xue et al., ICLR 2024, Sec. 3): the linear theory.

A two-layer linear model f(x) = W2 W1 x is trained with the spectral contrastive loss
(HaoChen et al. 2021) L = -2 E[f(x)^T f(x+)] + E[(f(x)^T f(x'))^2] on synthetic inputs whose
coordinate k carries feature z_k with strength s_k (x_k = s_k z_k + noise). Augmentation resamples
("disrupts") a feature independently in each view with some probability.

Claims tested:
  (a) progressive feature weighting: the lower layer W1 weights features more evenly than the
      output W2 W1; from small initialisation ||W1 e_k|| ~ sqrt(||W2 W1 e_k||) (slope 0.5 on log-log);
  (b) pre-projection (W1 x) beats post-projection (W2 W1 x) on a downstream task that needs a
      feature that augmentation disrupts, that is too weak, or (c) too strong in pretraining;
  (d) weight decay shrinks that advantage.
Downstream: kNN (k = 15, Euclidean) predicting sign(z_j) from 1,000 labelled samples; the
weighting matters because the other features act as distractors.

    python examples/paper/1_linear_theory.py [--smoke]
"""

from __future__ import annotations

import math

import torch
from _paper import parser, print_table, save_text

D = 12
# strengths: feature 0 is "too strong", 9 is "too weak", 5 is disrupted by augmentation
BASE = [2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
NOISE = 0.3


def sample(
    n: int, s: torch.Tensor, disrupt: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, ...]:
    z = torch.randn(n, D, generator=g)
    z1 = torch.where(torch.rand(n, D, generator=g) < disrupt, torch.randn(n, D, generator=g), z)
    z2 = torch.where(torch.rand(n, D, generator=g) < disrupt, torch.randn(n, D, generator=g), z)
    x1 = s * z1 + NOISE * torch.randn(n, D, generator=g)
    x2 = s * z2 + NOISE * torch.randn(n, D, generator=g)
    x = s * z + NOISE * torch.randn(n, D, generator=g)
    return z, x, x1, x2


def train(
    s: torch.Tensor, disrupt: torch.Tensor, steps: int, wd: float, seed: int, init: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w1 = (init * torch.randn(D, D, generator=g)).requires_grad_()
    w2 = (init * torch.randn(D, D, generator=g)).requires_grad_()
    opt = torch.optim.SGD([w1, w2], lr=0.05, weight_decay=wd)
    for _ in range(steps):
        _, _, x1, x2 = sample(512, s, disrupt, g)
        f1, f2 = x1 @ w1.T @ w2.T, x2 @ w1.T @ w2.T
        pos = (f1 * f2).sum(1).mean()
        cross = f1 @ f2.T
        neg = (cross.pow(2).sum() - cross.diag().pow(2).sum()) / (512 * 511)
        loss = -2 * pos + neg
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w1.detach(), w2.detach()


def knn_acc(
    train_r: torch.Tensor, ytr: torch.Tensor, test_r: torch.Tensor, yte: torch.Tensor, k: int = 15
) -> float:
    d = torch.cdist(test_r, train_r)
    idx = d.topk(k, largest=False).indices
    pred = (ytr[idx].float().mean(1) > 0.5).long()
    return float((pred == yte).float().mean())


def downstream(
    w1: torch.Tensor, w2: torch.Tensor, s: torch.Tensor, j: int, seed: int
) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed + 100)
    z, x, _, _ = sample(2000, s, torch.zeros(D), g)
    y = (z[:, j] > 0).long()
    pre, post = x @ w1.T, x @ w1.T @ w2.T
    return (
        knn_acc(pre[:1000], y[:1000], pre[1000:], y[1000:]),
        knn_acc(post[:1000], y[:1000], post[1000:], y[1000:]),
    )


def main() -> None:
    args = parser(__doc__).parse_args()
    steps = 100 if args.smoke else 1500
    out = []
    # ---- (a) progressive feature weighting and the square-root relation
    s = torch.tensor([2.0, 1.6, 1.3, 1.1, 0.9, 0.75, 0.6, 0.5, 0.4, 0.33, 0.27, 0.22])
    w1, w2 = train(s, torch.zeros(D), steps, 0.0, args.seed)
    lower = w1.norm(dim=0) * s  # weight of feature k in W1 x
    post = (w2 @ w1).norm(dim=0) * s
    lo_n, po_n = lower / lower.max(), post / post.max()
    col1, col2 = w1.norm(dim=0), (w2 @ w1).norm(dim=0)
    keep = col2 > 1e-6
    slope = float(
        torch.linalg.lstsq(
            torch.stack([col2[keep].log(), torch.ones(int(keep.sum()))], 1),
            col1[keep].log()[:, None],
        ).solution[0]
    )
    rows = [[str(k), f"{s[k]:.2f}", f"{lo_n[k]:.3f}", f"{po_n[k]:.3f}"] for k in range(D)]
    t = print_table(
        "(a) per-feature weight, normalised to the largest (lower layer W1 vs output W2 W1)",
        ["feature", "strength", "lower layer", "after head"],
        rows,
    )
    cv = lambda v: float(v.std() / v.mean())  # noqa: E731
    summary = (
        f"coefficient of variation of the weights: lower {cv(lo_n):.3f}, after head {cv(po_n):.3f} "
        f"(claim: lower is more even -> {'AGREES' if cv(lo_n) < cv(po_n) else 'DISAGREES'})\n"
        f"log||W1 e_k|| vs log||W2 W1 e_k||: slope {slope:.3f} (claim: 0.5 under small init -> "
        f"{'AGREES' if abs(slope - 0.5) < 0.1 else 'DISAGREES'})"
    )
    print(summary)
    out += [t, summary]
    # ---- (b, c, d) downstream tasks
    tasks = []
    disrupt = torch.zeros(D)
    disrupt[5] = 0.8
    base = torch.tensor(BASE)
    weak = base.clone()
    weak[9] = 0.35
    tasks.append(("disrupted feature 5 (p=0.8)", base, disrupt, 5))
    tasks.append(("too weak feature 9 (s=0.35)", weak, torch.zeros(D), 9))
    strong = base.clone()
    strong[0] = 4.0
    tasks.append(("too strong feature 0 (s=4)", strong, torch.zeros(D), 0))
    rows = []
    gaps: dict[tuple[str, float], float] = {}
    for name, s_t, d_t, j in tasks:
        for wd in (0.0, 0.03):
            w1, w2 = train(s_t, d_t, steps, wd, args.seed)
            a_pre, a_post = downstream(w1, w2, s_t, j, args.seed)
            gaps[(name, wd)] = a_pre - a_post
            rows.append(
                [
                    name,
                    f"{wd:g}",
                    f"{100 * a_pre:.1f}%",
                    f"{100 * a_post:.1f}%",
                    f"{100 * (a_pre - a_post):+.1f}",
                ]
            )
    t = print_table(
        "\n(b-d) downstream kNN accuracy on sign(z_j): pre- vs post-projection",
        ["task", "weight decay", "pre", "post", "pre - post"],
        rows,
    )
    verdicts = []
    for name, _, _, _ in tasks:
        g0, g1 = gaps[(name, 0.0)], gaps[(name, 0.03)]
        verdicts.append(
            f"{name}: pre wins by {100 * g0:+.1f} pts ({'AGREES' if g0 > 0 else 'DISAGREES'} with the paper); "
            f"with weight decay {100 * g1:+.1f} pts ({'gap shrinks: AGREES' if g1 < g0 - 0.005 else 'gap does not shrink: DISAGREES'})"
        )
    print("\n".join(verdicts))
    out += [t, "\n".join(verdicts)]
    save_text(args.out, "1_linear_theory.txt", "\n\n".join(out))
    assert math.isfinite(slope)


if __name__ == "__main__":
    main()
