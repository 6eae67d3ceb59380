"""Candidate layer-choice rules of `bench_layer_choice.py`, computed from the cached features.

The rules headkit ships are run through `headkit.probe.choose_layer` (public API); the new
candidates measured here are computed in numpy from the same cached features so the analysis
reruns in seconds. A candidate that wins is then implemented in ``headkit/probe/_choose.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from headkit.probe import FEW_LABEL_RULES

NAMES = {
    "rankme": "label-free: RankMe (highest)",
    "unevenness": "label-free: unevenness (lowest)",
    "alpha_req": "label-free: alpha-ReQ (closest to 1)",
    "nesum": "label-free: NESum (highest)",
    "lidar": "label-free: LiDAR (highest)",
    "knn_loo": "10 labels/class: kNN leave-one-out",
    "linear_cv": "10 labels/class: linear probe, 5-fold CV",
}


@dataclass
class Context:
    feats: dict[str, dict[str, np.ndarray]]
    meta: dict[str, Any]
    data: Any
    seed: int
    lpc: int


def base(layer: str) -> str:
    for suf in (".cls", ".mean"):
        if layer.endswith(suf) and not layer.startswith("out"):
            return layer[: -len(suf)]
    return layer


def rel_depth(layers: list[str], layer: str) -> float:
    """0 = first block, 1 = backbone output; head layers 1.25 (hidden) and 1.5 (output)."""
    if layer == "head.hidden":
        return 1.25
    if layer == "head.out":
        return 1.5
    bb = []
    for k in layers:
        if k.startswith("head."):
            continue
        b = base(k)
        if b not in bb:
            bb.append(b)
    return bb.index(base(layer)) / max(len(bb) - 1, 1)


def few_idx(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """At most ``per_class`` samples of every class (seeded): the user's few labels."""
    rng = np.random.default_rng(seed + 1000)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.extend(rng.choice(idx, size=min(per_class, idx.size), replace=False).tolist())
    return np.sort(np.array(keep))


