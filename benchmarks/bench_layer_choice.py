"""Which layer? A benchmark where the best layer moves, and how often each rule finds it.

Pretrains a grid of small encoders (five families tapped at every block, four objectives; see
``benchmarks/_layer_grid.py`` for the data, the families and the objectives), then for every
case (trained model x downstream task):

* the oracle: `headkit.probe.linear_probe` (public API, default arguments) on every candidate
  layer, trained on 2,000 images and tested on 1,000, with 95% paired bootstrap intervals over
  the test images; its best layer and the layers tied with it;
* every rule's pick: the label-free measures of `headkit.probe.RULES` (RankMe, unevenness,
  alpha-ReQ, NESum, LiDAR on the user's views), the few-label rules at 10 labels per class
  (kNN leave-one-out, 5-fold linear probe), the fixed defaults users take (last block, backbone
  output, post-projection, the DINOv2-style last-block class token), and new candidates (depth
  windows, augmentation invariance, closed-form few-label scores, combinations);

and reports per rule the share of cases whose pick is tied with the oracle's best (95% Wilson
interval) and the mean points lost against the best (95% bootstrap interval over cases), overall
and per family, objective and mismatch; and open question (1): how deep the best layer sits.

Stages (each cached under ``--cache``, so a rerun skips what is done and the rule analysis
reruns in seconds):

    train   pretrain the models and save every layer's features (float16 .npz)
    oracle  the linear probe of every layer for every task (saved per model)
    rules   the headkit rules' picks (saved per model)
    report  the tables, the plot, and headkit/probe/_bench_table.py (with --write-table)

``--stage all`` runs them in order. ``--shard k/n`` splits train/oracle/rules across processes.
``--smoke``: a tiny grid (1 seed, 1 epoch, stand-in images without the registry data) in a
temporary folder; it checks that the code runs and prints no conclusions.

    bash scripts/get_data.sh
    OMP_NUM_THREADS=1 python benchmarks/bench_layer_choice.py --threads 1 [--smoke] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _layer_grid as G  # noqa: E402
import _layer_rules as R  # noqa: E402

import headkit.probe as hp  # noqa: E402

ORACLE_VERSION = "2"  # bump when the oracle changes (e.g. the probe): recomputes the oracle
# The oracle is headkit.probe.linear_probe with its default arguments. The run recorded in
# docs/layer-choice.md used the Adam probe of that time with 30 epochs instead of its 100
# (``--oracle-epochs 30``; within 0.6 points of the default on 16 layer-task pairs); the
# default (0) calls linear_probe as it is now (the L-BFGS solver).
ORACLE_EPOCHS = 0
RULES_VERSION = "2"
LABEL_FREE = ["rankme", "unevenness", "alpha_req", "nesum", "lidar"]
FEW_LABEL = ["knn_loo", "linear_cv"]
LABELS_PER_CLASS = 10


# ----------------------------------------------------------------------------- cache


def paths(cache: str, cfg: G.Cfg) -> dict[str, str]:
    base = f"{cfg.name()}-{cfg.key()}"
    return {
        "feats": os.path.join(cache, "feats", base + ".npz"),
        "meta": os.path.join(cache, "feats", base + ".json"),
        "oracle": os.path.join(cache, "oracle", f"{base}-o{ORACLE_VERSION}e{ORACLE_EPOCHS}.npz"),
        "rules": os.path.join(cache, "rules", f"{base}-r{RULES_VERSION}.json"),
    }


def save_npz(path: str, **arrays: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def save_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


def load_feats(path: str) -> dict[str, dict[str, np.ndarray]]:
    """``{"train"|"test"|"vu"|"vp": {layer: array}}`` from a features file."""
    out: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}, "vu": {}, "vp": {}}
    with np.load(path) as z:
        for k in z.files:
            part, layer = k.split("/", 1)
            out[part][layer] = z[k]
    return out


# ----------------------------------------------------------------------------- stages

N_VIEWS, Q_VIEWS = 256, 4  # images and views per image for the view-based measures


def stage_train(cfg: G.Cfg, data: G.GridData, cache: str, log: Any) -> None:
    p = paths(cache, cfg)
    if os.path.exists(p["feats"]) and os.path.exists(p["meta"]):
        return
    model, meta = G.train(cfg, data, smoke=cfg.epochs == 1)
    arrays: dict[str, np.ndarray] = {}
    parts = {"train": data.train_x, "test": data.test_x}
    for part, x in parts.items():
        for k, v in G.taps(model, x).items():
            arrays[f"{part}/{k}"] = v.numpy().astype(np.float16)
    n_v = min(N_VIEWS, data.train_x.shape[0])
    vu = G.user_views(data.train_x[:n_v], Q_VIEWS, seed=7).flatten(0, 1)
    g = torch.Generator().manual_seed(8)
    vp = G.augment(data.train_c[:n_v].repeat_interleave(Q_VIEWS, 0), g)
    for part, x in (("vu", vu), ("vp", vp)):
        for k, v in G.taps(model, x).items():
            arrays[f"{part}/{k}"] = v.reshape(n_v, Q_VIEWS, -1).numpy().astype(np.float16)
    layers = list(G.taps(model, data.train_x[:2]))
    save_npz(p["feats"], **arrays)
    bb = model.backbone
    save_json(
        p["meta"],
        {
            "cfg": asdict(cfg),
            "seconds": meta["seconds"],
            "loss": meta["loss"],
            "layers": layers,
            "blocks": [b for b in layers if b not in ("head.hidden", "head.out")],
            "roles": model.roles(),
            "n_blocks": len(bb.blocks),
        },
    )
    log(f"trained {cfg.name():22s} in {meta['seconds']:6.1f}s (loss {meta['loss']:.3f})")


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Cached float16 features as float32 tensors, per layer."""
    return {k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()}


