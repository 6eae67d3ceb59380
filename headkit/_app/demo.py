"""``headkit demo``: does the layer before the projection head keep what augmentation removes?

The paper's disrupted-feature setting (Xue et al., ICLR 2024, arXiv 2403.11391, Sec. 5), built
from scikit-learn's digits: each image holds two digits side by side, SimCLR's views drop the
right one half of the time, and the downstream task is to name the right digit. Three heads (none,
`MLPHead`, `ReweightHead`), several seeds, a layer sweep of each run; the output states the pre-
minus post-projection gap per head with its interval, the layers tied with the best, the
label-free choice beside the oracle, and what the numbers show.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import HeadkitError
from .._losses import NTXentLoss
from ..heads import MLPHead, ReweightHead
from .demo_data import DisruptedDigits, augment, disrupted_digits, drop_right
from .outputs import write_atomic

__all__ = ["DemoResult", "Encoder", "make_encoder", "run_demo", "train_simclr"]

HEADS = ("none", "mlp", "reweight")
HEAD_NAMES = {"none": "no head", "mlp": "MLPHead", "reweight": "ReweightHead"}
LAYERS = ("backbone.block1", "backbone.block2", "backbone", "head")
DROP_P = 0.5
KAPPA = 1.05
# light linear probes: the same for every layer, head and seed (the demo must stay short); the
# mini-batch Adam probe its published numbers were measured with
PROBE = {
    "epochs": 40,
    "refit": False,
    "lrs": (1e-2, 1e-1),
    "weight_decays": (0.0, 1e-3),
    "solver": "adam",
}


# ----------------------------------------------------------------------------- model


class Encoder(nn.Module):
    """A small MLP encoder: three blocks (``backbone.block1..3``), then a head.

    Args:
        in_dim: input features (pixels).
        width: width of the first two blocks.
        out_dim: width of the last block (the pre-projection features).
    """

    def __init__(self, in_dim: int, width: int = 256, out_dim: int = 128) -> None:
        super().__init__()
        self.backbone = nn.Sequential()
        self.backbone.add_module(
            "block1",
            nn.Sequential(nn.Flatten(), nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU()),
        )
        self.backbone.add_module(
            "block2", nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU())
        )
        self.backbone.add_module(
            "block3", nn.Sequential(nn.Linear(width, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU())
        )
        self.head: nn.Module = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.backbone(x))
        return out


def make_encoder(
    in_dim: int, head: str, width: int = 256, out_dim: int = 128, kappa: float = KAPPA
) -> Encoder:
    """The demo's encoder with ``head`` in ``{"none", "mlp", "reweight"}``."""
    enc = Encoder(in_dim, width, out_dim)
    if head == "mlp":
        enc.head = MLPHead(out_dim, out_dim, 64, num_layers=2)
    elif head == "reweight":
        enc.head = ReweightHead(out_dim, kappa=kappa)
    elif head != "none":
        raise HeadkitError(f"head must be 'none', 'mlp' or 'reweight', got {head!r}")
    return enc


