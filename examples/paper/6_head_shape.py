"""How the projection head's depth and width change the pre- vs post-projection gap (a check
the paper's summary asks for next), in the digits-on-Fashion-MNIST setting, over seeds.

The set-up of ``3_digits_on_images.py`` at p = 0.8 (each view drops the digit with probability
0.8; the downstream tasks are the digit, the disrupted feature, and the item, which the
augmentation keeps). MLP heads (BatchNorm + ReLU between linear layers, 64-d output) of depth 1
(one linear layer), 2 and 3 at hidden width 128, and of hidden width 32, 128 and 512 at depth 2.
Per head: digit and item accuracy (linear probe) before the head (pre) and after it (post).

Every number is a mean +- sd [95% t-interval] over --seeds seeds; every claim gets a verdict.
Full run: about 15 min on 2 cores from scratch (15 models; the depth-2 width-128 models are
shared with the other scripts through the cache in ``$HEADKIT_DATA/runs``). ``--smoke`` (CI)
runs tiny sizes, prints no verdicts.

    bash scripts/get_data.sh && python examples/paper/6_head_shape.py [--smoke] [--seeds 3]
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

SHAPES = [(1, 128), (2, 128), (3, 128), (2, 32), (2, 512)]  # (depth, hidden width)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--drop", type=float, default=0.8)
    args = p.parse_args()
    setup(args)
    smoke = args.smoke
    if not args.data_root:
        need_data(smoke)
    shapes = [(1, 128), (2, 32)] if smoke else SHAPES
    if smoke:
        print("SMOKE RUN (tiny sizes): checks that the code runs; the numbers mean nothing\n")
    t0 = time.time()
    seeds = list(range(args.seeds))
    data = load_setting("digit_on_fashion", smoke, args.data_root)
    train_secs, cached = [], 0
    res: dict[tuple[int, int], list[dict[str, float]]] = {}
    for depth, hidden in shapes:
        res[(depth, hidden)] = []
        for seed in seeds:
            cfg = Pretrain(
                "digit_on_fashion",
                head="mlp",
                seed=seed,
                drop=args.drop,
                depth=depth,
                hidden=hidden,
            )
            t1 = time.time()
            model, meta = pretrain(cfg, data, smoke=smoke, use_cache=not args.no_cache)
            cached += int(time.time() - t1 < 0.5 * meta["seconds"])
            train_secs.append(meta["seconds"])
            r = probe_layers(model, data, ["digit", "item"], seed=seed, smoke=smoke)
            res[(depth, hidden)].append(
                {
                    "pre": r["digit"]["acc"]["backbone.fc"],
                    "post": r["digit"]["acc"]["head"],
                    "item_pre": r["item"]["acc"]["backbone.fc"],
                    "item_post": r["item"]["acc"]["head"],
                }
            )
    rows, lines = [], []

    def gap(shape: tuple[int, int]) -> list[float]:
        return [r["pre"] - r["post"] for r in res[shape]]

    for shape in shapes:
        rs = res[shape]
        rows.append(
            [
                str(shape[0]),
                str(shape[1]) if shape[0] > 1 else "- (linear)",
                fmt_stat([r["pre"] for r in rs]),
                fmt_stat([r["post"] for r in rs]),
                fmt_stat(gap(shape), sign=True),
                fmt_stat([r["item_pre"] for r in rs]),
                fmt_stat([r["item_pre"] - r["item_post"] for r in rs], sign=True),
            ]
        )
        lines.append(
            claim(
                f"depth {shape[0]}, width {shape[1]}: digit pre - post (claim: > 0)",
                gap(shape),
                ">0",
                smoke,
            )
        )

    def diff(a: tuple[int, int], b: tuple[int, int], key: str) -> list[float]:
        if key == "gap":
            return [x - y for x, y in zip(gap(a), gap(b), strict=True)]
        return [x[key] - y[key] for x, y in zip(res[a], res[b], strict=True)]

    for a, b, what in [
        ((3, 128), (1, 128), "depth 3 vs 1"),
        ((2, 512), (2, 32), "width 512 vs 32"),
    ]:
        if a in res and b in res:
            lines.append(
                claim(
                    f"{what}: change of digit pre - post (hypothesis: > 0, a bigger head drops more)",
                    diff(a, b, "gap"),
                    ">0",
                    smoke,
                )
            )
            lines.append(
                claim(
                    f"{what}: change of digit pre (hypothesis: > 0, a bigger head leaves more in the backbone)",
                    diff(a, b, "pre"),
                    ">0",
                    smoke,
                )
            )
    t = print_table(
        f"digit and item accuracy (linear probe) by MLP head shape, p = {args.drop}; "
        f"mean +- sd [95% t-interval] over {len(seeds)} seed(s), % and points",
        [
            "depth",
            "hidden width",
            "digit pre",
            "digit post",
            "digit pre - post",
            "item pre",
            "item pre - post",
        ],
        rows,
    )
    print("\n".join(lines))
    finish(args.out, "6_head_shape.txt", [t, "\n".join(lines)], train_secs, cached, t0)


if __name__ == "__main__":
    main()