def stage_oracle(cfg: G.Cfg, data: G.GridData, cache: str, log: Any, smoke: bool) -> bool:
    p = paths(cache, cfg)
    if os.path.exists(p["oracle"]):
        return True
    if not os.path.exists(p["feats"]):
        return False
    t0 = time.time()
    f = load_feats(p["feats"])
    tr = _tensors(f["train"])
    te = _tensors(f["test"])
    arrays = {}
    for task in G.tasks_of(cfg):
        kw = {"epochs": 5} if smoke else ({"epochs": ORACLE_EPOCHS} if ORACLE_EPOCHS else {})
        res = hp.linear_probe(tr, data.train_y[task], te, data.test_y[task], **kw)
        arrays[f"acc/{task}"] = np.array([res[k] for k in tr])
        arrays[f"correct/{task}"] = np.stack([res.correct[k].numpy() for k in tr]).astype(bool)
    save_npz(p["oracle"], **arrays)
    log(f"oracle  {cfg.name():22s} in {time.time() - t0:6.1f}s")
    return True


def stage_rules(cfg: G.Cfg, data: G.GridData, cache: str, log: Any, smoke: bool) -> bool:
    """The picks of headkit's own rules (``choose_layer``, public API)."""
    p = paths(cache, cfg)
    if os.path.exists(p["rules"]):
        return True
    if not os.path.exists(p["feats"]):
        return False
    t0 = time.time()
    f = load_feats(p["feats"])
    tr = _tensors(f["train"])
    vu = _tensors(f["vu"])
    out: dict[str, Any] = {"label_free": {}, "few": {}}
    for rule in LABEL_FREE:
        c = hp.choose_layer(tr, rule=rule, views=vu if rule == "lidar" else None, n_boot=0)
        out["label_free"][rule] = {"layer": str(c.layer), "scores": c.scores}
    for task in G.tasks_of(cfg):
        out["few"][task] = {}
        for rule in FEW_LABEL:
            c = hp.choose_layer(
                tr,
                data.train_y[task],
                rule=rule,
                labels_per_class=LABELS_PER_CLASS,
                n_boot=0,
                seed=cfg.seed,
                probe_kwargs={"epochs": 5} if smoke else None,
            )
            out["few"][task][rule] = {"layer": str(c.layer), "scores": c.scores}
    save_json(p["rules"], out)
    log(f"rules   {cfg.name():22s} in {time.time() - t0:6.1f}s")
    return True


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    setting: str  # family-objective
    task: str
    mismatch: str
    head: str  # "mlp" (projection head) or "none" (MAE)
    seed: int
    layers: list[str]
    acc: dict[str, float]
    best: str
    tied: list[str]
    picks: dict[str, str] = field(default_factory=dict)
    family: str = ""
    objective: str = ""


def tied_of(correct: np.ndarray, n_boot: int, seed: int) -> tuple[int, list[int]]:
    """The best layer (highest test accuracy) and the layers tied with it (headkit's paired
    bootstrap over test samples, 95%)."""
    from headkit.probe import paired_bootstrap, tied_with

    bs = paired_bootstrap(torch.from_numpy(correct), n_boot, seed)
    tied = tied_with(bs.point, bs.samples)
    return int(torch.argmax(bs.point)), tied


