"""Build a model from a spec string for the command line; never downloads.

``timm:NAME``, ``torchvision:NAME``, ``hf:<local folder or config.json>`` and
``open_clip:NAME``. timm, torchvision and open_clip models are built with random weights (the
weights come from ``--checkpoint``); a Hugging Face folder with a weights file loads them, a
folder or ``config.json`` without one gives random weights.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._errors import HeadkitError

__all__ = ["ModelFacts", "build_model", "first_channels"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_SOURCES = ("timm", "torchvision", "hf", "open_clip")


@dataclass(frozen=True)
class ModelFacts:
    """What the CLI needs to know about a built model.

    Attributes:
        spec: the spec as given.
        source: ``"timm"``, ``"torchvision"``, ``"hf"`` or ``"open_clip"``.
        name: the architecture.
        weights: where the weights came from (``"random"`` or a path).
        input_size: ``(H, W)`` the model was configured for, or None when it has none.
        fixed_size: the model only takes ``input_size`` (a ViT without position-embedding
            interpolation).
        mean: normalisation mean per channel.
        std: normalisation std per channel.
        channels: input channels.
        note: anything else worth saying (e.g. which tower of a CLIP model).
    """

    spec: str
    source: str
    name: str
    weights: str
    input_size: tuple[int, int] | None
    fixed_size: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int
    note: str = ""


def _did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    pool = list(choices)
    lower = {c.lower(): c for c in pool}
    hits = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6)
    return ", ".join(lower[h] for h in hits)


def _hw(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    seq = list(size)
    return (int(seq[-2]), int(seq[-1])) if len(seq) >= 2 else (int(seq[0]), int(seq[0]))


def first_channels(model: nn.Module, default: int = 3) -> int:
    """Input channels of the first convolution (or ``default`` when there is none)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Conv3d)):
            return int(m.in_channels)
    return default


def build_model(spec: str) -> tuple[nn.Module, ModelFacts]:
    """Build ``spec`` without downloading anything.

    Args:
        spec: ``timm:NAME``, ``torchvision:NAME``, ``hf:<local folder or config.json>`` or
            ``open_clip:NAME``.

    Returns:
        ``(model, facts)``; the model is in eval mode on the CPU.

    Raises:
        HeadkitError: a malformed spec, an unknown name (with the closest names), a missing
            extra, a Hugging Face model that is not a vision model, anything that would download.
    """
    source, sep, name = spec.partition(":")
    if not sep or not name or source not in _SOURCES:
        near = _did_you_mean(source, _SOURCES) if sep else ""
        raise HeadkitError(
            f"--model must be timm:NAME, torchvision:NAME, hf:FOLDER or open_clip:NAME, got "
            f"{spec!r}" + (f" (did you mean {near}:{name}?)" if near else "")
        )
    builder = {"timm": _timm, "torchvision": _torchvision, "hf": _hf, "open_clip": _open_clip}
    model, facts = builder[source](spec, name)
    model.eval()
    return model, facts


