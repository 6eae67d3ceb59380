"""`load_checkpoint`: a checkpoint of any common layout into a model, strictly (part of
`headkit._layers.model`, the one home of facts about a user's model)."""

from __future__ import annotations

import os
import re
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import HeadkitError, first_line
from .model import canonical_name, check_module, unwrap
from .truncate import Truncated

__all__ = ["LoadReport", "load_checkpoint"]


@dataclass(frozen=True)
class LoadReport:
    """What `load_checkpoint` did.

    Attributes:
        source: the file, or ``"<state_dict>"`` for a mapping.
        prefix: the key prefix under which the checkpoint holds the model (``""``,
            ``"module."``, ``"state_dict.backbone."``, ...), stripped before loading.
        loaded: number of tensors loaded.
        missing: model keys the checkpoint lacks (only with ``strict=False``).
        unexpected: checkpoint keys under ``prefix`` the model lacks (only with ``strict=False``).
        skipped: checkpoint keys deliberately left out: those outside ``prefix`` (a projection
            head, an optimizer) and those of the part a `truncate_at` cut removed.
        removed: the classifier taken out of the model because the checkpoint has none (a
            backbone saved with ``num_classes=0``), and how; ``""`` when nothing was removed.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from headkit import load_checkpoint
        >>> report = load_checkpoint(nn.Linear(2, 3), {"module.weight": torch.zeros(3, 2), "module.bias": torch.zeros(3)})
        >>> print(report)
        loaded 2 tensors from <state_dict> (prefix 'module.' stripped)
    """

    source: str
    prefix: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: str = ""

    def __str__(self) -> str:
        out = f"loaded {self.loaded} tensors from {self.source}"
        if self.prefix:
            out += f" (prefix {self.prefix!r} stripped)"
        if self.missing:
            out += f"; {len(self.missing)} missing: {_few(self.missing)}"
        if self.unexpected:
            out += f"; {len(self.unexpected)} unexpected: {_few(self.unexpected)}"
        if self.skipped:
            out += f"; {len(self.skipped)} skipped: {_few(self.skipped)}"
        if self.removed:
            out += f"; the checkpoint has no classifier: {self.removed}"
        return out


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


_CKPT_HINT = "save model.state_dict() with torch.save and pass that file"


def _read(path: str) -> Any:
    """Load a checkpoint file safely (weights only); one clear error per kind of bad file."""
    if not os.path.exists(path):
        raise HeadkitError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise HeadkitError(
            f"checkpoint {path!r} is a folder; pass the weights file in it (.pt, .pth, .ckpt, "
            ".bin, .safetensors)"
        )
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise HeadkitError(
                f"checkpoint {path!r} is a safetensors file: pip install safetensors"
            ) from err
        try:
            return load_file(path)
        except Exception as err:
            raise HeadkitError(
                f"cannot read checkpoint {path!r}: not a valid safetensors file ({first_line(err, 160)})"
            ) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        msg = str(err)
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
        if m:
            cls = m.group(1)
            what = "a whole pickled model" if _is_module_class(cls) else "a pickled Python object"
            raise HeadkitError(
                f"not a state_dict: checkpoint {path!r} holds {what} ({cls}); {_CKPT_HINT}"
            ) from None
        kind = "an empty file" if os.path.getsize(path) == 0 else _sniff(path)
        raise HeadkitError(
            f"cannot read checkpoint {path!r}: {kind}, not a PyTorch checkpoint; {_CKPT_HINT}"
        ) from None


def _sniff(path: str) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if zipfile.is_zipfile(path):
        return "a zip archive that torch.load cannot read"
    for magic, kind in (
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"PK", "a zip archive"),
        (b"\x93NUMPY", "a NumPy .npy file"),
        (b"{", "a text / JSON file"),
    ):
        if head.startswith(magic):
            return kind
    return "unreadable data"


def _is_module_class(qualname: str) -> bool:
    mod, _, name = qualname.rpartition(".")
    obj = getattr(sys.modules.get(mod), name, None)
    if isinstance(obj, type):
        return issubclass(obj, nn.Module)
    return mod.startswith(("torch.nn", "torchvision.models", "timm.", "transformers.", "open_clip"))


def _flatten(obj: Any, prefix: str = "", depth: int = 0) -> dict[str, Tensor]:
    """Every tensor of a (nested) checkpoint dict, keyed by its dotted path."""
    out: dict[str, Tensor] = {}
    if isinstance(obj, Tensor):
        out[prefix[:-1]] = obj
    elif isinstance(obj, Mapping) and depth < 6:
        for k, v in obj.items():
            if isinstance(k, str):
                out.update(_flatten(v, f"{prefix}{k}.", depth + 1))
    return out