def build_cases(
    cfgs: list[G.Cfg], data: G.GridData, cache: str, n_boot: int
) -> tuple[list[Case], dict[str, Any]]:
    """Every case whose model has features, oracle and rules cached, with every rule's pick."""
    cases = []
    secs = []
    for cfg in cfgs:
        p = paths(cache, cfg)
        if not all(os.path.exists(p[k]) for k in ("feats", "meta", "oracle", "rules")):
            continue
        with open(p["meta"]) as fh:
            meta = json.load(fh)
        with open(p["rules"]) as fh:
            hk = json.load(fh)
        secs.append(meta["seconds"])
        feats = load_feats(p["feats"])
        layers = meta["layers"]
        orc = np.load(p["oracle"])
        ctx = R.Context(feats, meta, data, cfg.seed, LABELS_PER_CLASS)
        sc_path = os.path.join(
            cache, "scores", f"{cfg.name()}-{cfg.key()}-s{R.SCORES_VERSION}.json"
        )
        scores = R.model_scores(ctx, list(G.tasks_of(cfg)), sc_path)
        for task, mm in G.tasks_of(cfg).items():
            acc = orc[f"acc/{task}"]
            best, tied = tied_of(orc[f"correct/{task}"], n_boot, cfg.seed)
            picks = {R.NAMES[r]: hk["label_free"][r]["layer"] for r in LABEL_FREE}
            picks.update({R.NAMES[r]: hk["few"][task][r]["layer"] for r in FEW_LABEL})
            for role, layer in meta["roles"].items():
                picks[f"fixed: {role}"] = layer
            picks.update(R.candidate_picks(scores, layers, task, hk))
            cases.append(
                Case(
                    f"{cfg.family}-{cfg.objective}",
                    task,
                    mm,
                    "none" if cfg.objective == "mae" else "mlp",
                    cfg.seed,
                    layers,
                    {k: float(a) for k, a in zip(layers, acc, strict=True)},
                    layers[best],
                    [layers[i] for i in tied],
                    picks,
                    cfg.family,
                    cfg.objective,
                )
            )
    return cases, {"train_seconds": secs}


