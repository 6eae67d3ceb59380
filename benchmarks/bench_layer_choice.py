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
Layers swept: the three conv blocks (global average pool), the backbone output (fc), every hidden
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

EVAL_VERSION = "2"  # bump when the evaluation changes (invalidates cached evaluations)


# ----------------------------------------------------------------------------- the grid

HEADS = ["none", "mlp", "reweight"]  # reweight: kappa = 1.05, fixed
GRID = ["digits", "fashion", "digit_on_fashion", "coarse_to_fine"]  # see _paper.SETTINGS


# ----------------------------------------------------------------------------- the rules

LABEL_FREE = ["rankme", "unevenness", "alpha_req", "nesum", "lidar"]  # headkit.probe.RULES
FEW_LABEL = ["knn_loo", "linear_cv"]
LABELS_PER_CLASS = 10  # the few-label rules see this many labelled images per class


def views_of(x: Tensor, s: P.Setting, n: int, q: int, seed: int) -> Tensor:
    """``q`` augmented views (the pretraining augmentation) of ``n`` images, (n * q, C, H, W),
    sample-major."""
    g = torch.Generator().manual_seed(seed)
    xs = x[:n].repeat_interleave(q, 0)
    return P.augment(xs, g, **s.aug)


def evaluate(
    model: P.WithHead, s: P.Setting, data: P.Data, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Every rule's pick and the oracle, for one model and each of its downstream tasks."""
    layers, roles = P.sweep_layers(model)
    # the downstream training images, unlabelled: what a label-free rule sees
    feats = P.layer_features(model, data.train_x, layers)
    n_v, q = (64, 4) if args.smoke else (500, 4)
    fv = P.layer_features(model, views_of(data.train_x, s, n_v, q, seed + 7), layers)
    views = {k: v.reshape(n_v, q, -1) for k, v in fv.items()}
    label_free: dict[str, dict[str, Any]] = {}
    for rule in LABEL_FREE:
        c = hp.choose_layer(
            feats, rule=rule, views=views if rule == "lidar" else None, n_boot=0, seed=seed
        )
        label_free[rule] = {"layer": c.layer, "scores": c.scores, "direction": c.direction}
    oracle = P.probe_layers(model, data, list(s.tasks), seed=seed, smoke=args.smoke)
    tasks = {}
    for task in s.tasks:
        few = {}
        for rule in FEW_LABEL:
            c = hp.choose_layer(
                feats,
                data.train_y[task],
                rule=rule,
                labels_per_class=LABELS_PER_CLASS,
                n_boot=0,
                seed=seed,
                probe_kwargs={"epochs": 10} if args.smoke else None,
            )
            few[rule] = c.layer
        tasks[task] = {**oracle[task], "few_label": few}
    return {"layers": layers, "roles": roles, "label_free": label_free, "tasks": tasks}


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

RULE_NAMES = {
    "rankme": "label-free: RankMe (highest)",
    "unevenness": "label-free: unevenness (lowest)",
    "alpha_req": "label-free: alpha-ReQ (closest to 1)",
    "nesum": "label-free: NESum (highest)",
    "lidar": "label-free: LiDAR (highest)",
    "knn_loo": f"{LABELS_PER_CLASS} labels/class: kNN leave-one-out",
    "linear_cv": f"{LABELS_PER_CLASS} labels/class: linear probe, 5-fold CV",
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


def rules_of(ev: dict[str, Any], task: str, model_has_head: bool) -> dict[str, str]:
    """The layer each rule picks for one model and task."""
    picks = {RULE_NAMES[r]: ev["label_free"][r]["layer"] for r in LABEL_FREE}
    picks.update({RULE_NAMES[r]: ev["tasks"][task]["few_label"][r] for r in FEW_LABEL})
    picks["fixed: post-projection output"] = "head" if model_has_head else "backbone.fc"
    picks["fixed: backbone output"] = "backbone.fc"
    picks["fixed: last block"] = "backbone.block3"
    assert all(p in ev["layers"] for p in picks.values()), picks
    return picks


def mismatched(c: Case) -> bool:
    """Whether the task needs what pretraining discards (a disrupted feature, sub-classes)."""
    return not c.mismatch.startswith("none")


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    z = 1.96
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def rule_table(cases: list[Case], title: str) -> tuple[str, list[dict[str, Any]]]:
    """Per rule: how often its layer is tied with the oracle's best (with a 95% Wilson interval
    over cases), and the points of linear-probe accuracy lost against the best (mean with a 95%
    bootstrap interval over cases, and worst)."""
    rules = list(cases[0].picks)
    rows, out = [], []
    rng = np.random.default_rng(0)
    for r in rules:
        hits = sum(c.picks[r] in c.tied for c in cases)
        lost = np.array([100 * (c.acc[c.best] - c.acc[c.picks[r]]) for c in cases])
        lo, hi = wilson(hits, len(cases))
        boot = lost[rng.integers(0, len(lost), size=(2000, len(lost)))].mean(1)
        rows.append(
            [
                r,
                f"{hits}/{len(cases)} = {100 * hits / len(cases):.0f}% ({100 * lo:.0f}-{100 * hi:.0f})",
                f"{lost.mean():.2f} ({np.quantile(boot, 0.025):.2f}-{np.quantile(boot, 0.975):.2f})",
                f"{lost.max():.2f}",
            ]
        )
        out.append(
            {
                "rule": r,
                "hits": hits,
                "cases": len(cases),
                "mean_lost": float(lost.mean()),
                "worst_lost": float(lost.max()),
            }
        )
    text = P.print_table(
        title,
        ["rule", "tied with the oracle's best", "points lost: mean", "worst"],
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
                for task, mm in s.tasks.items():
                    o = ev["tasks"][task]
                    picks = rules_of(ev, task, model.has_head)
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
    t_rules, rows = rule_table(
        cases,
        "all cases: share of cases whose chosen layer is tied with the oracle's best (95% Wilson "
        "interval), points of accuracy lost against the best (mean, 95% bootstrap interval; worst)",
    )
    groups = sorted({mismatched(c) for c in cases})
    t_groups = []
    for group in groups:
        sub = [c for c in cases if mismatched(c) == group]
        t_groups.append(
            rule_table(
                sub,
                "\n"
                + (
                    "tasks that need what pretraining discards (disrupted digit, fine classes)"
                    if group
                    else "tasks that match pretraining (the pretraining classes or augmentation-kept features)"
                ),
            )[0]
        )
    t_depth = depth_table(cases)
    wall, cpu = time.time() - t0, time.process_time() - c0
    foot = f"\nwall time {wall / 60:.1f} min, CPU time {cpu / 60:.1f} min, torch threads {torch.get_num_threads()}"
    print(foot)
    os.makedirs(args.out, exist_ok=True)
    P.save_text(
        args.out,
        "bench_layer_choice.txt",
        "\n".join([title, t_rules, *t_groups, t_depth, foot]),
    )
    with open(os.path.join(args.out, "bench_layer_choice.json"), "w") as fh:
        json.dump(
            {"smoke": args.smoke, "rules": rows, "cases": [asdict(c) for c in cases]}, fh, indent=1
        )


if __name__ == "__main__":
    main()
