"""How often does a layer-choice rule pick a layer as good as the best one? Measured.

Pretrains a grid of small CNNs on data the package registries ship, sweeps every layer with
labels (the oracle: a linear probe per layer with paired bootstrap intervals over test images;
its best layer and the layers tied with it) and without labels, and reports per rule how often
the chosen layer is tied with the oracle's best, and the mean and worst points of linear-probe
accuracy lost against the best.

Grid (4 settings x 3 heads x 3 seeds = 36 models, 54 cases of model x downstream task):
  digits            SimCLR on scikit-learn's 1,797 8x8 digits        -> digit (no mismatch)
  fashion           SimCLR on Fashion-MNIST                          -> item (no mismatch)
  digit_on_fashion  SimCLR on MNIST digits over dimmed Fashion-MNIST items, each view drops the
                    digit with p = 0.8                               -> item (no mismatch),
                                                                        digit (disrupted)
  coarse_to_fine    SupCon on 4 coarse Fashion-MNIST groups (ours)   -> coarse (same labels),
                                                                        fine (sub-class)
  heads: none, MLP (2 layers, BN, ReLU), reweighting head (kappa = 1.05, fixed).
Layers swept: the three conv blocks (2x2 average-pooled), the backbone output (fc), every hidden
activation of the head, the head output.

Rules: every label-free measure (argmax or argmin in its direction), ``recommend_layer`` in each
of its modes, and the fixed defaults users take today: the post-projection output, the backbone
output, the last block.

Full run: about 35 min of CPU time on 2 cores (models and evaluations are cached under
``$HEADKIT_DATA/runs``, so a rerun of the table takes seconds). ``--smoke``: a tiny grid (stand-in
images when the registry data is missing) that checks the code runs; it prints no conclusions.

    bash scripts/get_data.sh
    python benchmarks/bench_layer_choice.py [--smoke] [--seeds 3] [--out runs/bench_layer_choice]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "paper")
)

import _paper as P

import headkit.probe as hp

EVAL_VERSION = "1"  # bump when the evaluation changes (invalidates cached evaluations)


# ----------------------------------------------------------------------------- the grid

HEADS = ["none", "mlp", "reweight"]  # reweight: kappa = 1.05, fixed
GRID = ["digits", "fashion", "digit_on_fashion", "coarse_to_fine"]  # see _paper.SETTINGS


# ----------------------------------------------------------------------------- the measures


def _eig(x: Tensor) -> Tensor:
    """Eigenvalues of the covariance of the centred features, descending (float64)."""
    x = x.double()
    x = x - x.mean(0, keepdim=True)
    return (torch.linalg.svdvals(x) ** 2 / max(1, x.shape[0] - 1)).clamp_min(0)


def alpha_req(x: Tensor) -> float:
    """alpha-ReQ (Agrawal et al. 2022): decay alpha of the eigenspectrum, lambda_i ~ i^-alpha,
    fitted on log-log over the eigenvalues above 1e-8 of the largest; good near alpha = 1."""
    ev = _eig(x)
    ev = ev[ev > ev[0] * 1e-8]
    if ev.numel() < 3:
        return float("nan")
    i = torch.arange(1, ev.numel() + 1, dtype=torch.float64)
    a = torch.stack([i.log(), torch.ones_like(i)], 1)
    sol = torch.linalg.lstsq(a, ev.log()[:, None]).solution
    return float(-sol[0, 0])


def nesum(x: Tensor) -> float:
    """NESum (He and Ozay 2022): sum of the covariance eigenvalues over the largest."""
    ev = _eig(x)
    return float(ev.sum() / ev[0].clamp_min(1e-300))


def lidar(views: Tensor, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR (Thilak et al. 2023, arXiv 2312.04000): effective rank of the LDA matrix with each
    sample's augmented views as one class. ``views``: (n, q, D)."""
    v = views.double()
    n, q, d = v.shape
    mu = v.mean(1)  # (n, D)
    g = mu.mean(0, keepdim=True)
    sb = (mu - g).T @ (mu - g) / max(1, n - 1)
    w = (v - mu[:, None]).reshape(n * q, d)
    sw = w.T @ w / max(1, n * (q - 1)) + delta * torch.eye(d, dtype=v.dtype)
    ew, uw = torch.linalg.eigh(sw)
    inv_sqrt = uw @ torch.diag(ew.clamp_min(1e-12).rsqrt()) @ uw.T
    lam = torch.linalg.eigvalsh(inv_sqrt @ sb @ inv_sqrt).clamp_min(0)
    p = lam / lam.sum().clamp_min(1e-300) + eps
    return float(torch.exp(-(p * p.log()).sum()))


# name -> (function of the features, direction): "max", "min" or a target value
LABEL_FREE: dict[str, tuple[Callable[[Tensor], float], str | float]] = {
    "rankme": (hp.rankme, "max"),
    "unevenness": (lambda x: hp.feature_spectrum(x).unevenness, "min"),
    "alpha_req": (alpha_req, 1.0),
    "nesum": (nesum, "max"),
}