def train_simclr(
    model: nn.Module,
    x: Tensor,
    *,
    views: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 2e-3,
    temperature: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    desc: str = "SimCLR",
) -> list[float]:
    """Pretrain ``model`` with SimCLR (headkit's `NTXentLoss`) on images ``x``.

    Args:
        model: the encoder.
        x: ``(N, C, H, W)`` images.
        views: makes one view of a batch (default `augment`).
        epochs: passes over ``x``.
        batch_size: images per step.
        lr: AdamW learning rate.
        temperature: NT-Xent temperature.
        seed: seed of the shuffling and the views.
        progress: a progress bar.
        desc: its label.

    Returns:
        The mean loss of each epoch.
    """
    make_view = views or (lambda xb, g: augment(xb, g))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    crit = NTXentLoss(temperature)
    losses = []
    it: Any = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, leave=False, dynamic_ncols=True)
    model.train()
    for _ in it:
        perm = torch.randperm(x.shape[0], generator=g)
        total = torch.zeros(())
        count = 0
        for s in range(0, x.shape[0] - 1, batch_size):
            xb = x[perm[s : s + batch_size]]
            if xb.shape[0] < 2:
                continue
            loss = crit(model(make_view(xb, g)), model(make_view(xb, g)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * xb.shape[0]
            count += xb.shape[0]
        losses.append(float(total) / max(count, 1))
        if progress:
            it.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


# ----------------------------------------------------------------------------- statistics

# two-sided 95% Student t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds (the interval collapses to the mean for one seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _T95.get(n - 1, 1.96) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _pts(v: float) -> str:
    return f"{100 * v:+.1f}"


def _verdict(lo: float, hi: float, better: str, worse: str) -> str:
    if lo > 0:
        return better
    if hi < 0:
        return worse
    return "INCONCLUSIVE (the interval includes 0)"


# ----------------------------------------------------------------------------- the demo


@dataclass
class DemoResult:
    """What `run_demo` produced.

    Attributes:
        reports: ``{head: [SweepReport per seed]}`` on the disrupted (right) digit.
        control: ``{head: [SweepReport per seed]}`` on the kept (left) digit.
        summary: ``{head: SweepReport}`` of the means over seeds with 95% intervals.
        choices: ``{head: [LayerChoice per seed]}`` from `headkit.probe.recommend_layer`.
        gaps: ``{head: (mean, lo, hi)}``: pre- minus post-projection, linear probe.
        plot: the plot's path, or None.
        seconds: wall time.
    """

    reports: dict[str, list[Any]] = field(default_factory=dict)
    control: dict[str, list[Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, list[Any]] = field(default_factory=dict)
    gaps: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    plot: str | None = None
    seconds: float = 0.0


def _loaders(x: Tensor, *labels: Tensor, bs: int = 1000) -> list[tuple[Tensor, ...]] | list[Tensor]:
    if not labels:
        return [x[i : i + bs] for i in range(0, x.shape[0], bs)]
    return [(x[i : i + bs], *(lab[i : i + bs] for lab in labels)) for i in range(0, x.shape[0], bs)]


def _layers_of(head: str) -> list[str]:
    return list(LAYERS) if head != "none" else list(LAYERS[:3])


def _roles(head: str) -> dict[int | str, str]:
    if head == "none":
        return {"backbone": "output (no head)"}
    return {"backbone": "pre-projection", "head": "post-projection"}


def run_demo(
    *,
    seeds: int = 3,
    epochs: int = 15,
    out_dir: str = ".",
    seed: int = 0,
    plot: bool = True,
    progress: bool = True,
    smoke: bool = False,
    n_train: int = 1500,
    n_test: int = 600,
    workers: int = 2,
    print_fn: Callable[[str], Any] = print,
) -> DemoResult:
    """Pretrain with no head, `MLPHead` and `ReweightHead` over several seeds; sweep; explain.

    Args:
        seeds: seeds per head.
        epochs: SimCLR epochs per run.
        out_dir: folder for ``headkit-demo.png``.
        seed: the first seed.
        plot: write the plot (needs matplotlib).
        progress: progress bars.
        smoke: a run that only checks the code (at most 400 training images; it says so and
            draws no conclusion).
        n_train: training images.
        n_test: test images.
        workers: runs in parallel, each in its own process with one thread (1: in this
            process).
        print_fn: where the lines go.

    Returns:
        `DemoResult`.
    """
    if seeds < 1 or epochs < 1:
        raise HeadkitError(f"seeds and epochs must be >= 1, got {seeds} and {epochs}")
    if smoke:
        n_train, n_test = min(n_train, 400), min(n_test, 200)
    threads = torch.get_num_threads()
    # one thread: these matrices are small, and on a shared (oversubscribed) CPU a second
    # thread spins and makes every step several times slower
    torch.set_num_threads(1)
    try:
        return _run(
            seeds, epochs, out_dir, seed, plot, progress, smoke, n_train, n_test, workers, print_fn
        )
    finally:
        torch.set_num_threads(threads)


def _run(
    seeds: int,
    epochs: int,
    out_dir: str,
    seed: int,
    plot: bool,
    progress: bool,
    smoke: bool,
    n_train: int,
    n_test: int,
    workers: int,
    print_fn: Callable[[str], Any],
) -> DemoResult:
    from ..probe import METRICS, SweepReport

    t0 = time.time()
    say = print_fn
    lin, rank, unev = METRICS["linear"], METRICS["rankme"], METRICS["unevenness"]
    say("headkit demo: does the layer before the projection head keep what augmentation removes?")
    say(
        f"  data: pairs of scikit-learn digits (8x16 px; {n_train} train, {n_test} test images "
        "from disjoint digits). SimCLR's views remove the right digit with probability "
        f"{DROP_P} (the disrupted feature); the downstream task is to name the right digit. "
        "Control: the left digit, kept in every view."
    )
    say(
        f"  pretraining: SimCLR (headkit NTXentLoss), an MLP encoder (block1-3), {epochs} epochs; "
        f"no head, MLPHead, ReweightHead(kappa={KAPPA}); {seeds} seed(s): "
        f"{', '.join(str(seed + s) for s in range(seeds))}"
    )
    say(
        f"  metrics: {lin.display} ({lin.direction} is better), {rank.display} ({rank.direction} "
        f"is better: more directions used), {unev.display} (spectrum Gini; {unev.direction} is "
        "better: more even)"
    )
    if smoke:
        say("  SMOKE RUN: checks that the code runs; too short to show anything")
    res = DemoResult()
    for h in HEADS:
        res.reports[h], res.control[h], res.choices[h] = [], [], []
    jobs = [(seed + s, h) for s in range(seeds) for h in HEADS]
    done: dict[tuple[int, str], tuple[Any, Any, Any, float]] = {}
    workers = max(1, min(workers, len(jobs)))
    say(f"  running {len(jobs)} pretraining runs, {workers} at a time (one thread each)")
    if workers == 1:
        for sd, h in jobs:
            done[(sd, h)] = _job(sd, h, epochs, n_train, n_test, progress)
            say(f"  seed {sd}, {HEAD_NAMES[h]}: done in {done[(sd, h)][3]:.0f} s")
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {
                pool.submit(_job, sd, h, epochs, n_train, n_test, False): (sd, h) for sd, h in jobs
            }
            for fut in as_completed(futures):
                sd, h = futures[fut]
                done[(sd, h)] = fut.result()
                say(f"  seed {sd}, {HEAD_NAMES[h]}: done in {done[(sd, h)][3]:.0f} s")
    for sd, h in jobs:
        rep, ctl, choice, _ = done[(sd, h)]
        res.reports[h].append(rep)
        res.control[h].append(ctl)
        res.choices[h].append(choice)

    # ------------------------------------------------------------------ the table
    res.summary = {h: _summarise(res.reports[h], SweepReport, seeds) for h in HEADS}
    interval = (
        f"mean and 95% t-interval over {seeds} seeds"
        if seeds > 1
        else "one seed; 95% Wilson interval over the test images"
    )
    say("")
    say(f"Right digit (disrupted by augmentation), {lin.display} by layer ({interval}):")
    say(_table(res, lin, rank, unev))

    # ------------------------------------------------------------------ 1. pre minus post
    say("")
    say("1. Pre- minus post-projection (linear probe on the right digit; percentage points):")
    for h in ("mlp", "reweight"):
        diffs = [_acc(r, "backbone") - _acc(r, "head") for r in res.reports[h]]
        m, lo, hi = _mean_ci(diffs)
        res.gaps[h] = (m, lo, hi)
        per = ", ".join(_pts(d) for d in diffs)
        if h == "reweight" and max(abs(d) for d in diffs) < 0.5 / n_test:
            say(
                f"   {HEAD_NAMES[h]:<13} {_pts(m)} in every seed: equal by construction. Its "
                f"output is the pre-projection features times a fixed weight per coordinate "
                f"(kappa^-i), and the probe standardises each coordinate, so it sees the same "
                "information."
            )
            continue
        if seeds > 1:
            say(
                f"   {HEAD_NAMES[h]:<13} {_pts(m)} ({_pts(lo)} to {_pts(hi)}; per seed {per}): "
                + _verdict(lo, hi, "pre-projection is better", "post-projection is better")
            )
        else:
            say(f"   {HEAD_NAMES[h]:<13} {_pts(m)} (one seed: no interval)")
    say("   no head       - (without a head the output is the last backbone block)")
    ctl_gaps = [_acc(r, "backbone") - _acc(r, "head") for r in res.control["mlp"]]
    cm, clo, chi = _mean_ci(ctl_gaps)
    ctl_text = f"{_pts(cm)}" + (f" ({_pts(clo)} to {_pts(chi)})" if seeds > 1 else "")
    say(
        f"   control, left digit (kept in every view), MLPHead: {ctl_text}; "
        f"the disrupted digit's gap is {_pts(res.gaps['mlp'][0])}"
    )

    # ------------------------------------------------------------------ 2. heads compared
    say("")
    say(
        "2. The pre-projection layer (backbone) with a head minus the output without one (percentage points):"
    )
    base = [_acc(r, "backbone") for r in res.reports["none"]]
    for h in ("mlp", "reweight"):
        diffs = [_acc(r, "backbone") - b for r, b in zip(res.reports[h], base, strict=True)]
        m, lo, hi = _mean_ci(diffs)
        tail = (
            f" ({_pts(lo)} to {_pts(hi)}): "
            + _verdict(lo, hi, f"{HEAD_NAMES[h]} helps", f"{HEAD_NAMES[h]} hurts")
            if seeds > 1
            else " (one seed: no interval)"
        )
        say(f"   {HEAD_NAMES[h]:<13} {_pts(m)}{tail}")

    # ------------------------------------------------------------------ 3. which layer
    say("")
    say(
        "3. Which layer? Oracle = best linear probe on the right digit; tied = not separable "
        "from it (paired bootstrap over the test images, 5%):"
    )
    for h in HEADS:
        say(f"   {HEAD_NAMES[h]:<13} " + _which_layer(res.reports[h], res.choices[h]))
    say(
        "   (label-free choice: headkit.probe.recommend_layer on the training images without "
        "labels)"
    )

    # ------------------------------------------------------------------ 4. unevenness by depth
    say("")
    say(
        f"4. {unev.display} by depth (spectrum Gini, mean over seeds; {unev.direction} is better: "
        "more even). The paper: training weights features more unequally with depth."
    )
    rising = 0
    for h in HEADS:
        summ = res.summary[h]
        vals = summ.metrics["unevenness"]
        rising += _increasing(vals)
        steps = " -> ".join(
            f"{layer} {unev.format(v)}" for layer, v in zip(summ.layers, vals, strict=True)
        )
        say(f"   {HEAD_NAMES[h]:<13} {steps}")
    say(f"   it rises with every layer in {rising} of {len(HEADS)} heads")

    # ------------------------------------------------------------------ plot and close
    if plot:
        res.plot = _plot(res, out_dir, interval, say)
    say("")
    say("In short: " + _conclusion(res, seeds, smoke))
    res.seconds = time.time() - t0
    say(f"done in {res.seconds:.0f} s")
    return res


def _job(
    sd: int, head: str, epochs: int, n_train: int, n_test: int, progress: bool
) -> tuple[Any, Any, Any, float]:
    """One pretraining run and its sweeps (a top-level function: it runs in a worker process)."""
    from ..probe import layer_sweep, recommend_layer

    torch.set_num_threads(1)
    t1 = time.time()
    data: DisruptedDigits = disrupted_digits(n_train, n_test, seed=sd)

    def views(xb: Tensor, g: torch.Generator) -> Tensor:
        return drop_right(augment(xb, g), g, DROP_P)

    torch.manual_seed(sd)
    model = make_encoder(int(data.x_train[0].numel()), head)
    train_simclr(
        model,
        data.x_train,
        views=views,
        epochs=epochs,
        seed=sd,
        progress=progress,
        desc=f"seed {sd}, {HEAD_NAMES[head]}",
    )
    layers = _layers_of(head)
    common: dict[str, Any] = {
        "layers": layers,
        "roles": _roles(head),
        "probe_kwargs": PROBE,
        "seed": sd,
        "progress": False,
    }
    rep = layer_sweep(
        model,
        _loaders(data.x_train, data.right_train),
        _loaders(data.x_test, data.right_test),
        metrics=("linear", "rankme", "unevenness"),
        **common,
    )
    ctl = layer_sweep(
        model,
        _loaders(data.x_train, data.left_train),
        _loaders(data.x_test, data.left_test),
        metrics=("linear",),
        n_boot=0,
        **common,
    )
    # label-free (RankMe, as the docs record it): the training images without their labels
    # (n_boot=0: its bootstrap costs seconds per run; the demo's seeds show how stable the
    # choice is instead)
    choice = recommend_layer(
        model, _loaders(data.x_train), layers, rule="rankme", seed=sd, n_boot=0, progress=False
    )
    return rep, ctl, choice, time.time() - t1


def _acc(report: Any, layer: str) -> float:
    v = report.results("linear")[layer]
    return float("nan") if v is None else float(v)


def _summarise(reports: list[Any], cls: Any, seeds: int) -> Any:
    """One report of the means over seeds, with 95% t-intervals (bootstrap for one seed)."""
    first = reports[0]
    metrics: dict[str, list[float | None]] = {}
    bounds: dict[str, list[list[float] | None]] = {}
    for m in first.metrics:
        cols = [[r.metrics[m][i] for r in reports] for i in range(len(first.layers))]
        metrics[m] = [None if None in c else _mean_ci(c)[0] for c in cols]
        if m == "linear":
            if seeds > 1:
                bounds[m] = [None if None in c else list(_mean_ci(c)[1:]) for c in cols]
            else:
                bounds[m] = [list(first.intervals(m)[layer]) for layer in first.layers]
    info = {"seeds": seeds, "interval": "95% t over seeds" if seeds > 1 else "95% bootstrap"}
    return cls(
        layers=list(first.layers),
        metrics=metrics,
        roles=dict(first.roles),
        dims=list(first.dims),
        info=info,
        bounds=bounds,
    )


def _cell(summ: Any, layer: str, text: Callable[[Any, int], str]) -> str:
    """One head's cell of a layer's row: ``text(summary, index)``, or ``-`` where the head
    has no such layer."""
    return text(summ, summ.layers.index(layer)) if layer in summ.layers else "-"


def _table(res: DemoResult, lin: Any, rank: Any, unev: Any) -> str:
    heads = list(HEADS)

    def accuracy(summ: Any, i: int) -> str:
        b = summ.bounds["linear"][i]
        cell: str = lin.format(summ.metrics["linear"][i])
        return cell if b is None else f"{cell} ({lin.format(b[0])}-{lin.format(b[1])})"

    def spectra(summ: Any, i: int) -> str:
        return (
            f"{rank.format(summ.metrics['rankme'][i])} / "
            f"{unev.format(summ.metrics['unevenness'][i])}"
        )

    head = ["layer", "role", *(HEAD_NAMES[h] for h in heads)]
    rows = []
    for layer in LAYERS:
        role = (
            "pre-projection"
            if layer == "backbone"
            else ("post-projection" if layer == "head" else "")
        )
        rows.append([layer, role, *(_cell(res.summary[h], layer, accuracy) for h in heads)])
    lines = _columns(head, rows)
    lines.append("")
    lines.append(
        f"Label-free, mean over seeds ({rank.display}: {rank.direction} is better; "
        f"{unev.display}: {unev.direction} is better):"
    )
    head2 = ["layer", *(f"{HEAD_NAMES[h]} {rank.display} / {unev.display}" for h in heads)]
    rows2 = []
    for layer in LAYERS:
        rows2.append([layer, *(_cell(res.summary[h], layer, spectra) for h in heads)])
    lines += _columns(head2, rows2)
    return "\n".join(lines)


def _columns(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in rows]
    return ["  " + line.rstrip() for line in out]


def _which_layer(reports: list[Any], choices: list[Any]) -> str:
    n = len(reports)
    best = [r.best_layer("linear") for r in reports]
    ties = [
        [t for t in r.tied_with_best("linear") if t != b]
        for r, b in zip(reports, best, strict=True)
    ]
    top = max(set(best), key=best.count)
    text = f"oracle {top} ({best.count(top)} of {n} seeds)"
    tied_any = sorted({str(t) for tl in ties for t in tl})
    text += "; tied with it: " + (", ".join(tied_any) if tied_any else "none")
    picks = [str(c.layer) for c in choices]
    pick = max(set(picks), key=picks.count)
    hits = sum(
        1
        for c, r, b in zip(choices, reports, best, strict=True)
        if str(c.layer) in {str(b), *(str(t) for t in r.tied_with_best("linear"))}
    )
    lost = [
        100 * (_acc(r, str(b)) - _acc(r, str(c.layer)))
        for c, r, b in zip(choices, reports, best, strict=True)
    ]
    text += (
        f"; label-free choice {pick} ({picks.count(pick)} of {n}), "
        f"tied with the oracle in {hits} of {n}, {sum(lost) / n:.1f} points below it on average"
    )
    return text


def _plot(res: DemoResult, out_dir: str, interval: str, say: Callable[[str], Any]) -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        say('(no plot: matplotlib is not installed; pip install "headkit[plot]")')
        return None
    from ..probe import METRICS
    from ..probe._plot import reports_figure

    metrics = ["linear", "rankme", "unevenness"]
    fig = reports_figure(
        {HEAD_NAMES[h]: res.summary[h] for h in HEADS},
        metrics=metrics,
        title=f"SimCLR on digit pairs, the right digit disrupted by augmentation ({interval})",
    )
    # one name and a direction per metric, and the intervals these bars are
    for ax, m in zip(fig.axes, metrics, strict=False):
        info = METRICS[m]
        ax.set_title(f"{info.display} ({info.direction} is better)")
    for text in fig.texts:
        if "bars:" in text.get_text():
            text.set_text(f"bars: {interval}; star: best layer")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "headkit-demo.png")
    existed = os.path.exists(path)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    say(f"plot written to {path}" + (" (replaced the earlier one)" if existed else ""))
    return path


def _increasing(values: Sequence[float | None]) -> bool:
    vals = [v for v in values if v is not None]
    return all(b > a for a, b in itertools.pairwise(vals))


def _conclusion(res: DemoResult, seeds: int, smoke: bool) -> str:
    if smoke:
        return (
            "a smoke run (one seed, two epochs): it checks that the code runs and proves nothing."
        )
    m, lo, hi = res.gaps["mlp"]
    best_layers = [str(r.best_layer("linear")) for h in HEADS for r in res.reports[h]]
    top = max(set(best_layers), key=best_layers.count)
    if seeds < 2:
        first = (
            f"with an MLP head, pre- minus post-projection is {_pts(m)} points on the disrupted "
            "digit from one seed, which gives no interval (run --seeds 3 or more)"
        )
    elif lo > 0:
        first = (
            f"with an MLP head, the layer before the head names the disrupted digit "
            f"{100 * m:.0f} points better than the head's output "
            f"({_pts(lo)} to {_pts(hi)} over {seeds} seeds)"
        )
    elif hi < 0:
        first = (
            f"with an MLP head, the head's output names the disrupted digit better than the layer "
            f"before it ({_pts(m)} points; {_pts(lo)} to {_pts(hi)} over {seeds} seeds)"
        )
    else:
        first = (
            f"pre- vs post-projection with an MLP head is INCONCLUSIVE on the disrupted digit "
            f"({_pts(m)} points; {_pts(lo)} to {_pts(hi)} over {seeds} seeds)"
        )
    where = f"the best layer for it is {top} in {best_layers.count(top)} of {len(best_layers)} runs"
    if top in LAYERS[:2]:
        where += ", below the pre-projection layer: for a feature the augmentation removes, read a lower layer"
    return f"{first}; {where}."
