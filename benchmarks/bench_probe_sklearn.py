"""`linear_probe` against scikit-learn's `LogisticRegression`: accuracy parity and time, one run.

(a) Parity. Per feature set, ``--splits`` random train/test splits. scikit-learn: multinomial
    lbfgs (its default) on standardised features, at every C of a fine grid, and the C with the
    best mean test accuracy over the splits is its "best C" (chosen with hindsight, on the test
    sets: the strongest scikit-learn reference). headkit: `linear_probe` with its defaults, which
    chooses its penalty on a held-out fifth of the training set and refits. The gap is headkit
    minus scikit-learn per split; printed: mean, standard deviation, min and max over the splits.
    Feature sets: digits raw (64-d), digits through a random ReLU layer (1024-d), Fashion-MNIST
    through a random ReLU layer (512-d).
(b) Time. 8 layers x 5,000 training samples x 256 dims (the hidden layers of a random ReLU MLP
    on Fashion-MNIST, 1,000 test samples). What a user writes instead: per layer, a
    `StandardScaler`, `LogisticRegression` at C in {0.01, 0.1, 1, 10, 100} (default lbfgs,
    max_iter 100) on 4,000 samples, the best C on the other 1,000, a refit on all 5,000 and the
    test score. headkit: one `linear_probe` call on the 8 layers (defaults). Rounds are
    interleaved and medians compared; both sides run with the same thread count (torch and the
    BLAS under numpy pinned alike).

Data: scikit-learn's digits, and Fashion-MNIST from ``bash scripts/get_data.sh`` (the cache
``$HEADKIT_DATA``, default ``~/.cache/headkit``); without it, the Fashion-MNIST parts use
digits upsampled by random features instead and say so.

    python benchmarks/bench_probe_sklearn.py [--threads 1] [--rounds 3] [--splits 5] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from headkit.probe import linear_probe


def _sk() -> tuple[type, type]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    return LogisticRegression, StandardScaler


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y.astype(np.int64)


def fashion(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    path = os.path.join(
        os.environ.get("HEADKIT_DATA", os.path.expanduser("~/.cache/headkit")), "fashion_mnist.npz"
    )
    if not os.path.exists(path):
        return None
    d = np.load(path)
    idx = np.random.default_rng(seed).permutation(d["x_train"].shape[0])[:n]
    x = d["x_train"][idx].reshape(len(idx), -1).astype(np.float32) / 255.0
    return x, d["y_train"][idx].astype(np.int64)


def relu_features(x: np.ndarray, width: int, seed: int) -> np.ndarray:
    """One random ReLU layer (He init) on the centred, scaled input."""
    rng = np.random.default_rng(seed)
    h = (x - x.mean(0)) / (x.std(0) + 1e-6)
    w = rng.standard_normal((x.shape[1], width)).astype(np.float32) * np.sqrt(2.0 / x.shape[1])
    return np.maximum(h @ w, 0)


def mlp_layers(x: np.ndarray, n_layers: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """The hidden layers of a random ReLU MLP (He init), each ``(N, width)``."""
    rng = np.random.default_rng(seed)
    h = x - x.mean(0)
    out = []
    for _ in range(n_layers):
        w = rng.standard_normal((h.shape[1], width)).astype(np.float32) * np.sqrt(2.0 / h.shape[1])
        h = np.maximum(h @ w, 0)
        out.append(h)
        h = h - h.mean(0)
    return out


def split(n: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def parity(
    name: str, x: np.ndarray, y: np.ndarray, n_test: int, splits: int, cs: np.ndarray
) -> dict[str, float]:
    LogisticRegression, StandardScaler = _sk()
    sk = np.zeros((splits, len(cs)))
    hk = np.zeros(splits)
    wds = []
    t_sk = t_hk = 0.0
    for s in range(splits):
        tr, te = split(len(y), n_test, 100 + s)
        sc = StandardScaler().fit(x[tr])
        xtr, xte = sc.transform(x[tr]), sc.transform(x[te])
        t0 = time.perf_counter()
        for j, c in enumerate(cs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # max_iter warnings at the weakest C
                m = LogisticRegression(C=float(c), max_iter=1000).fit(xtr, y[tr])
            sk[s, j] = m.score(xte, y[te])
        t_sk += time.perf_counter() - t0
        t0 = time.perf_counter()
        res = linear_probe(
            {"x": torch.from_numpy(x[tr])},
            torch.from_numpy(y[tr]),
            {"x": torch.from_numpy(x[te])},
            torch.from_numpy(y[te]),
            seed=s,
        )
        t_hk += time.perf_counter() - t0
        hk[s] = res["x"]
        wds.append(res.settings["x"]["weight_decay"])
    best = int(sk.mean(0).argmax())
    gap = 100 * (hk - sk[:, best])
    print(
        f"{name:34s} {x.shape[1]:5d} {len(y) - n_test:6d} {cs[best]:8.3g} {100 * sk[:, best].mean():7.2f} "
        f"{100 * hk.mean():7.2f} {gap.mean():+6.2f} {gap.std(ddof=1) if splits > 1 else 0:5.2f} "
        f"[{gap.min():+.2f}, {gap.max():+.2f}]  {t_sk:6.1f} {t_hk:5.1f}  wd {sorted(set(wds))}"
    )
    return {"gap": float(gap.mean())}


def sklearn_user(
    layers: list[np.ndarray], y: np.ndarray, n_train: int, n_val: int, cs: list[float]
) -> list[float]:
    """Per layer: scale, fit each C on the fit split, pick on the validation split, refit, test."""
    LogisticRegression, StandardScaler = _sk()
    acc = []
    ytr, yte = y[:n_train], y[n_train:]
    for x in layers:
        sc = StandardScaler().fit(x[:n_train])
        xtr, xte = sc.transform(x[:n_train]), sc.transform(x[n_train:])
        fit, val = slice(0, n_train - n_val), slice(n_train - n_val, n_train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # what a user sees: ConvergenceWarning at large C
            scores = [
                LogisticRegression(C=c).fit(xtr[fit], ytr[fit]).score(xtr[val], ytr[val])
                for c in cs
            ]
            best = cs[int(np.argmax(scores))]
            acc.append(LogisticRegression(C=best).fit(xtr, ytr).score(xte, yte))
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads, both sides")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="small and fast (CI): < 30 s")
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--skip-time", action="store_true")
    args = ap.parse_args()
    import sklearn
    from threadpoolctl import threadpool_info, threadpool_limits

    _sk()  # load scikit-learn's and SciPy's thread pools first: a limit covers only those loaded
    import scipy.optimize  # noqa: F401  (the lbfgs of LogisticRegression)

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    pools = sorted({f"{i['internal_api']}={i['num_threads']}" for i in threadpool_info()})
    print(
        f"torch {torch.__version__}, scikit-learn {sklearn.__version__}, numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} thread(s) per side (torch {torch.get_num_threads()}; thread pools "
        f"{', '.join(pools)}), load average {os.getloadavg()[0]:.1f} at start"
    )
    xd, yd = digits()
    fm = fashion(3000 if args.smoke else 6000)
    if fm is None:
        print("(no Fashion-MNIST in the cache: run `bash scripts/get_data.sh`; digits stand in)")
    if not args.skip_parity:
        splits = 2 if args.smoke else args.splits
        cs = np.logspace(-3, 1, 5) if args.smoke else np.logspace(-4, 2, 13)
        print(
            f"\n(a) parity, {splits} random splits per set; scikit-learn at its best C of "
            f"{len(cs)} (log-spaced {cs[0]:g}..{cs[-1]:g}, best mean test accuracy); "
            "gap = headkit - scikit-learn in points"
        )
        print(
            f"{'features':34s} {'D':>5s} {'train':>6s} {'best C':>8s} {'sklearn':>7s} {'headkit':>7s} "
            f"{'gap':>6s} {'sd':>5s} [min, max]        sk s  hk s"
        )
        gaps = [parity("digits, raw", xd, yd, 450, splits, cs)["gap"]]
        if not args.smoke:
            gaps.append(
                parity("digits, random ReLU 1024", relu_features(xd, 1024, 1), yd, 450, splits, cs)[
                    "gap"
                ]
            )
            if fm is not None:
                xf = relu_features(fm[0][:4000], 512, 2)
                gaps.append(
                    parity("Fashion-MNIST, random ReLU 512", xf, fm[1][:4000], 1000, splits, cs)[
                        "gap"
                    ]
                )
            else:
                gaps.append(
                    parity(
                        "digits, random ReLU 512", relu_features(xd, 512, 2), yd, 450, splits, cs
                    )["gap"]
                )
        print(f"mean gap over the sets: {statistics.mean(gaps):+.2f} points (target: >= -0.5)")
    if not args.skip_time:
        if args.smoke:
            n_layers, n_train, n_test, width = 8, 1200, 400, 64
        else:
            n_layers, n_train, n_test, width = 8, 5000, 1000, 256
        n = n_train + n_test
        if fm is not None:
            src = (fm[0][:n], fm[1][:n])
            what = "hidden layers of a random ReLU MLP on Fashion-MNIST"
        else:
            idx = np.arange(n) % len(yd)
            src = (relu_features(xd, 784, 3)[idx], yd[idx])
            what = "hidden layers of a random ReLU MLP on digits (no Fashion-MNIST cached)"
        rounds = 1 if args.smoke else args.rounds
        timing(what, mlp_layers(src[0], n_layers, width), src[1], n_train, rounds)
        # the synthetic layers of bench_probe.py: Gaussian noise + class means (easy to fit)
        g = torch.Generator().manual_seed(0)
        yg = torch.randint(0, 10, (n,), generator=g)
        gauss = [
            (
                torch.randn(n, width, generator=g) + torch.randn(10, width, generator=g)[yg] * 0.5
            ).numpy()
            for _ in range(n_layers)
        ]
        timing("Gaussian layers (noise + 0.5 x class means)", gauss, yg.numpy(), n_train, rounds)


def timing(what: str, layers: list[np.ndarray], y: np.ndarray, n_train: int, rounds: int) -> None:
    """(b): the scikit-learn user's loop against one `linear_probe` call, interleaved."""
    n_layers, width, n_test = len(layers), layers[0].shape[1], len(y) - n_train
    cs = [0.01, 0.1, 1.0, 10.0, 100.0]
    tr = {f"layer{i}": torch.from_numpy(x[:n_train]) for i, x in enumerate(layers)}
    te = {f"layer{i}": torch.from_numpy(x[n_train:]) for i, x in enumerate(layers)}
    ytr, yte = torch.from_numpy(y[:n_train]), torch.from_numpy(y[n_train:])
    out: dict[str, list[float]] = {}
    runs: dict[str, Callable[[], object]] = {
        "sklearn": lambda: out.update(sklearn=sklearn_user(layers, y, n_train, n_train // 5, cs)),
        "headkit": lambda: out.update(headkit=list(linear_probe(tr, ytr, te, yte).values())),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpus: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[k].append(time.perf_counter() - t0)
            cpus[k].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    mcpu = {k: statistics.median(v) for k, v in cpus.items()}
    print(
        f"\n(b) time: {n_layers} layers x {n_train} x {width} (+ {n_test} test), 10 classes, "
        f"{what}; {rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(f"{'what':62s} {'wall s':>7s} {'runs':>18s} {'CPU s':>6s} {'runs':>18s} {'mean acc':>8s}")
    labels = {
        "sklearn": f"scikit-learn per layer, C in {cs}, select + refit",
        "headkit": "headkit linear_probe (defaults: 7 penalties, select + refit)",
    }
    for k in runs:
        rs = ", ".join(f"{t:.2f}" for t in times[k])
        rc = ", ".join(f"{t:.2f}" for t in cpus[k])
        print(
            f"{labels[k]:62s} {med[k]:7.2f} {rs:>18s} {mcpu[k]:6.2f} {rc:>18s} "
            f"{100 * np.mean(out[k]):7.2f}%"
        )
    diff = 100 * (np.array(out["headkit"]) - np.array(out["sklearn"]))
    print(
        f"headkit {med['sklearn'] / med['headkit']:.2f}x faster in wall time, "
        f"{mcpu['sklearn'] / mcpu['headkit']:.2f}x in CPU time; accuracy headkit - scikit-learn "
        f"per layer: mean {diff.mean():+.2f}, min {diff.min():+.2f}, max {diff.max():+.2f} points"
    )


if __name__ == "__main__":
    main()
