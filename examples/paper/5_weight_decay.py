"""The paper's open question on weight decay (Xue et al., ICLR 2024): does weight decay shrink the
advantage of pre-projection features? Measured in the digits-on-Fashion-MNIST setting, over seeds.

The set-up of ``3_digits_on_images.py`` at p = 0.8 (each view drops the digit with probability
0.8; the downstream task is the digit, the disrupted feature), MLP head, AdamW with its decoupled
weight decay swept over 0, 1e-4, 1e-2, 1 and 10 (five orders of magnitude; the default elsewhere
is 1e-4). Per value: the digit accuracy before the head (pre) and after it (post), pre - post, and
the change of pre - post from weight decay 0, paired by seed. The linear theory's sweep is part
(wd) of ``1_linear_theory.py``.

With BatchNorm in every block and a cosine-normalised loss, most weights are scale-invariant, so
in this network decoupled weight decay acts mostly through the effective learning rate; the
shrink factor of the weights over training is about exp(-lr * wd * steps / 2): 0.999 at
wd = 1e-2, 0.89 at 1, 0.30 at 10 (lr 2e-3, 120 steps).

Every number is a mean +- sd [95% t-interval] over --seeds seeds; every claim gets a verdict.
Full run: about 20 min on 2 cores from scratch (15 models; the weight decay 1e-4 models are
shared with the other scripts through the cache in ``$HEADKIT_DATA/runs``). ``--smoke`` (CI) runs
tiny sizes, prints no verdicts.

    bash scripts/get_data.sh && python examples/paper/5_weight_decay.py [--smoke] [--seeds 3]
"""

from __future__ import annotations

import time

from _paper import (
    Pretrain,
    claim,
    finish,
    fmt_stat,
    load_setting,
    need_data,
    parser,
    pretrain,
    print_table,
    probe_layers,
    setup,
)

WEIGHT_DECAYS = [0.0, 1e-4, 1e-2, 1.0, 10.0]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--weight-decays", type=float, nargs="*", default=WEIGHT_DECAYS)
    p.add_argument("--drop", type=float, default=0.8)
    args = p.parse_args()
    setup(args)
    smoke = args.smoke
    if not args.data_root:
        need_data(smoke)
    wds = args.weight_decays[:2] if smoke else args.weight_decays
    if smoke:
        print("SMOKE RUN (tiny sizes): checks that the code runs; the numbers mean nothing\n")
    t0 = time.time()
    seeds = list(range(args.seeds))
    data = load_setting("digit_on_fashion", smoke, args.data_root)
    train_secs, cached = [], 0
    res: dict[float, list[dict[str, float]]] = {}
    for wd in wds:
        res[wd] = []
        for seed in seeds:
            cfg = Pretrain(
                "digit_on_fashion", head="mlp", seed=seed, drop=args.drop, weight_decay=wd
            )
            t1 = time.time()
            model, meta = pretrain(cfg, data, smoke=smoke, use_cache=not args.no_cache)
            cached += int(time.time() - t1 < 0.5 * meta["seconds"])
            train_secs.append(meta["seconds"])
            r = probe_layers(model, data, ["digit", "item"], seed=seed, smoke=smoke)
            res[wd].append(
                {
                    "pre": r["digit"]["acc"]["backbone.fc"],
                    "post": r["digit"]["acc"]["head"],
                    "item_pre": r["item"]["acc"]["backbone.fc"],
                    "item_post": r["item"]["acc"]["head"],
                    "loss": meta["loss"],
                }
            )
    base = wds[0]
    rows, lines = [], []
    for wd in wds:
        rs = res[wd]
        gap = [r["pre"] - r["post"] for r in rs]
        gap0 = [r["pre"] - r["post"] for r in res[base]]
        change = [a - b for a, b in zip(gap, gap0, strict=True)]
        rows.append(
            [
                f"{wd:g}",
                fmt_stat([r["pre"] for r in rs]),
                fmt_stat([r["post"] for r in rs]),
                fmt_stat(gap, sign=True),
                "-" if wd == base else fmt_stat(change, sign=True),
                fmt_stat([r["item_pre"] - r["item_post"] for r in rs], sign=True),
                fmt_stat([r["loss"] for r in rs], scale=1.0, digits=2),
            ]
        )
        lines.append(claim(f"weight decay {wd:g}: digit pre - post (claim: > 0)", gap, ">0", smoke))
        if wd != base:
            lines.append(
                claim(
                    f"weight decay {wd:g}: change of pre - post from weight decay {base:g} (claim: < 0, it shrinks)",
                    change,
                    "<0",
                    smoke,
                )
            )
    t = print_table(
        f"digit accuracy (linear probe) over AdamW weight decay, MLP head, p = {args.drop}; "
        f"mean +- sd [95% t-interval] over {len(seeds)} seed(s), % and points",
        [
            "weight decay",
            "pre",
            "post",
            "pre - post",
            f"change from wd = {base:g}",
            "item: pre - post",
            "final SimCLR loss",
        ],
        rows,
    )
    print("\n".join(lines))
    finish(args.out, "5_weight_decay.txt", [t, "\n".join(lines)], train_secs, cached, t0)


if __name__ == "__main__":
    main()