def _prefixes(
    ckpt: Mapping[str, Tensor], own: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, int]]:
    """``{prefix: (checkpoint keys that are prefix + a model key, those of the same shape)}``."""
    hits: dict[str, tuple[int, int]] = {}

    def hit(p: str, shape_ok: bool) -> None:
        n, m = hits.get(p, (0, 0))
        hits[p] = (n + 1, m + int(shape_ok))

    for k, v in ckpt.items():
        ck = canonical_name(k)
        shape = tuple(v.shape)
        if ck in own:
            hit("", own[ck] == shape)
        i = ck.find(".")
        while i >= 0:
            rest = ck[i + 1 :]
            if rest in own:
                hit(ck[: i + 1], own[rest] == shape)
            i = ck.find(".", i + 1)
    return hits


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    *,
    strict: bool = True,
    prefix: str | None = None,
    drop_classifier: bool = True,
) -> LoadReport:
    """Load a state_dict, lightly, Lightning, DINO-style or DDP checkpoint into ``model``.

    The checkpoint is read with ``torch.load(weights_only=True)`` (or safetensors); nested
    dicts are searched (Lightning's ``state_dict``, ``model``, ``teacher``, ...), and the key
    prefix under which the checkpoint holds the model (``module.``, ``backbone.``,
    ``state_dict.model.backbone.``, ...) is found by matching keys and stripped. Keys outside
    that prefix (a projection head, an optimizer) are skipped and reported.

    Strict by default: any missing or unexpected key raises, listing both. A shape mismatch
    always raises. With ``strict=False`` the matching tensors are loaded and the report lists
    what was left out. For a `truncate_at` cut, the keys of the removed part are skipped on
    purpose and reported.

    A backbone saved without its classifier (timm's ``num_classes=0`` or ``reset_classifier(0)``,
    a torchvision ``fc`` / ``classifier`` / ``heads`` set to ``nn.Identity``, a Hugging Face
    model without its pooler or head) lacks exactly the classifier's keys: the classifier is
    then removed from ``model`` in place (timm: ``model.reset_classifier(0)``; otherwise the
    module becomes ``nn.Identity()``, a Hugging Face pooler ``None``), the rest is loaded
    strictly, and `LoadReport.removed` says what was removed.

    Args:
        model: the model to load into (compile / DDP / DataParallel / FSDP wrappers unwrapped).
        checkpoint: a path (``str`` / ``os.PathLike``) or a mapping of tensors.
        strict: raise on missing or unexpected keys (default), or load what matches.
        prefix: the key prefix to use, when the checkpoint holds several candidates (e.g. a
            DINO checkpoint's ``"teacher.backbone."`` and ``"student.backbone."``).
        drop_classifier: remove the classifier from ``model`` when the checkpoint lacks
            exactly its keys (default); False keeps it (then strict loading raises).

    Returns:
        `LoadReport` (``str(report)`` is a one-line summary).

    Raises:
        HeadkitError: one line naming the file and what to do, for a missing or unreadable
            file, a whole pickled model (``torch.save(model)``), no matching keys, several
            equally good prefixes, missing / unexpected keys (strict) or a shape mismatch.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from headkit import load_checkpoint
        >>> src = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> ckpt = {"state_dict": {f"backbone.{k}": v for k, v in src.state_dict().items()}}
        >>> dst = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> print(load_checkpoint(dst, ckpt))
        loaded 4 tensors from <state_dict> (prefix 'state_dict.backbone.' stripped)
        >>> torch.equal(dst[0].weight, src[0].weight)
        True
    """
    inner = unwrap(check_module(model, "load_checkpoint"))
    if isinstance(checkpoint, (str, os.PathLike)):
        source = os.fspath(checkpoint)
        raw = _read(source)
    elif isinstance(checkpoint, Mapping):
        source, raw = "<state_dict>", checkpoint
    else:
        raise HeadkitError(
            f"load_checkpoint needs a path or a state_dict (a mapping of tensors), got "
            f"{type(checkpoint).__name__}"
        )
    if isinstance(raw, nn.Module):
        raise HeadkitError(f"not a state_dict: {source} is a whole model; {_CKPT_HINT}")
    if not isinstance(raw, Mapping):
        raise HeadkitError(
            f"not a state_dict: {source} holds a {type(raw).__name__}, not a dict of tensors; "
            f"{_CKPT_HINT}"
        )
    flat = _flatten(raw)
    if not flat:
        what = type(raw).__name__
        raise HeadkitError(
            f"not a state_dict: {source} holds a {what} without tensors; {_CKPT_HINT}"
        )
    own_sd = inner.state_dict()
    own = {canonical_name(k): k for k in own_sd}
    hits = _prefixes(flat, {k: tuple(own_sd[v].shape) for k, v in own.items()})
    if prefix is not None:
        if prefix not in hits:
            best = sorted(hits, key=lambda p: hits[p], reverse=True)[:4]
            raise HeadkitError(
                f"{source}: no key under prefix {prefix!r} matches {type(inner).__name__}; "
                f"prefixes that match: {best}"
            )
        chosen = prefix
    else:
        if not hits:
            raise HeadkitError(
                f"the keys of {source} do not match {type(inner).__name__}: checkpoint keys look "
                f"like {list(flat)[:4]}, the model's like {list(own_sd)[:4]}"
            )
        top = max(hits.values())
        best = [p for p, n in hits.items() if n == top]
        if len(best) > 1:
            raise HeadkitError(
                f"{source} holds {type(inner).__name__} {len(best)} times, under "
                f"{sorted(best)}; pass prefix= to choose, e.g. prefix={sorted(best)[0]!r}"
            )
        chosen = best[0]
    sd: dict[str, Tensor] = {}
    skipped: list[str] = []
    for k, v in flat.items():
        ck = canonical_name(k)
        if ck.startswith(chosen):
            sd[ck[len(chosen) :]] = v
        else:
            skipped.append(k)

    dropped = set(inner.dropped_keys) if isinstance(inner, Truncated) else set()
    unexpected = sorted(k for k in sd if k not in own and k not in dropped)
    cut_skipped = sorted(k for k in sd if k not in own and k in dropped)
    missing = [
        own[k]
        for k in own
        if k not in sd
        and not (k.endswith("num_batches_tracked") and k.rsplit(".", 1)[0] + ".running_mean" in sd)
    ]
    bad_shape = [
        f"{k}: checkpoint {tuple(sd[k].shape)}, model {tuple(own_sd[own[k]].shape)}"
        for k in sd
        if k in own and tuple(sd[k].shape) != tuple(own_sd[own[k]].shape)
    ]
    where = f"{source}" + (f" (prefix {chosen!r})" if chosen else "")
    removed = ""
    if drop_classifier and missing and not unexpected and not bad_shape:
        removed = _drop_classifier(inner, missing)
        if removed:
            own_sd = inner.state_dict()
            own = {canonical_name(k): k for k in own_sd}
            missing = [own[k] for k in own if k not in sd]
    if bad_shape:
        raise HeadkitError(
            f"checkpoint {where} does not fit {type(inner).__name__}: {len(bad_shape)} shape "
            f"mismatches, e.g. {'; '.join(bad_shape[:3])}"
        )
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} model keys missing from it ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
        hint = _classifier_hint(inner, missing)
        raise HeadkitError(
            f"checkpoint {where} does not match {type(inner).__name__}: {'; '.join(parts)}; "
            f"{hint}pass strict=False to load the {len(sd) - len(unexpected) - len(cut_skipped)} "
            "matching tensors and get the list of what was left out"
        )
    load = {own[k]: v for k, v in sd.items() if k in own}
    result = inner.load_state_dict(load, strict=False)
    still = [k for k in result.missing_keys if k in load]
    if still:
        raise HeadkitError(f"{type(inner).__name__} did not take keys {_few(still)} from {where}")
    return LoadReport(
        source=source,
        prefix=chosen,
        loaded=len(load),
        missing=missing,
        unexpected=unexpected,
        skipped=skipped + cut_skipped,
        removed=removed,
    )


