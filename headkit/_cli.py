"""The ``headkit`` command line: ``headkit demo`` and ``headkit sweep``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._errors import HeadkitError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="headkit", description="Projection heads and layer-wise representations for SSL."
    )
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo", help="pretrain SimCLR three ways on real digits and sweep the layers"
    )
    d.add_argument(
        "--data-root",
        default=None,
        help="an .npz (arrays x, y) or an image folder (root/<class>/<image>)",
    )
    d.add_argument("--epochs", type=int, default=40, help="SimCLR epochs per run (default 40)")
    d.add_argument("--out", default=".", help="folder for the plot (default: current folder)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--size", type=int, default=16, help="image size for image folders (default 16)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--smoke", action="store_true", help="a few epochs, for CI")

    s = sub.add_parser("sweep", help="layer sweep of a checkpoint on your data, without code")
    s.add_argument(
        "--model", required=True, help="timm:NAME or torchvision:NAME, e.g. timm:resnet18"
    )
    s.add_argument(
        "--checkpoint",
        default=None,
        help="state_dict / lightly / Lightning checkpoint (.pt, .pth, .ckpt)",
    )
    s.add_argument(
        "--data", required=True, help="image folder (root/<class>/<image>) or .npz with x and y"
    )
    s.add_argument(
        "--layers", nargs="*", default=None, help="layer specs: ints (timm indices) or module names"
    )
    s.add_argument("--metrics", nargs="*", default=["linear", "knn", "rankme", "spectrum"])
    s.add_argument("--pool", default="avg", choices=["avg", "flatten", "cls", "mean", "cls+mean"])
    s.add_argument("--size", type=int, default=None, help="input size (default: the model's)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--max-samples", type=int, default=None)
    s.add_argument("--out", default=None, help="write the report as JSON here")
    s.add_argument("--plot", default=None, help="write a plot here (needs matplotlib)")
    s.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``headkit`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            run_demo(
                data_root=args.data_root,
                epochs=3 if args.smoke else args.epochs,
                out_dir=args.out,
                seed=args.seed,
                size=args.size,
                progress=not args.no_progress,
            )
            return 0
        return _sweep(args)
    except HeadkitError as err:
        print(f"headkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _layer_spec(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _build_model(spec: str) -> nn.Module:
    kind, _, name = spec.partition(":")
    if not name:
        raise HeadkitError(f"--model must look like timm:NAME or torchvision:NAME, got {spec!r}")
    if kind == "timm":
        try:
            import timm
        except ImportError as err:
            raise HeadkitError('--model timm:... needs timm: pip install "headkit[timm]"') from err
        try:
            model: nn.Module = timm.create_model(name, pretrained=False)
        except Exception as err:
            raise HeadkitError(f"timm has no model {name!r}: {err}") from err
        return model
    if kind == "torchvision":
        try:
            import torchvision
        except ImportError as err:
            raise HeadkitError(
                '--model torchvision:... needs torchvision: pip install "headkit[timm]"'
            ) from err
        try:
            return torchvision.models.get_model(name, weights=None)  # type: ignore[no-any-return]
        except Exception as err:
            raise HeadkitError(f"torchvision has no model {name!r}: {err}") from err
    raise HeadkitError(
        f"unknown model source {kind!r} in {spec!r}; use timm:NAME or torchvision:NAME"
    )


_PREFIXES = (
    "",
    "module.",
    "backbone.",
    "model.",
    "encoder.",
    "model.backbone.",
    "module.backbone.",
    "student.",
    "teacher.",
)


def load_checkpoint(model: nn.Module, path: str) -> str:
    """Load a state_dict, lightly or Lightning checkpoint into ``model``; return what was done.

    Finds the key prefix (``backbone.``, ``module.``, ...) under which the checkpoint holds the
    model, loads with ``weights_only=True``, and raises a `HeadkitError` when the keys do not
    match (a missing classifier is fine).
    """
    if not os.path.isfile(path):
        raise HeadkitError(f"checkpoint {path!r} does not exist")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise HeadkitError(
            f"cannot read checkpoint {path!r} (torch.load with weights_only=True): {err}"
        ) from err
    for key in ("state_dict", "model", "model_state_dict", "teacher", "student"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HeadkitError(f"{path!r} holds no state_dict (a dict of tensors)")
    own = model.state_dict()
    best_prefix, best_hits = "", -1
    for prefix in _PREFIXES:
        hits = sum(1 for k in obj if k.startswith(prefix) and k[len(prefix) :] in own)
        if hits > best_hits:
            best_prefix, best_hits = prefix, hits
    sd = {k[len(best_prefix) :]: v for k, v in obj.items() if k.startswith(best_prefix)}
    classifier = {"fc", "head", "classifier", "heads", "last_linear"}
    missing = [
        k
        for k in own
        if k not in sd
        and k.split(".")[0] not in classifier
        and not k.endswith("num_batches_tracked")
    ]
    if best_hits <= 0 or missing:
        shown = missing[:5] if missing else list(own)[:5]
        raise HeadkitError(
            f"the keys of {path!r} do not match the model: {len(missing) if missing else len(own)} model keys "
            f"have no match (e.g. {shown}); checkpoint keys look like {list(obj)[:5]}"
        )
    bad_shape = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if bad_shape:
        k = bad_shape[0]
        raise HeadkitError(
            f"checkpoint {path!r}: {k} has shape {tuple(sd[k].shape)}, the model expects {tuple(own[k].shape)}"
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return f"loaded {best_hits} tensors from {path}" + (
        f" (prefix {best_prefix!r} stripped)" if best_prefix else ""
    )


def _sweep(args: argparse.Namespace) -> int:
    from ._demo import load_images
    from ._probe import layer_sweep

    model = _build_model(args.model)
    if args.checkpoint:
        print(load_checkpoint(model, args.checkpoint))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = args.size or int(cfg.get("input_size", (3, 224, 224))[-1])
    x, y = load_images(args.data, size=size)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False
        )
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, -1, 1, 1)
    x = (x - mean) / std
    bs = args.batch_size
    batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, x.shape[0], bs)]
    layers = [_layer_spec(t) for t in args.layers] if args.layers else None
    report = layer_sweep(
        model,
        batches,
        layers=layers,
        metrics=tuple(args.metrics),
        pool=args.pool,
        max_samples=args.max_samples,
        progress=not args.no_progress,
    )
    report.info.update({"model": args.model, "checkpoint": args.checkpoint, "data": args.data})
    print(report.table())
    for m in report.metrics:
        print(f"best layer by {m}: {report.best_layer(m)}")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report.to_json())
        print(f"report written to {args.out}")
    if args.plot:
        print(f"plot written to {report.plot(args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
