"""Paper claim 4 (Xue et al., ICLR 2024, Sec. 6, CIFAR-100 20 -> 100 superclasses): in supervised
pretraining the lower layer keeps sub-class features that the head collapses, so pre-projection
features transfer better from coarse to fine labels.

Substitute (ours): Fashion-MNIST (Debian dataset-fashion-mnist, fetched by
``scripts/get_data.sh``) with 4 coarse groups of our own making: upper-body {T-shirt, Pullover,
Coat, Shirt}, lower/one-piece {Trouser, Dress}, footwear {Sandal, Sneaker, Ankle boot}, bag {Bag}.
A small CNN with an MLP head is pretrained on the coarse labels with cross-entropy (a linear
classifier after the head) and with the supervised contrastive loss (headkit SupConLoss, two
views); linear probes then read the 10 fine classes from the representation before the head
(pre-projection) and after it (post-projection). ``--data-root`` with CIFAR-100 in torchvision
layout runs the paper's 20 -> 100 setting instead.

    bash scripts/get_data.sh && python examples/paper/4_coarse_to_fine.py [--smoke]
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _paper import (
    CNN,
    WithHead,
    crop_flip,
    fashion_mnist,
    features,
    need_data,
    parser,
    print_table,
    save_text,
    standin,
    train,
)
from torch import nn

from headkit import MLPHead, ReweightHead, SupConLoss
from headkit.probe import knn_accuracy, linear_probe

COARSE = {0: 0, 2: 0, 4: 0, 6: 0, 1: 1, 3: 1, 5: 2, 7: 2, 9: 2, 8: 3}  # ours, documented


def load(
    args: object, smoke: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    root = getattr(args, "data_root", None)
    if root:
        import torchvision

        tr = torchvision.datasets.CIFAR100(root, train=True, download=False)
        te = torchvision.datasets.CIFAR100(root, train=False, download=False)
        coarse_of = torch.tensor(CIFAR100_COARSE)
        xtr = torch.tensor(tr.data).float().div(255).permute(0, 3, 1, 2)
        xte = torch.tensor(te.data).float().div(255).permute(0, 3, 1, 2)
        ytr, yte = torch.tensor(tr.targets), torch.tensor(te.targets)
        return xtr, ytr, coarse_of[ytr], xte, yte, coarse_of[yte], 20
    fm = fashion_mnist(smoke) if need_data(smoke) else None
    if fm is None:
        x, y = standin(1500, 10, seed)
        xtr, ytr, xte, yte = x[:1200], y[:1200], x[1200:], y[1200:]
    else:
        xtr, ytr, xte, yte = fm
    lut = torch.tensor([COARSE[i] for i in range(10)])
    return xtr, ytr, lut[ytr], xte, yte, lut[yte], 4


# CIFAR-100 fine -> coarse (the dataset's own 20 superclasses), for --data-root
CIFAR100_COARSE = [
    4,
    1,
    14,
    8,
    0,
    6,
    7,
    7,
    18,
    3,
    3,
    14,
    9,
    18,
    7,
    11,
    3,
    9,
    7,
    11,
    6,
    11,
    5,
    10,
    7,
    6,
    13,
    15,
    3,
    15,
    0,
    11,
    1,
    10,
    12,
    14,
    16,
    9,
    11,
    5,
    5,
    19,
    8,
    8,
    15,
    13,
    14,
    17,
    18,
    10,
    16,
    4,
    17,
    4,
    2,
    0,
    17,
    4,
    18,
    17,
    10,
    3,
    2,
    12,
    12,
    16,
    12,
    1,
    9,
    19,
    2,
    10,
    0,
    1,
    16,
    12,
    9,
    13,
    15,
    13,
    16,
    19,
    2,
    4,
    6,
    19,
    5,
    5,
    8,
    19,
    18,
    1,
    2,
    15,
    6,
    0,
    17,
    8,
    14,
    13,
]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-train", type=int, default=12000)
    args = p.parse_args()
    xtr, ytr, ctr, xte, yte, cte, n_coarse = load(args, args.smoke, args.seed)
    n = 800 if args.smoke else min(args.n_train, xtr.shape[0])
    xtr, ytr, ctr = xtr[:n], ytr[:n], ctr[:n]
    xte, yte = xte[: max(200, n // 4)], yte[: max(200, n // 4)]
    epochs = 1 if args.smoke else args.epochs
    in_chs = xtr.shape[1]
    supcon = SupConLoss(temperature=0.1)
    runs = {}

    def make_ce() -> tuple[nn.Module, nn.Module, list[nn.Parameter]]:
        bb = CNN(in_chs, width=16)
        model = WithHead(bb, MLPHead(bb.dim, bb.dim, 64))
        clf = nn.Linear(64, n_coarse)
        return model, clf, list(clf.parameters())

    t0 = time.time()
    rows = []
    for method in (
        "cross-entropy + MLP head",
        "SupCon + MLP head",
        "SupCon + reweight head (1.05)",
    ):
        torch.manual_seed(args.seed)
        if method.startswith("cross"):
            model, clf, extra = make_ce()

            def loss_fn(
                m: nn.Module,
                xb: torch.Tensor,
                yb: torch.Tensor,
                g: torch.Generator,
                clf: nn.Module = clf,
            ) -> torch.Tensor:
                return F.cross_entropy(clf(m(crop_flip(xb, g))), yb)
        else:
            bb = CNN(in_chs, width=16)
            head = (
                MLPHead(bb.dim, bb.dim, 64) if "MLP" in method else ReweightHead(bb.dim, kappa=1.05)
            )
            model, extra = WithHead(bb, head), []

            def loss_fn(
                m: nn.Module, xb: torch.Tensor, yb: torch.Tensor, g: torch.Generator
            ) -> torch.Tensor:
                z = torch.stack([m(crop_flip(xb, g)), m(crop_flip(xb, g))], 1)
                return supcon(z, yb)

        secs = train(
            model,
            loss_fn,
            xtr,
            ctr,
            epochs=epochs,
            batch_size=256,
            seed=args.seed,
            extra_params=extra,
        )
        pre, post = features(model.backbone, xtr), features(model, xtr)
        pre_te, post_te = features(model.backbone, xte), features(model, xte)
        fine = linear_probe(
            {"pre": pre, "post": post}, ytr, {"pre": pre_te, "post": post_te}, yte, epochs=30
        )
        coarse = linear_probe(
            {"pre": pre, "post": post},
            ctr,
            {"pre": pre_te, "post": post_te},
            cte[: xte.shape[0]],
            epochs=30,
        )
        knn_pre = knn_accuracy(pre, ytr, pre_te, yte)
        knn_post = knn_accuracy(post, ytr, post_te, yte)
        runs[method] = fine
        rows.append(
            [
                method,
                f"{100 * coarse['pre']:.1f}% / {100 * coarse['post']:.1f}%",
                f"{100 * fine['pre']:.1f}%",
                f"{100 * fine['post']:.1f}%",
                f"{100 * (fine['pre'] - fine['post']):+.1f}",
                f"{100 * knn_pre:.1f}% / {100 * knn_post:.1f}%",
                f"{secs:.0f}s",
            ]
        )
        print(rows[-1], flush=True)
    t = print_table(
        f"\ncoarse ({n_coarse} groups) -> fine (10 classes) transfer; {n} training images, {epochs} epochs",
        [
            "pretraining",
            "coarse acc pre / post",
            "fine acc pre",
            "fine acc post",
            "pre - post",
            "fine kNN pre / post",
            "train time",
        ],
        rows,
    )
    lines = []
    for m, r in runs.items():
        if "reweight" in m:
            lines.append(
                f"{m}: a per-coordinate reweighting cannot change a standardised linear probe (pre = post by construction); compare its pre column with the MLP head's"
            )
            continue
        lines.append(
            f"{m}: fine-class probe pre - post = {100 * (r['pre'] - r['post']):+.1f} pts ({'pre wins: AGREES' if r['pre'] > r['post'] else 'DISAGREES'})"
        )
    lines.append(f"total time {time.time() - t0:.0f} s")
    print("\n".join(lines))
    save_text(args.out, "4_coarse_to_fine.txt", t + "\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