_HEAD_NAMES = ("fc", "classifier", "head", "heads", "last_linear", "pooler")


def _keys_under(model: nn.Module, name: str) -> set[str]:
    sub = model.get_submodule(name)
    return {canonical_name(f"{name}.{k}") for k in sub.state_dict()}


def _drop_classifier(model: nn.Module, missing: list[str]) -> str:
    """Remove the classifier when ``missing`` is exactly its keys; what was done, or ``""``."""
    lost = {canonical_name(k) for k in missing}
    get = getattr(model, "get_classifier", None)
    reset = getattr(model, "reset_classifier", None)
    if callable(get) and callable(reset):  # timm
        clf = get()
        name = next((n for n, m in model.named_modules() if n and m is clf), None)
        if isinstance(clf, nn.Module) and name is not None and _keys_under(model, name) == lost:
            reset(0)
            return f"{name} removed from the model (timm reset_classifier(0), num_classes=0)"
    children = dict(model.named_children())
    heads = [n for n in _HEAD_NAMES if n in children and _keys_under(model, n)]
    for k in range(1, len(heads) + 1):
        for combo in _combinations(heads, k):
            if set().union(*(_keys_under(model, n) for n in combo)) == lost:
                for n in combo:
                    # a Hugging Face model skips a pooler that is None; others get an identity
                    setattr(model, n, None if n == "pooler" else nn.Identity())
                done = ", ".join(
                    f"{n} -> {'None' if n == 'pooler' else 'nn.Identity()'}" for n in combo
                )
                return f"{', '.join(combo)} removed from the model ({done})"
    return ""


def _combinations(items: list[str], k: int) -> list[tuple[str, ...]]:
    import itertools

    return list(itertools.combinations(items, k))


def _classifier_hint(model: nn.Module, missing: list[str]) -> str:
    if not missing:
        return ""
    heads = {n.split(".")[0] for n in missing}
    if heads <= {"fc", "head", "heads", "classifier", "last_linear", "pooler"}:
        return (
            f"the missing keys are all in the classifier {sorted(heads)} (an SSL backbone "
            "checkpoint has none: build the model without it, e.g. num_classes=0, or "
        )
    return ""
