"""Facts about a user's model: unwrapping, index semantics, layer names."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ._errors import HeadkitError, closest

__all__ = [
    "LayerSpec",
    "has_index_semantics",
    "is_compiled",
    "num_indices",
    "resolve",
    "unwrap",
]

LayerSpec = int | str
_GLOB = re.compile(r"[*?\[]")


def unwrap(model: nn.Module) -> nn.Module:
    """Strip ``torch.compile``, DDP and DataParallel wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        break
    return model


def is_compiled(model: nn.Module) -> bool:
    """True for ``torch.compile(model)`` wrappers and modules compiled in place."""
    if isinstance(getattr(model, "_orig_mod", None), nn.Module):
        return True
    return getattr(model, "_compiled_call_impl", None) is not None


def has_index_semantics(model: nn.Module) -> bool:
    """Whether int layer specs mean something: timm's ``forward_intermediates`` contract."""
    return callable(getattr(model, "forward_intermediates", None)) and _feature_info_len(model) > 0


def _feature_info_len(model: nn.Module) -> int:
    fi: Any = getattr(model, "feature_info", None)
    try:
        return len(fi) if fi is not None else 0
    except TypeError:
        return 0


def num_indices(model: nn.Module) -> int:
    """Number of valid int indices (``len(model.feature_info)``)."""
    return _feature_info_len(model)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^.]*")
        elif c == "?":
            out.append("[^.]")
        elif c == "[":
            j = pattern.find("]", i)
            if j < 0:
                out.append(re.escape(c))
            else:
                out.append(pattern[i : j + 1])
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _names_hint(model: nn.Module) -> str:
    return "list them all with [name for name, _ in model.named_modules()]"


def resolve(model: nn.Module, spec: object) -> list[tuple[LayerSpec, int | str]]:
    """Expand one layer spec into ``(output key, int index or module name)`` pairs.

    A str is a dotted module name (a ``module.`` prefix is accepted either way) or a glob
    (``*`` within one name segment, ``**`` across segments, ``?``, ``[...]``); a glob's key is
    each matched name. An int is a timm index (negative counts from the end).
    """
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise HeadkitError(
            f"a layer spec must be an int index or a str module name / glob, got {spec!r}"
        )
    if isinstance(spec, int):
        if not has_index_semantics(model):
            top = [n for n, _ in model.named_children()][:8]
            raise HeadkitError(
                f"int layer index {spec} needs a model with timm's forward_intermediates contract; "
                f"{type(model).__name__} has no index semantics. Use module names instead, e.g. "
                f"{top} ({_names_hint(model)})"
            )
        n = num_indices(model)
        if not -n <= spec < n:
            raise HeadkitError(
                f"layer index {spec} is out of range for {type(model).__name__}: valid indices are "
                f"{-n}..{n - 1} ({n} intermediates)"
            )
        return [(spec, spec % n)]
    names = [n for n, _ in model.named_modules() if n]
    name_set = set(names)
    if _GLOB.search(spec):
        rx = _glob_regex(spec[7:] if spec.startswith("module.") else spec)
        hits = [n for n in names if rx.match(n)]
        if not hits:
            raise HeadkitError(
                f"layer pattern {spec!r} matches no module of {type(model).__name__}; "
                f"closest names: {closest(spec.replace('*', ''), names)} ({_names_hint(model)})"
            )
        return [(h, h) for h in hits]
    name = spec
    if name not in name_set and name.startswith("module.") and name[7:] in name_set:
        name = name[7:]
    if name not in name_set:
        near = closest(name, names)
        raise HeadkitError(
            f"no layer named {spec!r} in {type(model).__name__}; closest: {near} ({_names_hint(model)})"
        )
    return [(spec, name)]
