"""The ``headkit`` command line: ``headkit demo`` and ``headkit sweep``.

Every error a user can cause (a bad path, an unreadable checkpoint, mismatched keys, a
misspelled model) prints one line, ``headkit <command>: error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import HeadkitError, first_line
from .outputs import (
    check_folder,
    check_outputs,
    check_store_space,
    fallback_path,
    printable_streams,
    show,
    why_not,
    write_atomic,
    write_text,
)

__all__ = ["main"]

_METRICS = ("linear", "knn", "rankme", "unevenness")


def _version() -> str:
    from .._version import __version__

    return f"headkit {__version__}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="headkit",
        description="Projection heads and layer-wise representations for self-supervised learning.",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,sweep}")
    d = sub.add_parser(
        "demo",
        help="does the layer before the projection head keep what augmentation removes? "
        "(SimCLR on digits, three heads, several seeds)",
        description="SimCLR on scikit-learn's digits where augmentation removes a feature the "
        "downstream task needs; no head, MLPHead and ReweightHead over several seeds; "
        "pre- vs post-projection with intervals, the layers tied with the best, the "
        "label-free choice beside the oracle, and a plot.",
    )
    d.add_argument("--seeds", type=int, default=3, help="seeds per head (default 3)")
    d.add_argument("--epochs", type=int, default=15, help="SimCLR epochs per run (default 15)")
    d.add_argument(
        "--workers",
        type=int,
        default=2,
        help="runs in parallel, one process and one thread each (default 2; 1: no processes)",
    )
    d.add_argument("--out", default=".", help="folder for the plot (default: current folder)")
    d.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    d.add_argument("--no-plot", action="store_true", help="write no plot")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--smoke", action="store_true", help="1 seed, 2 epochs: checks that it runs")

    s = sub.add_parser(
        "sweep",
        help="layer sweep of a model (and checkpoint) on your images, without code",
        description="Probe every layer of a model on labelled images: linear probe and kNN with "
        "95% intervals, the layers tied with the best, and label-free measures.",
    )
    s.add_argument(
        "--model",
        required=True,
        help="timm:NAME, torchvision:NAME, hf:<local folder or config.json> or open_clip:NAME "
        "(never downloads; weights from --checkpoint or the hf folder)",
    )
    s.add_argument(
        "--checkpoint",
        default=None,
        help="weights: a state_dict, lightly, Lightning or DDP checkpoint (.pt .pth .ckpt "
        ".safetensors); loaded strictly",
    )
    s.add_argument(
        "--non-strict",
        action="store_true",
        help="load the tensors that match and list what was left out (default: missing or "
        "unexpected keys are an error)",
    )
    s.add_argument(
        "--checkpoint-prefix",
        default=None,
        help="key prefix to load when the checkpoint holds the model more than once "
        "(e.g. teacher.backbone.)",
    )
    s.add_argument(
        "--data",
        required=True,
        help="image folder root/<class>/<image> (streamed) or .npz with x and y "
        "(x_train/y_train with x_test/y_test bring their own split)",
    )
    s.add_argument(
        "--test-data",
        default=None,
        help="held-out images of the same classes (default: a stratified 20%% of --data)",
    )
    s.add_argument(
        "--layers",
        nargs="+",
        default=None,
        help="layer specs: ints (timm indices) or module names (default: the model's blocks)",
    )
    s.add_argument(
        "--metrics",
        nargs="+",
        default=list(_METRICS),
        help=f"metrics (default: {' '.join(_METRICS)})",
    )
    s.add_argument(
        "--pool",
        default=None,
        choices=["avg", "flatten", "cls", "mean", "cls+mean"],
        help="pooling of each layer's output (default: mean over the patch tokens for models "
        "with class / register tokens, avg otherwise)",
    )
    s.add_argument(
        "--size",
        type=int,
        default=None,
        help="resize images to SIZE x SIZE (default: their own size, or the model's where it "
        "needs a fixed one)",
    )
    s.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    s.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    s.add_argument(
        "--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda when available)"
    )
    s.add_argument("--amp", action="store_true", help="bfloat16 autocast for feature extraction")
    s.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help="use a seeded stratified draw of this many images (per data set)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the draw, split and probes")
    s.add_argument(
        "--store",
        default=None,
        help="folder for memory-mapped features (for data larger than memory); its free space "
        "is checked before the sweep",
    )
    s.add_argument(
        "--out",
        default=None,
        help="write the report as JSON here (checked before any work, written atomically)",
    )
    s.add_argument(
        "--plot", default=None, help="write a plot here (.png, .pdf, .svg; needs matplotlib)"
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``headkit`` command; returns the exit status.

    Args:
        argv: the arguments (``["sweep", "--model", ...]``); None reads ``sys.argv``.

    Returns:
        0 on success; 2 for bad input (one line on standard error); 130 when interrupted.

    Example:
        >>> from headkit.cli import main
        >>> main(["sweep", "--model", "timm:resnet18", "--data", "/no/such/folder"])
        2
    """
    printable_streams()
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            if not args.no_plot:
                check_folder("--out", args.out)

            run_demo(
                seeds=1 if args.smoke else args.seeds,
                epochs=2 if args.smoke else args.epochs,
                workers=args.workers,
                out_dir=args.out,
                seed=args.seed,
                plot=not args.no_plot,
                progress=not args.no_progress,
                smoke=args.smoke,
            )
            return 0
        return _sweep(args)
    except HeadkitError as err:
        print(f"headkit {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"headkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            f"headkit {args.command}: error: out of memory; lower --batch-size or "
            "--max-samples, or pass --store DIR",
            file=sys.stderr,
        )
        return 2
    except RuntimeError as err:
        if "out of memory" in str(err).lower():
            print(
                f"headkit {args.command}: error: out of memory on the device; lower "
                "--batch-size or pass --amp",
                file=sys.stderr,
            )
            return 2
        raise


