"""Paper claim 1 (Xue et al., ICLR 2024, Sec. 3): the linear theory, over seeds.

A linear model f(x) = W_L ... W_1 x is trained with the spectral contrastive loss
(HaoChen et al. 2021) L = -2 E[f(x)^T f(x+)] + E[(f(x)^T f(x'))^2] (SGD, L2 weight decay) on
synthetic inputs whose coordinate k carries feature z_k with strength s_k
(x_k = s_k z_k + noise). Augmentation resamples ("disrupts") a feature independently in each
view with some probability.

Claims tested (each over --seeds seeds, mean +- sd [95% t-interval], with a verdict):
  (a) progressive feature weighting, 2 layers: the lower layer W1 weights features more evenly
      than the output W2 W1; from small initialisation ||W1 e_k|| ~ ||W2 W1 e_k||^0.5;
  (b-d) pre-projection (W1 x) beats post-projection (W2 W1 x) on a downstream task that needs a
      feature augmentation disrupts, or that is too weak or too strong in pretraining;
  (wd) weight decay shrinks that advantage: weight decay swept over 0 and 1e-4 ... 1 (four
      orders of magnitude), pre - post per value, and its change from no weight decay (paired:
      every weight decay starts from the same initialisation and sees the same data per seed);
  (e) deeper linear nets (3 and 4 layers): the weighting grows more uneven with every layer, and
      layer l's weights follow the output's as ||W_l..W_1 e_k|| ~ ||W_L..W_1 e_k||^(l/L).
Downstream: a ridge-regularised linear readout predicting sign(z_j) from 1,000 labelled samples
(4,000 test samples), on the representation scaled to a mean squared norm of D, with a fixed
penalty (0.1 per labelled sample, never tuned). The weighting matters because a feature the
representation weights down needs a large readout weight, which the penalty makes costly (a
standardised, unpenalised probe would undo any invertible W1). 0.1's kNN readout (k = 15) was at
chance for every feature but a dominant one: with 11 other features as distractors the
neighbours of a sample say nothing about one coordinate's sign.

Training: every weight starts from N(0, 0.1^2) and takes 3,000 SGD steps of 512 pairs. The
gradient of this loss is cubic in the weights, so a net started much smaller does not move in
any affordable number of steps: 0.1's version of this script started from 1e-3 and after its
1,500 steps the weights were still at their initial values (its weight-decay conclusion came
from untrained nets). The script now stops with an error when the output weights stay at the
scale of the initialisation, and computes the weighting claims over the features the net has
learned (output weight >= 5% of the largest).

Full run: about 8 min on 2 cores (10 seeds; every seed and weight decay trains at once).
``--smoke`` (CI) runs tiny sizes and prints no verdicts.

    python examples/paper/1_linear_theory.py [--smoke] [--seeds 10]
"""

from __future__ import annotations

import time

import torch
from _paper import claim, fmt_stat, parser, print_table, save_text, seed_stats, setup