# ----------------------------------------------------------------------------- tables


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    z = 1.96
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def boot_mean(x: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``x`` (over cases)."""
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    b = x[rng.integers(0, x.size, size=(n, x.size))].mean(1)
    return float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))


def rule_stats(cases: list[Case], rule: str) -> dict[str, Any]:
    hits = sum(c.picks[rule] in c.tied for c in cases)
    lost = np.array([100 * (c.acc[c.best] - c.acc[c.picks[rule]]) for c in cases])
    lo, hi = wilson(hits, len(cases))
    mlo, mhi = boot_mean(lost)
    return {
        "rule": rule,
        "hits": hits,
        "cases": len(cases),
        "tie_rate": hits / max(len(cases), 1),
        "tie_lo": lo,
        "tie_hi": hi,
        "mean_lost": float(lost.mean()) if lost.size else float("nan"),
        "lost_lo": mlo,
        "lost_hi": mhi,
        "worst_lost": float(lost.max()) if lost.size else float("nan"),
    }


MARKDOWN: list[str] = []  # every table printed, as markdown (written next to the text tables)


def print_table(title: str, head: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    text = "\n".join(
        [title, line.format(*head), line.format(*("-" * w for w in widths))]
        + [line.format(*r) for r in rows]
    )
    print(text, flush=True)
    MARKDOWN.append(
        "\n".join(
            [
                f"\n{title.strip()}\n",
                "| " + " | ".join(head) + " |",
                "| " + " | ".join("---" for _ in head) + " |",
            ]
            + ["| " + " | ".join(r) + " |" for r in rows]
        )
    )
    return text


def rule_table(cases: list[Case], title: str) -> tuple[str, list[dict[str, Any]]]:
    """Per rule: share of cases tied with the oracle's best (95% Wilson interval), points of
    accuracy lost against the best (mean, 95% bootstrap interval over cases; worst)."""
    rows, out = [], []
    for r in cases[0].picks:
        s = rule_stats(cases, r)
        out.append(s)
        rows.append(
            [
                r,
                f"{s['hits']}/{s['cases']} = {100 * s['tie_rate']:.0f}% "
                f"({100 * s['tie_lo']:.0f}-{100 * s['tie_hi']:.0f})",
                f"{s['mean_lost']:.2f} ({s['lost_lo']:.2f}-{s['lost_hi']:.2f})",
                f"{s['worst_lost']:.1f}",
            ]
        )
    text = print_table(
        title, ["rule", "tied with the oracle's best", "points lost: mean", "worst"], rows
    )
    return text, out


def group_table(cases: list[Case], rules: list[str], key: str, title: str) -> str:
    """Tie rate and mean points lost of ``rules`` per group (``key``: a Case field)."""
    groups = sorted({str(getattr(c, key)) for c in cases})
    rows = []
    for r in rules:
        row = [r]
        for gname in groups:
            sub = [c for c in cases if str(getattr(c, key)) == gname]
            s = rule_stats(sub, r)
            row.append(f"{100 * s['tie_rate']:.0f}% / {s['mean_lost']:.1f} (n={s['cases']})")
        rows.append(row)
    return print_table(title, ["rule", *groups], rows)


def depth_table(cases: list[Case]) -> str:
    """Open question (1): where the oracle's best layer sits (relative depth in the backbone,
    0 = first block, 1 = the backbone output; head layers count as > 1) per family, objective
    and mismatch, with a 95% bootstrap interval over cases, and the points the backbone output
    and the last block lose against the best."""
    groups: dict[tuple[str, str, str], list[Case]] = {}
    for c in cases:
        mm = c.mismatch
        groups.setdefault(("all", c.objective, mm), []).append(c)
        groups.setdefault((c.family, "all", mm), []).append(c)
        groups.setdefault(("all", "all", mm), []).append(c)
        groups.setdefault((c.family, "all", "all"), []).append(c)
        groups.setdefault(("all", c.objective, "all"), []).append(c)
    rows = []
    for (fam, obj, mm), cs in sorted(groups.items()):
        depth = np.array([R.rel_depth(c.layers, c.best) for c in cs])
        dlo, dhi = boot_mean(depth)
        lost_out = np.array(
            [100 * (c.acc[c.best] - c.acc[c.picks["fixed: backbone output"]]) for c in cs]
        )
        olo, ohi = boot_mean(lost_out)
        tied_shallow = np.array([min(R.rel_depth(c.layers, t) for t in c.tied) for c in cs])
        top = sum(c.picks["fixed: last block"] in c.tied for c in cs)
        rows.append(
            [
                fam,
                obj,
                mm,
                str(len(cs)),
                f"{depth.mean():.2f} [{dlo:.2f}, {dhi:.2f}]",
                f"{tied_shallow.mean():.2f}",
                f"{top}/{len(cs)}",
                f"{lost_out.mean():.1f} [{olo:.1f}, {ohi:.1f}]",
            ]
        )
    return print_table(
        "\nopen question (1): relative depth of the oracle's best layer (0 = first block, 1 = "
        "backbone output, >1 = inside the head; mean [95% bootstrap interval over cases]); the "
        "shallowest layer tied with it; points the backbone output loses",
        [
            "family",
            "objective",
            "mismatch",
            "cases",
            "best depth",
            "shallowest tied",
            "last block tied",
            "backbone output loses (pts)",
        ],
        rows,
    )


# ----------------------------------------------------------------------------- main


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny grid in a temporary folder, for CI")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--stage", default="all", choices=["all", "train", "eval", "oracle", "rules", "report"]
    )
    p.add_argument("--shard", default="0/1", help="k/n: this process does every n-th model from k")
    p.add_argument(
        "--follow", action="store_true", help="oracle/rules: wait for the training shards"
    )
    p.add_argument("--cache", default="runs/layer_grid", help="cached features, oracle and picks")
    p.add_argument("--out", default="runs/bench_layer_choice", help="folder for the tables")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the oracle")
    p.add_argument(
        "--write-table", action="store_true", help="regenerate headkit/probe/_bench_table.py"
    )
    p.add_argument("--plot", default="", help="save the regret plot here (png)")
    p.add_argument("--families", nargs="*", default=G.FAMILIES)
    p.add_argument("--reverse", action="store_true", help="go through the grid backwards")
    p.add_argument(
        "--oracle-epochs", type=int, default=ORACLE_EPOCHS, help="0: linear_probe's default"
    )
    return p.parse_args()


def main() -> None:
    args = parse()
    global ORACLE_EPOCHS
    ORACLE_EPOCHS = args.oracle_epochs
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    tmp = None
    if args.smoke:
        args.seeds = 1
        tmp = tempfile.TemporaryDirectory()
        args.cache = tmp.name

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    data = G.load(args.smoke)
    if not data.real:
        print("WARNING: no registry data: stand-in images (smoke run only)")
    cfgs = [c for c in G.grid(args.seeds, args.smoke, data.real) if c.family in args.families]
    k, n = (int(v) for v in args.shard.split("/"))
    mine = cfgs[k::n][:: -1 if args.reverse else 1]
    if args.stage in ("all", "train"):
        for cfg in mine:
            stage_train(cfg, data, args.cache, log)
    stages = {"all": ("oracle", "rules"), "eval": ("oracle", "rules")}.get(
        args.stage, (args.stage,)
    )
    if args.stage in ("all", "eval", "oracle", "rules"):
        todo = list(mine)
        while todo:
            left = []
            for cfg in todo:
                ok = True
                if "oracle" in stages:
                    ok = stage_oracle(cfg, data, args.cache, log, args.smoke)
                if ok and "rules" in stages:
                    ok = stage_rules(cfg, data, args.cache, log, args.smoke)
                if not ok:
                    left.append(cfg)
            todo = left
            if todo and not args.follow:
                log(f"{len(todo)} models have no features yet")
                break
            if todo:
                time.sleep(20)
    if args.stage in ("all", "report"):
        report(cfgs, data, args, t0)
    if tmp is not None:
        tmp.cleanup()


def report(cfgs: list[G.Cfg], data: G.GridData, args: argparse.Namespace, t0: float) -> None:
    cases, info = build_cases(cfgs, data, args.cache, 200 if args.smoke else args.n_boot)
    if not cases:
        print("no cases cached yet")
        return
    banner = (
        "SMOKE RUN (tiny grid, 1 epoch"
        + ("" if data.real else ", stand-in images")
        + "): checks that the code runs; the numbers below mean nothing\n"
        if args.smoke
        else ""
    )
    n_models = len(info["train_seconds"])
    secs = sum(info["train_seconds"])
    title = (
        f"\n{banner}{n_models} models, {len(cases)} cases (model x downstream task); training took "
        f"{secs / 60:.1f} min in all (1 thread)\n"
    )
    print(title)
    parts = [title]
    t_all, rows = rule_table(
        cases,
        "all cases: share whose pick is tied with the oracle's best (95% Wilson interval); points "
        "of accuracy lost against the best (mean, 95% bootstrap interval over cases; worst)",
    )
    parts.append(t_all)
    main_rules = R.headline(list(cases[0].picks))
    for key in ("family", "objective", "mismatch"):
        parts.append(
            group_table(cases, main_rules, key, f"\nper {key}: tie rate / mean points lost (cases)")
        )
    parts.append(depth_table(cases))
    verdict = R.goal_verdict(cases, rule_stats)
    print(verdict)
    parts.append(verdict)
    wall = time.time() - t0
    parts.append(f"\nthis report took {wall:.0f} s")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_layer_choice.txt"), "w") as fh:
        fh.write("\n".join(parts) + "\n")
    with open(os.path.join(args.out, "bench_layer_choice.md"), "w") as fh:
        fh.write(title + "\n" + "\n".join(MARKDOWN) + "\n" + verdict + "\n")
    with open(os.path.join(args.out, "bench_layer_choice.json"), "w") as fh:
        json.dump(
            {"smoke": args.smoke, "rules": rows, "cases": [asdict(c) for c in cases], **info},
            fh,
            indent=1,
        )
    if args.plot:
        R.plot(cases, R.plot_rules(list(cases[0].picks)), args.plot, rule_stats)
    if args.write_table and not args.smoke:
        grid = (
            f"{n_models} small encoders ({', '.join(sorted({c.setting for c in cases}))}; "
            "widths 32-128, 6-8 blocks for the deep families) pretrained briefly on 20x20 "
            "Fashion-MNIST items with two MNIST digits; "
            f"{len(cases)} cases (model x task: item, coarse group, a digit the views drop with "
            "p=0.5 or p=0.9, mirrored item); few-label rules with 10 labels per class"
        )
        R.write_table(
            cases,
            rule_stats,
            os.path.join(HERE, "..", "headkit", "probe", "_bench_table.py"),
            grid,
        )


if __name__ == "__main__":
    main()