def _need(module: str, extra: str, spec: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise HeadkitError(
            f'--model {spec} needs {module}: pip install "headkit[{extra}]"'
        ) from err


def _timm(spec: str, name: str) -> tuple[nn.Module, ModelFacts]:
    timm = _need("timm", "timm", spec)
    if not timm.is_model(name):
        near = _did_you_mean(name.split(".")[0], timm.list_models())
        raise HeadkitError(
            f"timm has no model {name!r}"
            + (f"; did you mean {near}?" if near else "; list them with timm.list_models()")
        )
    try:
        model: nn.Module = timm.create_model(name, pretrained=False)
    except Exception as err:
        raise HeadkitError(f"timm could not build {name!r}: {err}") from err
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    size = _hw(cfg.get("input_size"))
    fixed = bool(cfg.get("fixed_input_size", False))
    return model, ModelFacts(
        spec=spec,
        source="timm",
        name=name,
        weights="random",
        input_size=size,
        fixed_size=fixed,
        mean=tuple(cfg.get("mean", _IMAGENET_MEAN)),
        std=tuple(cfg.get("std", _IMAGENET_STD)),
        channels=int((cfg.get("input_size") or (3,))[0]),
    )


def _torchvision(spec: str, name: str) -> tuple[nn.Module, ModelFacts]:
    tv = _need("torchvision", "timm", spec)
    names = tv.models.list_models()
    if name not in names:
        near = _did_you_mean(name, names)
        raise HeadkitError(
            f"torchvision has no model {name!r}"
            + (
                f"; did you mean {near}?"
                if near
                else "; list them with torchvision.models.list_models()"
            )
        )
    try:
        model: nn.Module = tv.models.get_model(name, weights=None)
    except Exception as err:
        raise HeadkitError(f"torchvision could not build {name!r}: {err}") from err
    size = getattr(model, "image_size", None)
    return model, ModelFacts(
        spec=spec,
        source="torchvision",
        name=name,
        weights="random",
        input_size=_hw(size) if isinstance(size, int) else None,
        fixed_size=isinstance(size, int),
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        channels=first_channels(model),
    )


def _hf(spec: str, where: str) -> tuple[nn.Module, ModelFacts]:
    path = os.path.expanduser(where)
    if os.path.isfile(path):
        folder, cfg_file = os.path.dirname(path) or ".", path
    elif os.path.isdir(path):
        folder, cfg_file = path, os.path.join(path, "config.json")
        if not os.path.isfile(cfg_file):
            raise HeadkitError(
                f"--model {spec}: {path!r} has no config.json (save a model with "
                "model.save_pretrained(folder), or pass the path of a config.json)"
            )
    else:
        hub = "/" in where and not where.startswith((".", "/", "~"))
        raise HeadkitError(
            f"--model {spec}: {where!r} is not a local folder or config.json"
            + (
                "; headkit never downloads: fetch the model first (e.g. huggingface-cli "
                f"download {where} --local-dir DIR) and pass hf:DIR"
                if hub
                else ""
            )
        )
    try:
        with open(cfg_file) as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as err:
        raise HeadkitError(f"--model {spec}: cannot read {cfg_file!r} as JSON ({err})") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise HeadkitError(
            f"--model {spec}: {cfg_file!r} is not a Hugging Face config (no 'model_type')"
        )
    transformers = _need("transformers", "hf", spec)
    try:
        config = transformers.AutoConfig.for_model(**raw)
    except Exception as err:
        raise HeadkitError(
            f"--model {spec}: transformers cannot read {cfg_file!r}: {err}"
        ) from None
    weights_file = next(
        (
            os.path.join(folder, f)
            for f in (
                "model.safetensors",
                "pytorch_model.bin",
                "model.safetensors.index.json",
                "pytorch_model.bin.index.json",
            )
            if os.path.isfile(os.path.join(folder, f))
        ),
        None,
    )
    note = ""
    vision_cfg = getattr(config, "vision_config", None)
    use_cfg = vision_cfg if vision_cfg is not None else config
    if vision_cfg is not None:
        note = f"the vision tower of {config.model_type}"
    if (
        getattr(use_cfg, "num_channels", None) is None
        and getattr(use_cfg, "image_size", None) is None
    ):
        raise HeadkitError(
            f"--model {spec}: {config.model_type!r} is not a vision model (its config has no "
            "image_size or num_channels); headkit sweep reads images"
        )
    try:
        if weights_file is not None:
            full = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
            weights = folder
        else:
            full = transformers.AutoModel.from_config(config)
            weights = "random"
    except Exception as err:
        raise HeadkitError(
            f"--model {spec}: transformers could not build {config.model_type!r}: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    model: nn.Module = full
    if vision_cfg is not None:
        tower = getattr(full, "vision_model", None)
        if not isinstance(tower, nn.Module):
            raise HeadkitError(
                f"--model {spec}: {type(full).__name__} has no vision_model to sweep"
            )
        model = tower
    mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    pre = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(pre):
        try:
            with open(pre) as fh:
                pcfg = json.load(fh)
            mean = tuple(pcfg.get("image_mean", mean))
            std = tuple(pcfg.get("image_std", std))
        except (OSError, ValueError):
            pass
    return model, ModelFacts(
        spec=spec,
        source="hf",
        name=str(config.model_type),
        weights=weights,
        input_size=_hw(getattr(use_cfg, "image_size", None)),
        fixed_size=False,  # a trial forward tells
        mean=mean,
        std=std,
        channels=int(getattr(use_cfg, "num_channels", 3) or 3),
        note=note,
    )


def _open_clip_names() -> list[str] | None:
    """open_clip's model names, read from its model_configs folder without importing it (that
    import takes seconds); None where the folder is not found."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "model_configs")
    if not os.path.isdir(folder):
        return None
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".json"))


def _open_clip(spec: str, name: str) -> tuple[nn.Module, ModelFacts]:
    arch, _, tag = name.partition("/")
    if tag:
        raise HeadkitError(
            f"--model {spec}: headkit never downloads pretrained tags ({tag!r}); pass "
            f"open_clip:{arch} and the weights file with --checkpoint"
        )
    names = _open_clip_names()
    if names is not None and arch not in names:
        near = _did_you_mean(arch, names)
        raise HeadkitError(
            f"open_clip has no model {arch!r}"
            + (f"; did you mean {near}?" if near else "; list them with open_clip.list_models()")
        )
    open_clip = _need("open_clip", "open_clip", spec)
    names = open_clip.list_models()
    if arch not in names:
        near = _did_you_mean(arch, names)
        raise HeadkitError(
            f"open_clip has no model {arch!r}"
            + (f"; did you mean {near}?" if near else "; list them with open_clip.list_models()")
        )
    import logging

    log = logging.getLogger()
    level = log.level
    log.setLevel(logging.ERROR)  # "No pretrained weights loaded" is what we asked for
    try:
        full = open_clip.create_model(arch, pretrained=None)
    except Exception as err:
        raise HeadkitError(f"open_clip could not build {arch!r}: {err}") from err
    finally:
        log.setLevel(level)
    visual: nn.Module = full.visual
    pcfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    return visual, ModelFacts(
        spec=spec,
        source="open_clip",
        name=arch,
        weights="random",
        input_size=_hw(getattr(visual, "image_size", None) or pcfg.get("size")),
        fixed_size=False,  # a trial forward tells
        mean=tuple(pcfg.get("mean", _IMAGENET_MEAN)),
        std=tuple(pcfg.get("std", _IMAGENET_STD)),
        channels=3,
        note="the image tower (model.visual)",
    )