D = 12
# strengths: feature 0 is "too strong", 9 is "too weak", 5 is disrupted by augmentation
BASE = [2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
GRADED = [2.0, 1.6, 1.3, 1.1, 0.9, 0.75, 0.6, 0.5, 0.4, 0.33, 0.27, 0.22]
NOISE = 0.3
N_TRAIN, N_TEST = 1000, 4000  # downstream readout: labelled samples, test samples
RIDGE = 0.1  # the readout's penalty per labelled sample (representations scaled to E||r||^2 = D)
STEPS, INIT, LR = 3000, 0.1, 0.05
LEARNED = 0.05  # a feature counts as learned when its output weight is >= 5% of the largest
WEIGHT_DECAYS = [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 0.3, 1.0]


def sample(
    shape: tuple[int, ...], s: torch.Tensor, disrupt: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Latents z, a clean input x and two augmented views, each ``(*shape, D)``."""
    z = torch.randn(*shape, D, generator=g)

    def view() -> torch.Tensor:
        keep = torch.rand(*shape, D, generator=g) >= disrupt
        zv = torch.where(keep, z, torch.randn(*shape, D, generator=g))
        return s * zv + NOISE * torch.randn(*shape, D, generator=g)

    x1, x2 = view(), view()
    x = s * z + NOISE * torch.randn(*shape, D, generator=g)
    return z, x, x1, x2


def train(
    s: torch.Tensor,
    disrupt: torch.Tensor,
    steps: int,
    wds: list[float],
    n_seeds: int,
    depth: int = 2,
    init: float = INIT,
    lr: float = LR,
    batch: int = 512,
) -> list[torch.Tensor]:
    """Train W_1 .. W_depth (each D x D, from ``init``-scaled Gaussians) with SGD and L2 weight
    decay, for every weight decay and seed at once. Returns the layers, each (W, S, D, D).

    Seed ``i`` fixes the initialisation and the data stream; every weight decay sees the same
    ones, so differences between weight decays are paired.
    """
    gen = torch.Generator().manual_seed(1234)
    nw = len(wds)
    ws = [
        (init * torch.randn(1, n_seeds, D, D, generator=gen)).repeat(nw, 1, 1, 1).requires_grad_()
        for _ in range(depth)
    ]
    decay = torch.tensor(wds).view(nw, 1, 1, 1)
    for _ in range(steps):
        _, _, x1, x2 = sample((1, n_seeds, batch), s, disrupt, gen)
        f1, f2 = x1.expand(nw, -1, -1, -1), x2.expand(nw, -1, -1, -1)
        for w in ws:
            f1, f2 = f1 @ w.transpose(-1, -2), f2 @ w.transpose(-1, -2)
        pos_i = (f1 * f2).sum(-1)  # (W, S, n)
        # sum over all pairs (i, j) of (f1_i . f2_j)^2 = trace((F1^T F1)(F2^T F2)): O(n D^2)
        all_pairs = ((f1.transpose(-1, -2) @ f1) * (f2.transpose(-1, -2) @ f2)).sum((-1, -2))
        neg = (all_pairs - pos_i.pow(2).sum(-1)) / (batch * (batch - 1))
        loss = (-2 * pos_i.mean(-1) + neg).sum()  # independent runs: sum of their losses
        grads = torch.autograd.grad(loss, ws)
        with torch.no_grad():
            for w, gr in zip(ws, grads, strict=True):
                w -= lr * (gr + decay * w)
    return [w.detach() for w in ws]


def ridge_acc(
    train_r: torch.Tensor, ytr: torch.Tensor, test_r: torch.Tensor, yte: torch.Tensor
) -> float:
    """Accuracy of a ridge readout of ``y`` (0/1) from the representation, fixed penalty."""
    scale = (D / train_r.pow(2).sum(1).mean()).sqrt()
    a, b = train_r.double() * scale, test_r.double() * scale
    t = 2.0 * ytr.double() - 1.0
    n = a.shape[0]
    w = torch.linalg.solve(a.T @ a + RIDGE * n * torch.eye(D, dtype=a.dtype), a.T @ t)
    return float(((b @ w > 0).long() == yte).float().mean())


def downstream(ws: list[torch.Tensor], s: torch.Tensor, j: int, seed: int) -> tuple[float, float]:
    """Readout accuracy on sign(z_j) from W1 x (pre) and W2 W1 x (post); ``ws``: (D, D) each."""
    g = torch.Generator().manual_seed(seed + 100)
    z, x, _, _ = sample((N_TRAIN + N_TEST,), s, torch.zeros(D), g)
    y = (z[:, j] > 0).long()
    pre, post = x @ ws[0].T, x @ ws[0].T @ ws[1].T
    n = N_TRAIN
    return (
        ridge_acc(pre[:n], y[:n], pre[n:], y[n:]),
        ridge_acc(post[:n], y[:n], post[n:], y[n:]),
    )


def cv(v: torch.Tensor) -> float:
    return float(v.std() / v.mean())


def check_trained(out_norms: torch.Tensor, what: str, smoke: bool) -> None:
    """Stop when the net never left its initialisation (output weights ~ init^depth)."""
    if not smoke and float(out_norms.max()) < 0.1:
        raise SystemExit(
            f"{what}: the linear net did not train (largest output weight "
            f"{float(out_norms.max()):.2e}); raise the initial scale, the learning rate or the steps"
        )


def learned(out_norms: torch.Tensor) -> torch.Tensor:
    """The features the trained net has picked up: output weight >= LEARNED x the largest.
    (The others sit near their initial values, where no relation between layers holds.)"""
    return out_norms >= LEARNED * out_norms.max()


def col_norms(ws: list[torch.Tensor]) -> list[torch.Tensor]:
    """||W_l .. W_1 e_k|| for l = 1..L: how much of input coordinate k reaches layer l."""
    out, prod = [], torch.eye(D)
    for w in ws:
        prod = w @ prod
        out.append(prod.norm(dim=0))
    return out


def slope(x: torch.Tensor, y: torch.Tensor) -> float:
    """Least-squares slope of log y on log x (coordinates where both are > 0)."""
    keep = (x > 1e-8) & (y > 1e-8)
    a = torch.stack([x[keep].log(), torch.ones(int(keep.sum()))], 1)
    return float(torch.linalg.lstsq(a, y[keep].log()[:, None]).solution[0])


def band_verdict(values: list[float], lo: float, hi: float, smoke: bool) -> str:
    """AGREES when the seeds' 95% interval lies inside [lo, hi], DISAGREES when it lies outside,
    INCONCLUSIVE when it straddles an end."""
    if smoke:
        return "smoke run: no verdict"
    _, _, a, b = seed_stats(values)
    if lo <= a and b <= hi:
        return "AGREES"
    if b < lo or a > hi:
        return "DISAGREES"
    return "INCONCLUSIVE"


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(seeds=10)
    args = p.parse_args()
    setup(args)
    t0 = time.time()
    smoke = args.smoke
    steps = 60 if smoke else STEPS
    seeds = list(range(args.seeds))
    wds = WEIGHT_DECAYS[:2] if smoke else WEIGHT_DECAYS
    out: list[str] = []
    if smoke:
        print("SMOKE RUN (tiny sizes): checks that the code runs; the numbers mean nothing\n")

    # ---- (a) progressive feature weighting and the square-root relation, 2 layers
    s = torch.tensor(GRADED)
    lo_w, po_w, cv_gap, slopes, n_learned, imbalance = [], [], [], [], [], []
    trained = train(s, torch.zeros(D), steps, [0.0], len(seeds))
    for seed in seeds:
        # the weight each layer puts on input feature k: ||W1 e_k|| and ||W2 W1 e_k||
        c1, c2 = col_norms([w[0, seed] for w in trained])
        check_trained(c2, "(a)", smoke)
        w1, w2 = trained[0][0, seed], trained[1][0, seed]
        # gradient flow conserves W1 W1^T - W2^T W2; the square-root relation needs it ~ 0
        imbalance.append(float((w1 @ w1.T - w2.T @ w2).norm() / (w2 @ w1).norm()))
        keep = learned(c2)
        n_learned.append(float(keep.sum()))
        lo_w.append(c1 / c1.max())
        po_w.append(c2 / c2.max())
        cv_gap.append(cv(po_w[-1][keep]) - cv(lo_w[-1][keep]))
        slopes.append(slope(c2[keep], c1[keep]))
    lo_m, po_m = torch.stack(lo_w).mean(0), torch.stack(po_w).mean(0)
    rows = [[str(k), f"{s[k]:.2f}", f"{lo_m[k]:.3f}", f"{po_m[k]:.3f}"] for k in range(D)]
    t = print_table(
        f"(a) the weight each layer puts on feature k, ||W1 e_k|| and ||W2 W1 e_k||, normalised to "
        f"the largest; mean over {len(seeds)} seed(s); {fmt_stat(n_learned, scale=1.0)} of "
        f"{D} features learned (output weight >= {LEARNED:.0%} of the largest)",
        ["feature", "strength", "lower layer W1", "after head W2 W1"],
        rows,
    )
    slope_v = band_verdict(slopes, 0.4, 0.6, smoke)
    lines = [
        claim(
            "CV(after head) - CV(lower layer) over the learned features (claim: > 0, the lower "
            "layer is more even)",
            cv_gap,
            ">0",
            smoke,
            scale=1.0,
            digits=3,
        ),
        f"slope of log||W1 e_k|| on log||W2 W1 e_k|| over the learned features: "
        f"{fmt_stat(slopes, scale=1.0, digits=3)} (claim: 0.5 +- 0.1) -> {slope_v}",
        f"(the relation assumes balanced layers; imbalance ||W1 W1^T - W2^T W2|| / ||W2 W1|| = "
        f"{fmt_stat(imbalance, scale=1.0, digits=3)}, conserved from the initialisation)",
    ]
    print("\n".join(lines))
    out += [t, "\n".join(lines)]

    # ---- (b-d) downstream tasks, over weight decay
    tasks = []
    disrupt = torch.zeros(D)
    disrupt[5] = 0.8
    base = torch.tensor(BASE)
    weak = base.clone()
    weak[9] = 0.35
    strong = base.clone()
    strong[0] = 4.0
    tasks.append(("disrupted feature 5 (p=0.8)", base, disrupt, 5))
    tasks.append(("too weak feature 9 (s=0.35)", weak, torch.zeros(D), 9))
    tasks.append(("too strong feature 0 (s=4)", strong, torch.zeros(D), 0))
    if smoke:
        tasks = tasks[:1]
    rows, verdicts = [], []
    for name, s_t, d_t, j in tasks:
        gaps: dict[float, list[float]] = {}
        # SGD's stable step shrinks with the square of the input scale (the loss is quartic in
        # it): a stronger feature than BASE's strongest gets a proportionally smaller step
        lr_t = LR * min(1.0, (max(BASE) / float(s_t.max())) ** 2)
        trained = train(s_t, d_t, steps, wds, len(seeds), lr=lr_t)
        for wi, wd in enumerate(wds):
            # SGD on this quartic loss can diverge (a strong input feature): such a net's
            # weights are inf / nan, and a readout of them is meaningless, not a 50% result
            bad = sum(
                not all(bool(torch.isfinite(w[wi, seed]).all()) for w in trained) for seed in seeds
            )
            if bad:
                what = f"diverged in {bad} of {len(seeds)} seeds"
                rows.append([name, f"{wd:g}", what, what, "-", "-"])
                continue
            pres, posts = [], []
            for seed in seeds:
                if wd == 0.0:
                    check_trained(col_norms([w[wi, seed] for w in trained])[1], name, smoke)
                a_pre, a_post = downstream([w[wi, seed] for w in trained], s_t, j, seed)
                pres.append(a_pre)
                posts.append(a_post)
            gaps[wd] = [a - b for a, b in zip(pres, posts, strict=True)]
            change = (
                "-"
                if wd == 0 or 0.0 not in gaps
                else fmt_stat(
                    [g - g0 for g, g0 in zip(gaps[wd], gaps[0.0], strict=True)], sign=True
                )
            )
            rows.append(
                [
                    name,
                    f"{wd:g}",
                    fmt_stat(pres),
                    fmt_stat(posts),
                    fmt_stat(gaps[wd], sign=True),
                    change,
                ]
            )
        if 0.0 not in gaps:
            verdicts.append(
                f"{name}: no verdict: training diverged without weight decay (learning rate "
                f"{lr_t:g} is too large for this input scale)"
            )
            continue
        verdicts.append(
            claim(f"{name}: pre - post without weight decay (claim: > 0)", gaps[0.0], ">0", smoke)
        )
        for wd in wds[1:]:
            if wd not in gaps:
                verdicts.append(f"{name}: weight decay {wd:g}: no verdict (training diverged)")
                continue
            diff = [g - g0 for g, g0 in zip(gaps[wd], gaps[0.0], strict=True)]
            verdicts.append(
                claim(
                    f"{name}: change of pre - post at weight decay {wd:g} (claim: < 0, it shrinks)",
                    diff,
                    "<0",
                    smoke,
                )
            )
    t = print_table(
        "\n(b-d) downstream ridge-readout accuracy on sign(z_j), pre- vs post-projection, over weight decay "
        f"(SGD, L2); mean +- sd [95% t-interval] over {len(seeds)} seed(s), points",
        ["task", "weight decay", "pre", "post", "pre - post", "change from wd = 0"],
        rows,
    )
    print("\n".join(verdicts))
    out += [t, "\n".join(verdicts)]

    # ---- (e) deeper linear nets: progressive weighting layer by layer
    rows, lines = [], []
    for depth in (3,) if smoke else (3, 4):
        cvs: list[list[float]] = []
        sl: list[list[float]] = []
        trained = train(s, torch.zeros(D), steps, [0.0], len(seeds), depth=depth, lr=0.02)
        for seed in seeds:
            norms = col_norms([w[0, seed] for w in trained])
            check_trained(norms[-1], f"(e) {depth} layers", smoke)
            keep = learned(norms[-1])
            cvs.append([cv(c[keep]) for c in norms])
            sl.append([slope(norms[-1][keep], c[keep]) for c in norms[:-1]])
        for layer in range(depth):
            rows.append(
                [
                    f"{depth} layers",
                    " ".join(f"W{i}" for i in range(layer + 1, 0, -1)),
                    fmt_stat([c[layer] for c in cvs], scale=1.0, digits=3),
                    fmt_stat([v[layer] for v in sl], scale=1.0, digits=3)
                    if layer < depth - 1
                    else "1 (output)",
                    f"{(layer + 1) / depth:.3f}" if layer < depth - 1 else "-",
                ]
            )
        for layer in range(depth - 1):
            target = (layer + 1) / depth
            sv = [v[layer] for v in sl]
            lines.append(
                f"{depth} layers: slope of layer {layer + 1} on the output {fmt_stat(sv, scale=1.0, digits=3)} "
                f"(claim: the theory's {target:.3f} +- 0.1) -> "
                + band_verdict(sv, target - 0.1, target + 0.1, smoke)
            )
            lines.append(
                claim(
                    f"{depth} layers: CV(layer {layer + 2}) - CV(layer {layer + 1}) (claim: > 0, more uneven with depth)",
                    [c[layer + 1] - c[layer] for c in cvs],
                    ">0",
                    smoke,
                    scale=1.0,
                    digits=3,
                )
            )
    t = print_table(
        "\n(e) deeper linear nets: unevenness (coefficient of variation over the learned features "
        "of the weights ||W_l..W_1 e_k||) at each depth, and the slope of log||W_l..W_1 e_k|| on "
        "log||W_L..W_1 e_k||",
        ["net", "layer", "CV of weights", "slope vs output", "theory l/L"],
        rows,
    )
    print("\n".join(lines))
    out += [t, "\n".join(lines)]
    tail = f"total time {time.time() - t0:.0f} s"
    print(tail)
    save_text(args.out, "1_linear_theory.txt", "\n\n".join([*out, tail]))


if __name__ == "__main__":
    main()