def _one_line(err: BaseException) -> str:
    """The message of a HeadkitError, also when a DataLoader worker re-raised it."""
    text = str(err).strip()
    lines = text.splitlines()
    if len(lines) > 1:
        for line in reversed(lines):
            if "HeadkitError: " in line:
                return line.split("HeadkitError: ", 1)[1].strip()
        return lines[-1].strip()
    return text


def _layer_spec(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _device(name: str | None) -> Any:
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise HeadkitError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise HeadkitError(
                f"--device {name}: CUDA is not available here (torch {torch.__version__}); "
                "use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise HeadkitError(
                f"--device {name}: there are {torch.cuda.device_count()} CUDA devices"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise HeadkitError(f"--device {name}: MPS is not available here; use --device cpu")
    return dev


def _device_name(dev: Any) -> str:
    import torch

    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(dev)


def _fmt_hw(hw: tuple[int, int] | None) -> str:
    return "mixed" if hw is None else f"{hw[0]}x{hw[1]}"


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise HeadkitError(f"{name} must be positive, got {value}")


def _choose_size(
    size: int | None, data_hw: tuple[int, int] | None, model_hw: tuple[int, int] | None, fixed: bool
) -> tuple[tuple[int, int], str]:
    """The input size and why (before the trial forward)."""
    if size is not None:
        return (size, size), "--size"
    if data_hw is None:
        if model_hw is None:
            raise HeadkitError(
                "the images differ in size and the model has no configured input size: pass "
                "--size N to resize every image to NxN"
            )
        return model_hw, (
            f"the images differ in size; the model's configured {_fmt_hw(model_hw)} "
            "(--size N to choose)"
        )
    if fixed and model_hw is not None and model_hw != data_hw:
        return model_hw, (
            f"the model needs its fixed input size {_fmt_hw(model_hw)}; the images are "
            f"{_fmt_hw(data_hw)}"
        )
    why = "the images' own size"
    if model_hw is not None and model_hw != data_hw:
        why += (
            f"; the model's configured size is {_fmt_hw(model_hw)} (--size {model_hw[0]} resizes)"
        )
    return data_hw, why


def _trial(
    model: Any, layers: Any, pool: str, x: Any, dev: Any, dims: dict[str, int] | None = None
) -> BaseException | None:
    """Run the tap once on a couple of images; the error, if the model rejects them. ``dims``
    gets the feature width of each layer (for the ``--store`` size estimate)."""
    import torch

    from .._layers.tap import LayerTap

    tap = LayerTap(model, layers, pool=pool, detach=True)  # type: ignore[arg-type]
    try:
        with torch.no_grad():
            out = tap(x.to(dev))
        if dims is not None:
            dims.clear()
            for k, v in out.items():
                if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0]:
                    dims[str(k)] = int(v.numel() // v.shape[0])
    except HeadkitError:
        raise
    except Exception as err:
        return err
    finally:
        tap.close()
    return None


# ----------------------------------------------------------------------------- headkit sweep


@dataclass
class _Data:
    src: Any
    test_src: Any
    split_text: str
    drawn: str
    train_idx: Any
    test_idx: Any
    class_counts: dict[str, list[int]]


@dataclass
class _Setup:
    hw: tuple[int, int]
    why: str
    layers: list[Any]
    layers_text: str
    pool: Any
    pool_why: str
    channels: int
    train_ds: Any
    test_ds: Any
    dims: dict[str, int]


def _sweep(args: argparse.Namespace) -> int:
    t0 = time.time()
    say = print
    for name in ("--batch-size", "--max-samples", "--size"):
        _check_positive(name, getattr(args, name[2:].replace("-", "_")))
    if args.workers < 0:
        raise HeadkitError(f"--workers must be >= 0, got {args.workers}")
    existing = check_outputs(args)
    dev = _device(args.device)
    data = _load_data(args, say)
    model, mf, weights = _build(args, say)
    model.to(dev)
    setup = _prepare(args, model, mf, data, dev)
    _say_setup(args, data, mf, setup, dev, say)
    report = _run(args, model, data, setup, dev)
    report.info.update(_info(args, data, setup, weights, dev, time.time() - t0))
    return _write_outputs(args, report, existing, time.time() - t0, say)


def _load_data(args: argparse.Namespace, say: Any) -> _Data:
    """Open ``--data`` (and ``--test-data``), draw and split; nothing decoded yet."""
    import torch

    from .data import open_images
    from .draws import stratified_sample, stratified_split
    from .images import conversion_message, skipped_message

    src = open_images(args.data)
    if src.facts.skipped:
        say(f"warning: {skipped_message(src.facts)}")
    if conversion_message(src.facts.modes):
        say(f"images: {conversion_message(src.facts.modes)}")
    test_src = None
    split_text = ""
    if args.test_data:
        if os.path.exists(args.test_data) and os.path.samefile(args.test_data, args.data):
            raise HeadkitError(
                f"--test-data {show(args.test_data)!r} is --data itself: the probes would be "
                "scored on the images they were trained on; leave --test-data out to hold out a "
                "stratified 20%"
            )
        test_src = open_images(args.test_data)
        if test_src.facts.skipped:
            say(f"warning: {skipped_message(test_src.facts)}")
        if conversion_message(test_src.facts.modes):
            say(f"test images: {conversion_message(test_src.facts.modes)}")
        if test_src.facts.classes != src.facts.classes:
            raise HeadkitError(
                f"--test-data {show(args.test_data)!r} has classes "
                f"{test_src.facts.classes[:6]}, --data has {src.facts.classes[:6]}: they must "
                "be the same"
            )
        split_text = f"--test-data {show(args.test_data)}"
    elif src.test is not None:
        test_src = src.test
        split_text = "the .npz's own x_test/y_test"
    labels = torch.tensor(src.labels)
    train_idx = torch.arange(len(src.labels))
    drawn = ""
    if args.max_samples is not None and args.max_samples < len(src.labels):
        train_idx = stratified_sample(labels, args.max_samples, args.seed)
        drawn = (
            f"a seeded stratified draw of {len(train_idx)} of {len(src.labels)} (seed {args.seed})"
        )
    test_idx: torch.Tensor
    if test_src is None:
        tr, te = stratified_split(labels[train_idx], 0.2, args.seed)
        train_idx, test_idx = train_idx[tr], train_idx[te]
        split_text = f"stratified 80/20 of --data (seed {args.seed})"
    else:
        tl = torch.tensor(test_src.labels)
        test_idx = torch.arange(len(tl))
        if args.max_samples is not None and args.max_samples < len(tl):
            test_idx = stratified_sample(tl, args.max_samples, args.seed)
    n_classes = len(src.facts.classes)
    test_labels = torch.tensor((test_src or src).labels)[test_idx]
    class_counts = {
        "train": torch.bincount(labels[train_idx], minlength=n_classes).tolist(),
        "test": torch.bincount(test_labels, minlength=n_classes).tolist(),
    }
    return _Data(src, test_src, split_text, drawn, train_idx, test_idx, class_counts)


def _build(args: argparse.Namespace, say: Any) -> tuple[Any, Any, str]:
    """The model, its facts and where its weights came from (``--checkpoint`` loaded)."""
    from .._layers.checkpoint import load_checkpoint
    from .zoo import build_model

    model, mf = build_model(args.model)
    say(f"model: {args.model}" + (f", {mf.note}" if mf.note else ""))
    weights = "random weights"
    if args.checkpoint:
        rep = load_checkpoint(
            model, args.checkpoint, strict=not args.non_strict, prefix=args.checkpoint_prefix
        )
        say(f"checkpoint: {rep}")
        if rep.missing or rep.unexpected:
            say(
                f"warning: --non-strict left {len(rep.missing)} model tensors at their random "
                f"initialisation and ignored {len(rep.unexpected)} checkpoint tensors (listed above)"
            )
        weights = args.checkpoint
    elif mf.weights != "random":
        weights = f"weights from {mf.weights}"
        say(f"weights: {mf.weights}")
    else:
        say(
            "warning: no --checkpoint: the model has random weights, so the numbers describe an "
            "untrained network"
        )
    return model, mf, weights


def _prepare(args: argparse.Namespace, model: Any, mf: Any, data: _Data, dev: Any) -> _Setup:
    """Input size, channels, layers and pooling; a trial forward on two images."""
    import torch
    from torch.utils.data import Subset

    from .._layers.model import default_layers, fitting_pool
    from .zoo import first_channels

    src, test_src = data.src, data.test_src
    channels = mf.channels or first_channels(model)
    hw, why = _choose_size(args.size, src.facts.image_size, mf.input_size, mf.fixed_size)
    layers = [_layer_spec(t) for t in args.layers] if args.layers else default_layers(model)
    layers_text = "given" if args.layers else "default"
    pool, pool_why = (args.pool, "--pool") if args.pool is not None else fitting_pool(model)

    def datasets(size: tuple[int, int]) -> tuple[Any, Any]:
        # no resize where the images already have the size: one of another size then raises
        def make(s: Any) -> Any:
            resize = None if (args.size is None and size == s.facts.image_size) else size
            return s.dataset(size=resize, channels=channels, mean=mf.mean, std=mf.std)

        return Subset(make(src), data.train_idx.tolist()), Subset(
            make(test_src or src), data.test_idx.tolist()
        )

    dims: dict[str, int] = {}
    train_ds, test_ds = datasets(hw)
    probe = torch.stack([train_ds[i][0] for i in range(min(2, len(train_ds)))])
    err = _trial(model, layers, pool, probe, dev, dims)
    if err is not None:
        if args.size is None and mf.input_size is not None and mf.input_size != hw:
            old = hw
            hw = mf.input_size
            why = (
                f"the model rejected {_fmt_hw(old)} inputs ({first_line(err)}); its configured "
                f"{_fmt_hw(hw)} (--size N to choose)"
            )
            train_ds, test_ds = datasets(hw)
            probe = torch.stack([train_ds[i][0] for i in range(min(2, len(train_ds)))])
            err = _trial(model, layers, pool, probe, dev, dims)
        if err is not None:
            raise HeadkitError(
                f"{args.model} fails on {_fmt_hw(hw)} inputs: {first_line(err)}"
                + ("" if args.size else "; pass --size N to resize the images")
            )
    return _Setup(hw, why, layers, layers_text, pool, pool_why, channels, train_ds, test_ds, dims)


def _say_setup(
    args: argparse.Namespace, data: _Data, mf: Any, setup: _Setup, dev: Any, say: Any
) -> None:
    src = data.src
    say(
        f"data: {src.facts.n} images, {len(src.facts.classes)} classes, "
        f"{_fmt_hw(src.facts.image_size)} px, {src.facts.channels} channel(s), from "
        f"{show(src.facts.source)} ({src.facts.note})" + (f"; {data.drawn}" if data.drawn else "")
    )
    say(f"split: {data.split_text}: train {len(setup.train_ds)}, test {len(setup.test_ds)}")
    grey = src.facts.channels == 1 and setup.channels == 3
    say(
        f"input: {_fmt_hw(setup.hw)} ({setup.why})"
        + ("; grey images repeated to 3 channels" if grey else "")
        + f"; normalised with mean {tuple(round(v, 3) for v in mf.mean)}, std "
        f"{tuple(round(v, 3) for v in mf.std)}"
    )
    say(
        f"device: {_device_name(dev)}, batch {args.batch_size}, workers {args.workers}"
        + (", bf16 autocast" if args.amp else "")
    )
    say(
        f"layers ({setup.layers_text}): {', '.join(str(x) for x in setup.layers)}; pool: "
        f"{setup.pool} ({setup.pool_why})"
    )
    if args.store:
        n = len(setup.train_ds) + len(setup.test_ds)
        say(f"store: {show(args.store)}: {check_store_space(args.store, n, setup.dims)}")


def _run(args: argparse.Namespace, model: Any, data: _Data, setup: _Setup, dev: Any) -> Any:
    """The layer sweep itself."""
    from torch.utils.data import DataLoader

    from ..probe import layer_sweep

    pin = dev.type == "cuda"
    loader = DataLoader(
        setup.train_ds, batch_size=args.batch_size, num_workers=args.workers, pin_memory=pin
    )
    test_loader = DataLoader(
        setup.test_ds, batch_size=args.batch_size, num_workers=args.workers, pin_memory=pin
    )
    kwargs: dict[str, Any] = {}
    if args.amp:
        kwargs["amp"] = True
    if args.store:
        kwargs["store"] = args.store
    return layer_sweep(
        model,
        loader,
        test_loader,
        layers=setup.layers,
        metrics=tuple(args.metrics),
        pool=setup.pool,
        device=dev,
        seed=args.seed,
        progress=not args.no_progress,
        **kwargs,
    )


def _info(
    args: argparse.Namespace, data: _Data, setup: _Setup, weights: str, dev: Any, secs: float
) -> dict[str, Any]:
    src, test_src = data.src, data.test_src
    src_hw = src.facts.image_size
    return {
        "model": args.model,
        "weights": weights,
        "checkpoint": args.checkpoint,
        "strict": not args.non_strict,
        "data": src.facts.as_dict(),
        "test_data": test_src.facts.as_dict() if test_src is not None else None,
        "split": data.split_text,
        "max_samples": args.max_samples,
        "n_train": len(setup.train_ds),
        "n_test": len(setup.test_ds),
        "classes": len(src.facts.classes),
        "class_names": src.facts.classes,
        "class_counts": data.class_counts,
        "input_size": list(setup.hw),
        "input_size_reason": setup.why,
        "pool_reason": setup.pool_why,
        "layers_given": bool(args.layers),
        "image_size": list(src_hw) if src_hw else None,
        "device": str(dev),
        "amp": bool(args.amp),
        "batch_size": args.batch_size,
        "seed": args.seed,
        "time_s": round(secs, 1),
    }


def _write_outputs(
    args: argparse.Namespace, report: Any, existing: dict[str, bool], secs: float, say: Any
) -> int:
    """Print the results and write ``--out`` / ``--plot`` atomically. Whatever fails here, the
    results are kept: the JSON goes to a fallback file the error names."""
    problems: list[str] = []
    text: str | None = None
    try:
        text = report.to_json()
    except Exception as err:
        problems.append(f"the JSON report could not be made ({why_not(err)})")
    try:
        say("")
        say(report.table())
        _verdicts(report, say)
        say(f"done in {secs:.0f} s")
    except Exception as err:
        problems.append(f"the results could not be printed ({why_not(err)})")
    saved = None
    if args.out and text is not None:
        try:
            write_text(args.out, text)
            saved = args.out
            if existing.get("--out"):
                print(
                    f"headkit sweep: note: replaced the existing file {show(args.out)!r}",
                    file=sys.stderr,
                )
            say(f"report written to {show(args.out)}")
        except Exception as err:
            problems.append(f"--out {show(args.out)!r} could not be written ({why_not(err)})")
    if args.plot:
        try:
            fig = report.figure()
            write_atomic(args.plot, lambda tmp: fig.savefig(tmp, dpi=120))
            if existing.get("--plot"):
                print(
                    f"headkit sweep: note: replaced the existing file {show(args.plot)!r}",
                    file=sys.stderr,
                )
            say(f"plot written to {show(args.plot)}")
        except Exception as err:
            problems.append(f"--plot {show(args.plot)!r} could not be written ({why_not(err)})")
    if not problems:
        return 0
    if saved is None and text is not None:
        fallback = fallback_path("headkit-report")
        try:
            write_text(fallback, text)
            saved = fallback
        except Exception as err:
            problems.append(f"the fallback {show(fallback)!r} failed too ({why_not(err)})")
    kept = (
        f"the report was saved to {show(saved)}" if saved else "the results are printed above only"
    )
    raise HeadkitError(f"{'; '.join(problems)}; {kept}")


def _verdicts(report: Any, say: Any) -> None:
    """One line per metric: the best layer, its direction, and the layers tied with it."""
    from ..probe import METRICS

    for m in report.metrics:
        vals = [v for v in report.metrics[m] if v is not None and not math.isnan(v)]
        if not vals:
            continue
        info = METRICS.get(m)
        name = f"{info.display} ({info.direction} is better)" if info is not None else m
        if info is not None and info.direction == "target":
            name = f"{info.display} (closest to {info.target:g} is better)"
        best = report.best_layer(m)
        line = f"best layer by {name}: {best}"
        if m in report.ties:
            tied = [t for t in report.tied_with_best(m) if t != best]
            if tied:
                line += (
                    f"; tied with it: {', '.join(str(t) for t in tied)} (INCONCLUSIVE between "
                    "these: the paired bootstrap over the test images cannot separate them at 5%)"
                )
            else:
                line += " (every other layer is worse: paired bootstrap over the test images, 5%)"
        say(line)