def pick(scores: dict[str, float], direction: str | float) -> str:
    """The layer a measure picks (the first in depth order on exact ties)."""
    items = [(k, v) for k, v in scores.items() if math.isfinite(v)]
    if not items:
        return next(iter(scores))
    if direction == "max":
        return max(items, key=lambda kv: kv[1])[0]
    if direction == "min":
        return min(items, key=lambda kv: kv[1])[0]
    return min(items, key=lambda kv: abs(kv[1] - float(direction)))[0]


# ----------------------------------------------------------------------------- one model


def views_of(x: Tensor, s: P.Setting, n: int, q: int, seed: int) -> Tensor:
    """``q`` augmented views of ``n`` images, (n * q, C, H, W), sample-major."""
    g = torch.Generator().manual_seed(seed)
    xs = x[:n].repeat_interleave(q, 0)
    return P.augment(xs, g, **s.aug)


def evaluate(
    model: P.WithHead, s: P.Setting, data: P.Data, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    layers, roles = P.sweep_layers(model)
    f_tr = P.layer_features(model, data.train_x, layers)
    f_te = P.layer_features(model, data.test_x, layers)
    n_lf = min(2000, data.train_x.shape[0])
    scores: dict[str, dict[str, float]] = {}
    for name, (fn, _) in LABEL_FREE.items():
        scores[name] = {k: fn(f_tr[k][:n_lf]) for k in layers}
    n_v, q = (64, 4) if args.smoke else (500, 4)
    fv = P.layer_features(model, views_of(data.train_x, s, n_v, q, seed + 7), layers)
    scores["lidar"] = {k: lidar(fv[k].reshape(n_v, q, -1)) for k in layers}
    tasks = {}
    for task in s.tasks:
        tasks[task] = P.oracle(
            f_tr, data.train_y[task], f_te, data.test_y[task], seed, 200 if args.smoke else 1000
        )
    return {"layers": layers, "roles": roles, "scores": scores, "tasks": tasks}


def cached_eval(
    model: P.WithHead, s: P.Setting, head: str, seed: int, data: P.Data, args: argparse.Namespace
) -> dict[str, Any]:
    key = P.cache_key(
        cfg=P.asdict(P.Pretrain(s.name, head=head, seed=seed)), ev=EVAL_VERSION, real=data.real
    )
    path = os.path.join(P.RUNS, "bench_layer_choice_eval", key + ".json")
    if not args.smoke and not args.no_cache and os.path.exists(path):
        with open(path) as fh:
            return dict(json.load(fh))
    res = evaluate(model, s, data, seed, args)
    if not args.smoke:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(res, fh)
    return res


# ----------------------------------------------------------------------------- rules and table

DIRECTIONS: dict[str, str | float] = {
    **{k: d for k, (_, d) in LABEL_FREE.items()},
    "lidar": "max",
}
MEASURE_NAMES = {
    "rankme": "RankMe (max)",
    "unevenness": "unevenness (min)",
    "alpha_req": "alpha-ReQ (closest to 1)",
    "nesum": "NESum (max)",
    "lidar": "LiDAR (max)",
}


@dataclass
class Case:
    setting: str
    task: str
    mismatch: str
    head: str
    seed: int
    layers: list[str]
    acc: dict[str, float]
    best: str
    tied: list[str]
    picks: dict[str, str] = field(default_factory=dict)


def rules_of(ev: dict[str, Any], model_has_head: bool) -> dict[str, str]:
    layers = ev["layers"]
    picks = {
        f"label-free: {MEASURE_NAMES[m]}": pick(ev["scores"][m], DIRECTIONS[m]) for m in DIRECTIONS
    }
    picks["fixed: post-projection output"] = "head" if model_has_head else "backbone.fc"
    picks["fixed: backbone output"] = "backbone.fc"
    picks["fixed: last block"] = "backbone.block3"
    assert all(p in layers for p in picks.values())
    return picks


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    z = 1.96
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def rule_table(cases: list[Case]) -> tuple[str, list[dict[str, Any]]]:
    rules = list(cases[0].picks)
    rows, out = [], []
    for r in rules:
        hits = sum(c.picks[r] in c.tied for c in cases)
        lost = [100 * (c.acc[c.best] - c.acc[c.picks[r]]) for c in cases]
        lo, hi = wilson(hits, len(cases))
        rows.append(
            [
                r,
                f"{hits}/{len(cases)} = {100 * hits / len(cases):.0f}% ({100 * lo:.0f}-{100 * hi:.0f})",
                f"{np.mean(lost):.2f}",
                f"{np.max(lost):.2f}",
            ]
        )
        out.append(
            {
                "rule": r,
                "hits": hits,
                "cases": len(cases),
                "mean_lost": float(np.mean(lost)),
                "worst_lost": float(np.max(lost)),
            }
        )
    text = P.print_table(
        "rule                  tied with the oracle's best (95% Wilson interval)  points lost: mean  worst",
        ["rule", "tied with oracle's best", "mean pts lost", "worst pts lost"],
        rows,
    )
    return text, out


def depth_table(cases: list[Case]) -> str:
    """Question (1): the oracle's best layer vs the mismatch between pretraining and task."""
    rows = []
    groups: dict[tuple[str, str, str, str], list[Case]] = {}
    for c in cases:
        groups.setdefault((c.setting, c.task, c.mismatch, c.head), []).append(c)
    for (st, task, mm, head), cs in groups.items():
        layers = cs[0].layers
        best_idx = [layers.index(c.best) for c in cs]
        tied_all = [k for k in layers if all(k in c.tied for c in cs)]
        pre = [c.acc["backbone.fc"] for c in cs]
        post = [c.acc["head" if "head" in c.layers else "backbone.fc"] for c in cs]
        best = [c.acc[c.best] for c in cs]
        rows.append(
            [
                f"{st} -> {task}",
                mm,
                head,
                ", ".join(short(c.best) for c in cs),
                ", ".join(short(k) for k in tied_all) or "-",
                P.fmt_stat(best),
                P.fmt_stat(pre),
                P.fmt_stat([a - b for a, b in zip(pre, post, strict=True)], sign=True)
                if head != "none"
                else "-",
                f"{np.mean(best_idx):.1f} of {len(layers) - 1}",
            ]
        )
    return P.print_table(
        "\noracle's best layer per setting, task and head (accuracies: mean +- sd [95% t-interval] over seeds)",
        [
            "pretraining -> task",
            "mismatch",
            "head",
            "best layer per seed",
            "tied with best in every seed",
            "best acc",
            "backbone output acc",
            "pre - post (pts)",
            "mean best depth",
        ],
        rows,
    )


def short(layer: str) -> str:
    return {
        "backbone.block1": "block1",
        "backbone.block2": "block2",
        "backbone.block3": "block3",
        "backbone.fc": "backbone",
        "head": "head out",
    }.get(layer, layer.replace("head.layers.", "head."))


# ----------------------------------------------------------------------------- main


def main() -> None:
    p = P.parser(__doc__)
    p.set_defaults(out="runs/bench_layer_choice")
    p.add_argument("--settings", nargs="*", default=GRID, help="a subset of the grid's settings")
    p.add_argument("--heads", nargs="*", default=HEADS, help="a subset of the grid's heads")
    args = p.parse_args()
    P.setup(args)
    t0, c0 = time.time(), time.process_time()
    settings = [P.SETTINGS[n] for n in GRID if n in args.settings]
    heads = [h for h in HEADS if h in args.heads]
    seeds = list(range(args.seeds))
    cases: list[Case] = []
    real = P.have_real_data()
    if not real:
        if not args.smoke:
            raise SystemExit(
                f"real data not found in {P.CACHE}: run `bash scripts/get_data.sh` first"
            )
        print(f"WARNING: no registry data in {P.CACHE}: stand-in images (smoke run only)")
    for s in settings:
        data = P.load_setting(s.name, args.smoke)
        for head in heads:
            for seed in seeds:
                t1 = time.time()
                cfg = P.Pretrain(s.name, head=head, seed=seed)
                model, meta = P.pretrain(cfg, data, smoke=args.smoke, use_cache=not args.no_cache)
                t1 = time.time()
                ev = cached_eval(model, s, head, seed, data, args)
                picks = rules_of(ev, model.has_head)
                for task, mm in s.tasks.items():
                    o = ev["tasks"][task]
                    cases.append(
                        Case(
                            s.name,
                            task,
                            mm,
                            head,
                            seed,
                            ev["layers"],
                            o["acc"],
                            o["best"],
                            o["tied"],
                            picks,
                        )
                    )
                print(
                    f"{s.name:16s} {head:8s} seed {seed}: trained in {meta['seconds']:.0f}s (loss {meta['loss']:.3f}), "
                    f"evaluated in {time.time() - t1:.0f}s; oracle best "
                    + ", ".join(f"{t}: {short(ev['tasks'][t]['best'])}" for t in s.tasks),
                    flush=True,
                )
    banner = (
        "SMOKE RUN (tiny grid, 1 epoch"
        + ("" if real else ", stand-in images")
        + "): checks that the code runs; the numbers below mean nothing\n"
        if args.smoke
        else ""
    )
    n_models = len(settings) * len(heads) * len(seeds)
    title = f"\n{banner}{n_models} models, {len(cases)} cases (model x downstream task)\n"
    print(title)
    t_rules, rows = rule_table(cases)
    t_depth = depth_table(cases)
    wall, cpu = time.time() - t0, time.process_time() - c0
    foot = f"\nwall time {wall / 60:.1f} min, CPU time {cpu / 60:.1f} min, torch threads {torch.get_num_threads()}"
    print(foot)
    os.makedirs(args.out, exist_ok=True)
    P.save_text(args.out, "bench_layer_choice.txt", title + t_rules + "\n" + t_depth + "\n" + foot)
    with open(os.path.join(args.out, "bench_layer_choice.json"), "w") as fh:
        json.dump(
            {"smoke": args.smoke, "rules": rows, "cases": [asdict(c) for c in cases]}, fh, indent=1
        )


if __name__ == "__main__":
    main()
