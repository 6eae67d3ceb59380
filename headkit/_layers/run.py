"""Running a user's model: its forward signature, DDP and FSDP wrappers, timm's index route."""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._errors import HeadkitError
from .hooks import detach
from .specs import Target

__all__ = [
    "has_fsdp",
    "index_names",
    "index_outputs",
    "positional_params",
    "run_indices",
    "signature_params",
    "through_ddp",
    "timm_options",
]


def _forward_params(model: nn.Module) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []


def signature_params(model: nn.Module) -> set[str]:
    """The names of the parameters of ``model.forward`` (empty when it has no signature)."""
    return {p.name for p in _forward_params(model)}


def positional_params(model: nn.Module) -> tuple[str, ...]:
    """The names of ``model.forward``'s parameters that can be passed by position, in order."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in _forward_params(model) if p.kind in kinds)


def timm_options(
    model: nn.Module, indices: list[int], *, with_output: bool, stop_early: bool, prefix: bool
) -> dict[str, Any]:
    """Keyword arguments of timm's ``forward_intermediates`` for ``indices``: ``stop_early``
    and ``return_prefix_tokens`` only where this model's signature has them."""
    fi: Any = model.forward_intermediates
    params = inspect.signature(fi).parameters
    opts: dict[str, Any] = {"indices": list(indices), "intermediates_only": not with_output}
    if "stop_early" in params:
        opts["stop_early"] = stop_early
    if prefix and "return_prefix_tokens" in params:
        opts["return_prefix_tokens"] = True
    return opts


def run_indices(
    model: nn.Module,
    indices: list[int],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    with_output: bool,
    stop_early: bool,
    prefix: bool,
    detach_outputs: bool,
) -> tuple[Any, dict[int, Any]]:
    """timm's index route: ``forward_intermediates`` (and ``forward_head`` on its final features
    when the model's output is wanted); returns ``(output or None, {index: value})``."""
    fi: Any = model.forward_intermediates
    opts = timm_options(
        model, indices, with_output=with_output, stop_early=stop_early, prefix=prefix
    )
    output: Any = None
    if with_output:
        head: Any = getattr(model, "forward_head", None)
        if not callable(head):
            raise HeadkitError(
                f"tap.run with int indices needs timm's forward_head on {type(model).__name__}"
            )
        final, outs = fi(*args, **kwargs, **opts)
        output = head(final)
    else:
        outs = fi(*args, **kwargs, **opts)
    values = index_outputs(model, indices, detach_outputs, outs)
    return output, dict(zip(indices, values, strict=True))


def has_fsdp(model: nn.Module) -> bool:
    """FSDP (1 or 2) anywhere: its forward bookkeeping must not be cut short."""
    if "torch.distributed.fsdp" not in sys.modules:
        return False
    fsdp = sys.modules["torch.distributed.fsdp"]
    kinds = tuple(
        k
        for k in (
            getattr(fsdp, "FullyShardedDataParallel", None),
            getattr(fsdp, "FSDPModule", None),
        )
        if isinstance(k, type)
    )
    return bool(kinds) and any(isinstance(m, kinds) for m in model.modules())


def through_ddp(
    ddp: nn.Module,
    body: Callable[[tuple[Any, ...], dict[str, Any]], tuple[Any, dict[Target | int, Any]]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[Any, dict[Target | int, Any]]:
    """Run ``body`` inside DDP's own forward bookkeeping, with the taps (and the output, if
    any) as what DDP sees as the forward's result: gradients of a loss on them are
    synchronised, and parameters the forward never reached are marked unused."""
    d: Any = ddp
    with torch.autograd.profiler.record_function("DistributedDataParallel.forward"):
        args, kwargs = d._pre_forward(*args, **kwargs)
        inside = getattr(d, "_inside_ddp_forward", None)
        plain = getattr(d, "_use_python_reducer", False) or getattr(
            d, "_delay_all_reduce_all_params", False
        )
        ctx = inside() if callable(inside) and not plain else contextlib.nullcontext()
        with ctx:
            output, raw = body(args, kwargs)
        keys = list(raw)
        result = d._post_forward((output, [raw[k] for k in keys]))
    output, values = result
    return output, dict(zip(keys, values, strict=True))


def index_names(model: nn.Module, indices: list[int]) -> list[str]:
    fi: Any = getattr(model, "feature_info", None)
    out = []
    for i in indices:
        try:
            out.append(str(fi[i]["module"]))
        except Exception:
            out.append(f"<index {i}>")
    return out


def index_outputs(
    model: nn.Module, indices: list[int], detach_outputs: bool, outs: Any
) -> list[Any]:
    """The values of timm's ``forward_intermediates`` for ``indices``, checked (and detached)."""
    if not isinstance(outs, (list, tuple)) or len(outs) != len(indices):
        got = len(outs) if isinstance(outs, (list, tuple)) else type(outs).__name__
        raise HeadkitError(
            f"{type(model).__name__}.forward_intermediates returned {got} outputs for indices "
            f"{indices}"
        )
    return [detach(o) for o in outs] if detach_outputs else list(outs)