def standardize(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    mu = ref.mean(0)
    sd = ref.std(0) + 1e-6
    return (x - mu) / sd


def _ridge_setup(
    x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """The centred kernel, centred one-hot targets, class indices, classes and the kernel's mean
    diagonal (the scale of the ridge penalties) of the ridge rules."""
    xc = x - x.mean(0)
    k = xc @ xc.T
    classes, yi = np.unique(y, return_inverse=True)
    t = np.eye(classes.size)[yi]
    return k, t - t.mean(0), yi, classes, float(np.trace(k) / x.shape[0])


def ridge_loo(x: np.ndarray, y: np.ndarray, lams: tuple[float, ...] = (0.1, 1.0, 10.0)) -> float:
    """Closed-form leave-one-out accuracy of ridge regression to one-hot labels (kernel form,
    ``lam`` relative to the mean squared norm), best over ``lams``."""
    k, t, yi, _, scale = _ridge_setup(x, y)
    n = x.shape[0]
    best = 0.0
    for lam in lams:
        h = k @ np.linalg.inv(k + lam * scale * np.eye(n))
        pred = h @ t
        loo = t - (t - pred) / (1 - np.diag(h))[:, None]
        best = max(best, float((loo.argmax(1) == yi).mean()))
    return best


def invariance(v: np.ndarray) -> float:
    """Share of a layer's variance over views ``(N, Q, D)`` that is within-image (between views
    of the same image): 0 = perfectly invariant to the augmentation, 1 = blind to the image."""
    v = v.astype(np.float64)
    tot = v.reshape(-1, v.shape[-1]).var(0).sum()
    within = (v - v.mean(1, keepdims=True)).var(1).sum(-1).mean() * v.shape[1] / (v.shape[1] - 1)
    return float(within / max(tot, 1e-12))


def _pick(
    scores: dict[str, float], allowed: list[str], order: list[str], prefer: str = "shallow"
) -> str:
    """Highest score among ``allowed``; exact ties go to the shallower (or deeper) layer."""
    sign = 1 if prefer == "deep" else -1
    return max(allowed, key=lambda k: (scores[k], sign * order.index(k)))


def _within(
    scores: dict[str, float], allowed: list[str], order: list[str], n: int, prefer: str
) -> str:
    """The shallowest (or deepest) layer whose score is within one binomial standard error (of
    ``n`` labelled samples) of the best."""
    top = max(scores[k] for k in allowed)
    se = np.sqrt(max(top * (1 - top), 1e-4) / n)
    ok = [k for k in allowed if scores[k] >= top - se]
    return min(ok, key=order.index) if prefer == "shallow" else max(ok, key=order.index)


def _paired_set(per: dict[str, list[float]], allowed: list[str], z: float) -> list[str]:
    """The layers of ``allowed`` whose per-sample scores (higher is better) are within ``z``
    paired standard errors of the best layer's mean (the best first among exact ties)."""
    means = {k: float(np.mean(per[k])) for k in allowed}
    top = max(allowed, key=lambda k: (means[k], -allowed.index(k)))
    ref = np.asarray(per[top])
    ok = []
    for k in allowed:
        d = ref - np.asarray(per[k])
        se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
        if float(d.mean()) <= z * se + 1e-12:
            ok.append(k)
    return ok


def _paired_within(
    per: dict[str, list[float]], allowed: list[str], order: list[str], z: float, prefer: str
) -> str:
    """The deepest (or shallowest) layer of ``allowed`` whose per-sample scores (higher is
    better) are within ``z`` paired standard errors of the best layer's mean."""
    ok = _paired_set(per, allowed, z)
    return max(ok, key=order.index) if prefer == "deep" else min(ok, key=order.index)


def _smooth(scores: dict[str, float], bb: list[str], layers: list[str]) -> dict[str, float]:
    """Each layer's score averaged with its neighbours in depth (backbone order, then head)."""
    out = {}
    for i, k in enumerate(layers):
        nb = [layers[j] for j in (i - 1, i, i + 1) if 0 <= j < len(layers)]
        out[k] = float(np.mean([scores[j] for j in nb]))
    return out


def ridge_scores(
    x: np.ndarray, y: np.ndarray, lams: tuple[float, ...] = (0.1, 1.0, 10.0)
) -> dict[str, Any]:
    """Continuous leave-one-out scores of ridge regression to one-hot labels: PRESS (mean
    squared LOO residual, lower is better, best lambda) and the mean LOO margin (true-class
    score minus the best other class, higher is better, best lambda); with the per-sample
    values at the best lambda (``press_i``, ``margin_i``: paired standard errors)."""
    k, t, yi, classes, scale = _ridge_setup(x, y)
    n = x.shape[0]
    press, margin = np.inf, -np.inf
    press_i: list[float] = []
    margin_i: list[float] = []
    for lam in lams:
        h = k @ np.linalg.inv(k + lam * scale * np.eye(n))
        loo = t - (t - h @ t) / (1 - np.diag(h))[:, None]
        pi = ((t - loo) ** 2).sum(1)
        if pi.mean() < press:
            press, press_i = float(pi.mean()), pi.tolist()
        true = loo[np.arange(n), yi]
        other = np.where(np.eye(classes.size)[yi] > 0, -np.inf, loo).max(1)
        mi = true - other
        if mi.mean() > margin:
            margin, margin_i = float(mi.mean()), mi.tolist()
    return {"press": press, "margin": margin, "press_i": press_i, "margin_i": margin_i}


SCORES_VERSION = "2"


def model_scores(ctx: Context, tasks: list[str], path: str) -> dict[str, Any]:
    """Per-layer scores of the candidate rules for one model (cached as JSON at ``path``):
    invariance to the user's and to the pretraining views, and per task the ridge LOO accuracy,
    PRESS and margin on the few labels."""
    import json

    if os.path.exists(path):
        with open(path) as fh:
            return dict(json.load(fh))
    layers = ctx.meta["layers"]
    out: dict[str, Any] = {
        "inv_u": {k: invariance(ctx.feats["vu"][k]) for k in layers},
        "inv_p": {k: invariance(ctx.feats["vp"][k]) for k in layers},
        "tasks": {},
    }
    tr = {
        k: standardize(v.astype(np.float64), v.astype(np.float64))
        for k, v in ctx.feats["train"].items()
    }
    for task in tasks:
        y = ctx.data.train_y[task].numpy()
        idx = few_idx(y, ctx.lpc, ctx.seed)
        ridge, press, margin, press_i, margin_i = {}, {}, {}, {}, {}
        for k in layers:
            xs = tr[k][idx]
            ridge[k] = ridge_loo(xs, y[idx])
            sc = ridge_scores(xs, y[idx])
            press[k], margin[k] = -sc["press"], sc["margin"]
            press_i[k] = [-v for v in sc["press_i"]]
            margin_i[k] = sc["margin_i"]
        out["tasks"][task] = {
            "ridge": ridge,
            "press": press,
            "margin": margin,
            "press_i": press_i,
            "margin_i": margin_i,
            "n": int(idx.size),
        }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(out, fh)
    return out


def _z(scores: dict[str, float], keys: list[str]) -> dict[str, float]:
    v = np.array([scores[k] for k in keys])
    sd = v.std() + 1e-12
    return {k: float((scores[k] - v.mean()) / sd) for k in keys}


def candidate_picks(
    sc: dict[str, Any], layers: list[str], task: str, hk: dict[str, Any]
) -> dict[str, str]:
    """The picks of the new candidate rules for one model and task."""
    bb = [k for k in layers if not k.startswith("head.")]
    out: dict[str, str] = {}
    for f in (0.5, 0.67, 0.75):
        out[f"window: layer at {f:.2f} depth"] = min(
            bb, key=lambda k: (abs(rel_depth(layers, k) - f), k.endswith(".mean"))
        )
    inv_u, inv_p = sc["inv_u"], sc["inv_p"]
    out["label-free: least invariant to pretraining views"] = _pick(
        {k: inv_p[k] for k in bb}, bb, layers
    )
    out["label-free: most invariant to user views"] = _pick({k: -inv_u[k] for k in bb}, bb, layers)
    # the paper's mechanism: the deepest backbone layer before invariance to the pretraining
    # augmentation rises past half of its range (later layers discard what views disrupt)
    lo_, hi_ = min(inv_p[k] for k in bb), max(inv_p[k] for k in bb)
    knee = [k for k in bb if inv_p[k] >= lo_ + 0.5 * (hi_ - lo_)]
    out["label-free: invariance knee"] = max(knee, key=layers.index) if knee else bb[-1]
    rk = hk["label_free"]["rankme"]["scores"]
    med = float(np.median([rk[k] for k in layers]))
    high_rank = [k for k in layers if rk[k] >= med] or layers
    t = sc["tasks"][task]
    ridge, press, margin, n = t["ridge"], t["press"], t["margin"], t["n"]
    knn = hk["few"][task]["knn_loo"]["scores"]
    lcv = hk["few"][task]["linear_cv"]["scores"]
    R = "10 labels/class: "
    out[R + "ridge LOO"] = _pick(ridge, layers, layers)
    out[R + "ridge LOO, backbone only"] = _pick(ridge, bb, layers)
    out[R + "ridge LOO, shallowest within 1 SE"] = _within(ridge, layers, layers, n, "shallow")
    out[R + "ridge LOO, deepest within 1 SE"] = _within(ridge, layers, layers, n, "deep")
    out[R + "ridge LOO, smoothed over depth"] = _pick(_smooth(ridge, bb, layers), layers, layers)
    out[R + "ridge LOO, RankMe >= median"] = _pick(ridge, high_rank, layers)
    out[R + "ridge PRESS"] = _pick(press, layers, layers)
    out[R + "ridge PRESS, backbone only"] = _pick(press, bb, layers)
    out[R + "ridge LOO margin"] = _pick(margin, layers, layers)
    out[R + "ridge LOO margin, backbone only"] = _pick(margin, bb, layers)
    out[R + "ridge LOO margin, RankMe >= median"] = _pick(margin, high_rank, layers)
    out[R + "kNN LOO, backbone only"] = _pick(knn, bb, layers)
    out[R + "linear CV, backbone only"] = _pick(lcv, bb, layers)
    out[R + "linear CV, RankMe >= median"] = _pick(lcv, high_rank, layers)
    out[R + "linear CV, smoothed over depth"] = _pick(_smooth(lcv, bb, layers), layers, layers)
    zr, zm, zl = _z(ridge, layers), _z(margin, layers), _z(lcv, layers)
    out[R + "ridge margin + linear CV (z-scores)"] = _pick(
        {k: zm[k] + zl[k] for k in layers}, layers, layers
    )
    out[R + "ridge margin + linear CV, RankMe >= median"] = _pick(
        {k: zm[k] + zl[k] for k in layers}, high_rank, layers
    )
    out[R + "ridge LOO + linear CV (z-scores)"] = _pick(
        {k: zr[k] + zl[k] for k in layers}, layers, layers
    )
    pi, mi = t["press_i"], t["margin_i"]
    for z in (0.5, 1.0):
        for what, per in (("PRESS", pi), ("margin", mi)):
            for pref in ("deep", "shallow"):
                name = f"{R}ridge {what}, backbone only, {'deepest' if pref == 'deep' else 'shallowest'} within {z:g} paired SE"
                out[name] = _paired_within(per, bb, layers, z, pref)
    # the few labels narrow (layers the ridge PRESS cannot separate), a label-free measure on
    # every sample picks: alpha-ReQ closest to 1 (headkit's `ridge_press_alpha` at z = 1)
    alpha = hk["label_free"]["alpha_req"]["scores"]
    unev = hk["label_free"]["unevenness"]["scores"]
    for z in (0.75, 1.0, 1.25):
        near = _paired_set(pi, bb, z)
        out[
            f"{R}ridge PRESS within {z:g} paired SE, then alpha-ReQ closest to 1, backbone only"
        ] = min(near, key=lambda k: (abs(alpha[k] - 1), layers.index(k)))
    near = _paired_set(pi, layers, 1.0)
    out[R + "ridge PRESS within 1 paired SE, then alpha-ReQ closest to 1, all layers"] = min(
        near, key=lambda k: (abs(alpha[k] - 1), layers.index(k))
    )
    near = _paired_set(pi, bb, 1.0)
    out[R + "ridge PRESS within 1 paired SE, then lowest unevenness, backbone only"] = min(
        near, key=lambda k: (unev[k], layers.index(k))
    )
    near = _paired_set(mi, bb, 1.0)
    out[R + "ridge margin within 1 paired SE, then alpha-ReQ closest to 1, backbone only"] = min(
        near, key=lambda k: (abs(alpha[k] - 1), layers.index(k))
    )
    zp = _z(press, bb)
    zm_b, zl_b = _z(margin, bb), _z(lcv, bb)
    out[R + "ridge PRESS + margin + linear CV, backbone only"] = _pick(
        {k: zp[k] + zm_b[k] + zl_b[k] for k in bb}, bb, layers
    )
    out[R + "ridge PRESS + linear CV, backbone only"] = _pick(
        {k: zp[k] + zl_b[k] for k in bb}, bb, layers
    )
    both = {k: ridge[k] + knn[k] for k in layers}
    out[R + "ridge LOO + kNN LOO"] = _pick(both, layers, layers)
    return out


GOAL_TIE = 0.8


def fixed_rules(rules: list[str]) -> list[str]:
    return [r for r in rules if r.startswith("fixed:")]


def goal_check(cases: list[Any], rule: str, stats: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Whether ``rule`` meets the goal: tied with the best in >= 80% of all cases, and lower mean
    regret than every fixed default overall and in every family."""
    rules = list(cases[0].picks)
    s = stats(cases, rule)
    fixed = fixed_rules(rules)
    beat_all = all(s["mean_lost"] < stats(cases, f)["mean_lost"] for f in fixed)
    fams = sorted({c.family for c in cases})
    fam_fail = []
    for fam in fams:
        sub = [c for c in cases if c.family == fam]
        mine = stats(sub, rule)["mean_lost"]
        if not all(mine < stats(sub, f)["mean_lost"] for f in fixed):
            fam_fail.append(fam)
    return {
        "tie_ok": s["tie_rate"] >= GOAL_TIE,
        "regret_ok": beat_all,
        "families_failed": fam_fail,
        "met": s["tie_rate"] >= GOAL_TIE and beat_all and not fam_fail,
        **s,
    }


def goal_verdict(cases: list[Any], stats: Callable[..., dict[str, Any]]) -> str:
    rules = [r for r in cases[0].picks if not r.startswith("fixed:")]
    checks = [goal_check(cases, r, stats) for r in rules]
    checks.sort(
        key=lambda c: (
            c["met"],
            not c["families_failed"],
            c["regret_ok"],
            c["tie_rate"],
            -c["mean_lost"],
        ),
        reverse=True,
    )
    lines = [
        "\nthe goal (tied with the best in >= 80% of cases; lower mean regret than every fixed default, overall and in every family):"
    ]
    for c in checks[:8]:
        lines.append(
            f"  {c['rule']}: tied {c['hits']}/{c['cases']} = {100 * c['tie_rate']:.0f}% "
            f"({100 * c['tie_lo']:.0f}-{100 * c['tie_hi']:.0f}), mean regret {c['mean_lost']:.2f} "
            f"({c['lost_lo']:.2f}-{c['lost_hi']:.2f}); beats every fixed default overall: "
            f"{'yes' if c['regret_ok'] else 'no'}; families where it does not: "
            f"{', '.join(c['families_failed']) or 'none'} -> {'GOAL MET' if c['met'] else 'goal not met'}"
        )
    seeds = sorted({c.seed for c in cases})
    if len(seeds) > 1:
        last = seeds[-1]
        sel = [c for c in cases if c.seed != last]
        held = [c for c in cases if c.seed == last]
        top = max(rules, key=lambda r: (stats(sel, r)["tie_rate"], -stats(sel, r)["mean_lost"]))
        a, b = stats(sel, top), stats(held, top)
        lines.append(
            f"selection check: the best rule on seeds {seeds[:-1]} is {top!r} "
            f"({100 * a['tie_rate']:.0f}% tied, {a['mean_lost']:.2f} points, {a['cases']} cases); "
            f"on the held-out seed {last}: {100 * b['tie_rate']:.0f}% "
            f"({100 * b['tie_lo']:.0f}-{100 * b['tie_hi']:.0f}), {b['mean_lost']:.2f} points "
            f"({b['lost_lo']:.2f}-{b['lost_hi']:.2f}), {b['cases']} cases"
        )
    return "\n".join(lines)


#: bench rule name -> headkit RULES key (the rules the package ships)
SHIPPED = {
    **{v: k for k, v in NAMES.items()},
    "10 labels/class: ridge LOO": "ridge_loo",
    "10 labels/class: ridge LOO margin": "ridge_margin",
    "10 labels/class: ridge LOO margin, RankMe >= median": "ridge_margin_rankme",
    "10 labels/class: ridge LOO + linear CV (z-scores)": "ridge_cv",
    "10 labels/class: ridge LOO, shallowest within 1 SE": "ridge_1se",
    "10 labels/class: ridge PRESS within 1 paired SE, then alpha-ReQ closest to 1, backbone only": (
        "ridge_press_alpha"
    ),
}


def headline(rules: list[str]) -> list[str]:
    """The rules of the per-group tables: headkit's rules, the fixed defaults, the best new ones."""
    return [
        r for r in rules if r in SHIPPED or r.startswith("fixed:") or r.startswith("window")
    ] + [r for r in rules if r not in SHIPPED and not r.startswith(("fixed:", "window"))]


def plot_rules(rules: list[str]) -> list[str]:
    """The rules the regret plot shows: the fixed defaults, headkit's shipped rules and the
    window at 2/3 depth."""
    keep = [r for r in rules if r.startswith("fixed:") and r != "fixed: DINOv2-style"]
    keep += [r for r in rules if r in SHIPPED and "NESum" not in r and "unevenness" not in r]
    keep += [r for r in rules if r == "window: layer at 0.67 depth"]
    return keep


def plot(
    cases: list[Any], rules: list[str], path: str, stats: Callable[..., dict[str, Any]]
) -> None:
    """Mean regret (points lost against the best layer, 95% bootstrap interval) per rule and
    family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = [*sorted({c.family for c in cases}), "all"]
    fig, ax = plt.subplots(figsize=(13, 5))
    w = 0.8 / len(rules)
    colours = plt.get_cmap("tab20").colors
    for j, r in enumerate(rules):
        means, errs = [], [[], []]
        for f in fams:
            sub = cases if f == "all" else [c for c in cases if c.family == f]
            s = stats(sub, r)
            means.append(s["mean_lost"])
            errs[0].append(s["mean_lost"] - s["lost_lo"])
            errs[1].append(s["lost_hi"] - s["mean_lost"])
        xs = np.arange(len(fams)) + (j - len(rules) / 2 + 0.5) * w
        style = "//" if r.startswith("fixed:") else None
        label = f"{SHIPPED[r]} ({r.split(': ')[0]})" if r in SHIPPED else r
        ax.bar(
            xs, means, w, yerr=errs, label=label, hatch=style, capsize=1.5, color=colours[j % 20]
        )
    ax.set_xticks(np.arange(len(fams)))
    ax.set_xticklabels(
        [f"{f}\n({sum(1 for c in cases if f == 'all' or c.family == f)} cases)" for f in fams]
    )
    ax.set_ylabel("points of linear-probe accuracy lost vs the best layer")
    ax.set_title("regret by rule and family (mean, 95% bootstrap interval over cases)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_table(
    cases: list[Any], stats: Callable[..., dict[str, Any]], path: str, grid: str
) -> None:
    """Regenerate ``headkit/probe/_bench_table.py`` from the cases: per shipped rule and scope
    (all, family, objective, family x objective) the cases tied, the cases, the mean regret and
    its interval; whether the rule met the goal; the best rule with labels and without."""
    scopes: dict[str, list[Any]] = {"all": cases}
    for c in cases:
        scopes.setdefault(f"family={c.family}", []).append(c)
        scopes.setdefault(f"objective={c.objective}", []).append(c)
        scopes.setdefault(f"family={c.family}, objective={c.objective}", []).append(c)
    table: dict[str, dict[str, tuple[int, int, float, float, float]]] = {}
    met: dict[str, bool] = {}
    notes: dict[str, str] = {}
    for name, key in SHIPPED.items():
        if name not in cases[0].picks:
            continue
        table[key] = {}
        for sc, sub in scopes.items():
            s = stats(sub, name)
            table[key][sc] = (
                s["hits"],
                s["cases"],
                round(s["mean_lost"], 2),
                round(s["lost_lo"], 2),
                round(s["lost_hi"], 2),
            )
        g = goal_check(cases, name, stats)
        met[key] = bool(g["met"])
        parts = [
            f"tied in {100 * g['tie_rate']:.0f}% of all cases, "
            + ("at least" if g["tie_ok"] else "under")
            + " the 80% asked"
        ]
        if not g["regret_ok"]:
            parts.append("its mean regret is not below every fixed default's overall")
        if g["families_failed"]:
            parts.append("a fixed default loses less in " + ", ".join(g["families_failed"]))
        notes[key] = "; ".join(parts)

    def best(keys: list[str]) -> str:
        return max(
            keys, key=lambda k: (table[k]["all"][0] / table[k]["all"][1], -table[k]["all"][2])
        )

    few_keys = FEW_LABEL_RULES
    few = best([k for k in table if k in few_keys])
    free = best([k for k in table if k not in few_keys])
    lines = [
        '"""How each layer-choice rule fared on ``benchmarks/bench_layer_choice.py``.',
        "",
        "Generated by ``python benchmarks/bench_layer_choice.py --stage report --write-table``; do not",
        "edit by hand.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "#: What the benchmark covered.",
        f"GRID: str = {grid!r}",
        "",
        "#: rule -> scope -> (cases tied with the best, cases, mean regret in points, its 95% interval).",
        "TABLE: dict[str, dict[str, tuple[int, int, float, float, float]]] = {",
    ]
    for k, rows in table.items():
        lines.append(f"    {k!r}: {{")
        for sc, row in rows.items():
            lines.append(f"        {sc!r}: {row!r},")
        lines.append("    },")
    lines += [
        "}",
        "",
        "#: rule -> whether it met the benchmark's goal.",
        f"GOAL_MET: dict[str, bool] = {met!r}",
        "",
        "#: rule -> how it fared against each part of the goal.",
        f"GOAL_NOTE: dict[str, str] = {notes!r}",
        "",
        '#: The best measured rule with labels and without (what ``rule="auto"`` uses).',
        f"BEST_FEW_LABEL: str = {few!r}",
        f"BEST_LABEL_FREE: str = {free!r}",
        "",
    ]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
