"""Pooling of tapped outputs: which element, which layout, which tokens."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._errors import HeadkitError, fmt_shape
from .model import fitting_pool

__all__ = [
    "POOLS",
    "Pool",
    "PoolContext",
    "apply_pool",
    "check_batch_first",
    "check_pool",
    "needs_prefix",
    "pick_tensor",
]

PoolName = Literal["auto", "avg", "flatten", "cls", "mean", "cls+mean"]
Pool = PoolName | Callable[[Tensor], Tensor] | None
POOLS = ("avg", "flatten", "cls", "mean", "cls+mean")


def check_pool(pool: object, model: nn.Module | None = None) -> Pool:
    """Validate a pool argument; ``"auto"`` becomes the pool that fits ``model``
    (`fitting_pool`: ``"mean"`` over the patch tokens where it has prefix tokens, else
    ``"avg"``)."""
    if pool is None or callable(pool):
        return pool
    if pool == "auto":
        if model is None:
            raise HeadkitError('pool="auto" needs the model it is for')
        return fitting_pool(model)[0]
    if isinstance(pool, str) and pool in POOLS:
        return pool  # type: ignore[return-value]
    raise HeadkitError(
        f"pool must be None, 'auto', one of {', '.join(repr(p) for p in POOLS)} or a callable, "
        f"got {pool!r}"
    )


def check_batch_first(batch_first: object) -> bool | None:
    """Validate a ``batch_first=`` argument (None: as the model declares it)."""
    if batch_first is None or isinstance(batch_first, bool):
        return batch_first
    raise HeadkitError(f"batch_first must be True, False or None, got {batch_first!r}")


def needs_prefix(pool: Pool) -> bool:
    """Whether the pool reads the class token."""
    return pool in ("cls", "cls+mean")


@dataclass
class PoolContext:
    """What the pooling of one output needs to know about the call and the layer.

    Attributes:
        npt: prefix tokens (class / distillation / register) at the start of the layer's token
            outputs; None when they cannot be known (``"mean"`` then refuses to guess).
        mask: the ``(B, T)`` ``attention_mask`` passed with the call, if any.
        batch: the batch size of the call (to tell ``(T, B, C)`` outputs from ``(B, T, C)``).
        text: the call passed ``input_ids`` (position 0 is the tokenizer's ``[CLS]`` / BOS).
        pad_id: the model's ``pad_token_id`` (to refuse averaging padding without a mask).
        input_ids: the ``input_ids`` of the call (only read when no mask was passed).
        hint: ``(first, last)`` channel sizes of the layer's weight layers (`channel_hint`).
        npt_given: ``npt`` was passed by the user (``num_prefix_tokens=``), not read.
        batch_first: the layout of a 3-D output: True ``(B, T, C)``, False ``(T, B, C)``
            (given with ``batch_first=`` or declared by the model, `declared_layout`), None
            unknown: read from the batch size where that cannot be confused with the number of
            tokens, refused where it can.
    """

    npt: int | None = 0
    mask: Tensor | None = None
    batch: int | None = None
    text: bool = False
    pad_id: int | None = None
    input_ids: Tensor | None = None
    hint: tuple[frozenset[int], frozenset[int]] | None = None
    npt_given: bool = False
    batch_first: bool | None = True


def pick_tensor(out: Any) -> tuple[Any, str | None]:
    """The tensor a pool reads from a module's output, and a note when it is not the output
    itself: the first element of a tuple (Hugging Face blocks), the first tensor of a mapping
    (``ModelOutput``'s ``last_hidden_state``)."""
    if isinstance(out, Tensor):
        return out, None
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0], f"element 0 of a {type(out).__name__} of {len(out)}"
    if isinstance(out, Mapping):
        for k, v in out.items():
            if isinstance(v, Tensor):
                return v, f"{k!r} of a {type(out).__name__}"
    return out, None


def _is_prefix_pair(out: Any) -> bool:
    return (
        isinstance(out, tuple)
        and len(out) == 2
        and all(isinstance(t, Tensor) for t in out)
        and out[1].dim() == 3
    )


def _batch_first(t: Tensor, ctx: PoolContext, key: object) -> Tensor:
    """``(T, B, C)`` outputs (``batch_first=False`` transformers) turned to ``(B, T, C)``.

    The layout of a 3-D output is the one the model declares or the caller gives
    (``ctx.batch_first``), never guessed from sizes (the input of a token-first model has its
    tokens first too, and the batch size may equal the number of tokens): an unknown layout is
    refused, asking for ``batch_first=``. Sizes stay symbolic (no ``int()``), so a dynamic batch
    exports.
    """
    if t.dim() == 3:
        if ctx.batch_first is None:
            raise HeadkitError(
                f"layer {key!r} gives {fmt_shape(t.shape)} and the model does not say whether its "
                "batch comes first (modules of the model declare batch_first=False, none inside "
                "this layer); pass batch_first=True for (B, T, C) outputs or batch_first=False "
                "for (T, B, C)"
            )
        return t if ctx.batch_first else t.transpose(0, 1)
    b = ctx.batch
    if b is None or t.dim() < 2:
        return t
    if t.shape[0] == b:
        return t
    if t.shape[1] == b:
        return t.transpose(0, 1)
    raise HeadkitError(
        f"layer {key!r} gives {fmt_shape(t.shape)}, and neither of its first two dimensions is the "
        f"batch size {b} of the input; pool it yourself (pool=callable or pool=None)"
    )


def _layout(t: Tensor, ctx: PoolContext) -> str:
    """``"tokens"`` (B, T, C), ``"ncl"`` (B, C, L), ``"nchw"`` or ``"nhwc"`` (or ``"vec"``)."""
    if t.dim() <= 2:
        return "vec"
    first, last = ctx.hint or (frozenset(), frozenset())
    if t.dim() == 3:
        if t.shape[1] in first and t.shape[2] not in last:
            return "ncl"
        return "tokens"
    if t.shape[-1] in last and t.shape[1] not in first | last:
        return "nhwc"
    return "nchw"


def _spatial_mean(t: Tensor, layout: str) -> Tensor:
    if layout == "nhwc":
        return t.mean(dim=tuple(range(1, t.dim() - 1)))
    return t.mean(dim=tuple(range(2, t.dim())))


def _tracing() -> bool:
    """Inside ``torch.compile``, ``torch.export`` or ``torch.jit.trace`` (no value may be read)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return (
        torch.compiler.is_compiling()
        or bool(is_exporting is not None and is_exporting())
        or torch._C._get_tracing_state() is not None
    )


def _token_mask(t: Tensor, ctx: PoolContext, key: object, pool: str) -> Tensor | None:
    """The ``(B, T)`` float mask of real tokens of a token output, or None (all real)."""
    if ctx.mask is None:
        # the padding check reads the values: not in a traced or exported graph (a fixed graph)
        if ctx.text and ctx.pad_id is not None and ctx.input_ids is not None and not _tracing():
            ids = ctx.input_ids
            if ids.dim() == 2 and ids.shape[1] == t.shape[1] and bool((ids == ctx.pad_id).any()):
                raise HeadkitError(
                    f"pool={pool!r}: the input_ids hold padding (pad_token_id={ctx.pad_id}) but no "
                    "attention_mask was passed; pass the tokenizer's attention_mask with the "
                    "inputs (tap(**inputs)) so the padding is left out of the mean"
                )
        return None
    mask = ctx.mask
    if mask.dim() != 2:
        raise HeadkitError(
            f"pool={pool!r}: attention_mask must be (B, T), got {fmt_shape(mask.shape)}"
        )
    if tuple(mask.shape) != tuple(t.shape[:2]):
        raise HeadkitError(
            f"pool={pool!r}: attention_mask {fmt_shape(mask.shape)} does not fit the tokens of "
            f"layer {key!r} {fmt_shape(t.shape)}; pool that layer yourself (pool=callable)"
        )
    return mask.to(device=t.device, dtype=t.dtype)


def _masked_mean(t: Tensor, m: Tensor | None) -> Tensor:
    if m is None:
        return t.mean(1)
    w = m.unsqueeze(-1)
    return (t * w).sum(1) / w.sum(1).clamp_min(1.0)


def apply_pool(out: Any, pool: Pool, key: object, ctx: PoolContext | None = None) -> Any:
    """Pool one tapped output.

    ``out`` is a tensor (``(B, C, H, W)`` / ``(B, H, W, C)`` maps, ``(B, T, C)`` or ``(T, B, C)``
    tokens, ``(B, C, L)`` sequences, ``(B, C)`` vectors), a tuple or mapping whose first tensor
    is pooled (Hugging Face blocks), or, for timm ViTs asked for prefix tokens (an int ``key``),
    a ``(spatial NCHW, prefix (B, P, C))`` pair.
    """
    ctx = ctx or PoolContext()
    pair = isinstance(key, int) and _is_prefix_pair(out)
    if pool is None:
        return out[0] if pair else out
    if pair:
        return _pool_pair(out, pool)
    t, _ = pick_tensor(out)
    if callable(pool):
        return pool(t)
    if not isinstance(t, Tensor):
        raise HeadkitError(
            f"layer {key!r} returned a {type(out).__name__}, not a tensor; pool={pool!r} needs a "
            "tensor (pass pool=callable to pick from it)"
        )
    t = _batch_first(t, ctx, key)
    layout = _layout(t, ctx)
    if pool == "flatten":
        return t.flatten(1)
    if layout == "vec":
        if pool in ("avg", "mean"):
            return t
        raise HeadkitError(
            f"pool={pool!r} needs token outputs (B, T, C), but layer {key!r} gives "
            f"{fmt_shape(t.shape)}"
        )
    if layout != "tokens":
        if pool in ("avg", "mean"):
            return _spatial_mean(t, layout)
        raise HeadkitError(
            f"pool={pool!r} needs token outputs (B, T, C), but layer {key!r} gives "
            f"{fmt_shape(t.shape)} ({'channels first' if layout != 'nhwc' else 'channels last'}); "
            "use pool='avg' for feature maps"
        )
    if pool == "avg":
        return _masked_mean(t, _token_mask(t, ctx, key, pool))
    cls = _cls(t, ctx, key, pool) if pool in ("cls", "cls+mean") else None
    if pool == "cls":
        return cls
    mean = _patch_mean(t, ctx, key, pool)
    if pool == "mean":
        return mean
    assert cls is not None
    return torch.cat([cls, mean], dim=-1)


def _pool_pair(out: tuple[Tensor, Tensor], pool: Pool) -> Tensor:
    spatial, prefix = out
    if callable(pool):
        return pool(spatial)
    if pool == "flatten":
        return spatial.flatten(1)
    mean = spatial.mean(dim=tuple(range(2, spatial.dim())))
    if pool in ("avg", "mean"):
        return mean
    if prefix.shape[1] == 0:
        raise HeadkitError(f"pool={pool!r}: the model has no class token")
    if pool == "cls":
        return prefix[:, 0]
    return torch.cat([prefix[:, 0], mean], dim=-1)


def _unknown_prefix(t: Tensor, key: object, pool: str) -> HeadkitError:
    return HeadkitError(
        f"pool={pool!r}: cannot tell how many prefix (class / register) tokens the output of "
        f"layer {key!r} {fmt_shape(t.shape)} starts with; pass num_prefix_tokens= (0 if none)"
    )


def _is_square(n: int) -> bool:
    r = math.isqrt(n)
    return r * r == n


def _check_prefix_present(t: Tensor, ctx: PoolContext, key: object, pool: str) -> None:
    """A token output that is a square grid without the model's prefix tokens (they are added
    after this layer, as in CaiT): refuse to skip patch tokens. An explicit
    ``num_prefix_tokens=`` is trusted."""
    n, npt = int(t.shape[1]), ctx.npt
    if ctx.npt_given or not npt or ctx.text:
        return
    if _is_square(n) and not _is_square(n - npt):
        raise HeadkitError(
            f"pool={pool!r}: layer {key!r} has {n} tokens, a square grid of patches without the "
            f"{npt} prefix token(s) the model adds elsewhere (e.g. later, as CaiT does): pass "
            f"num_prefix_tokens=0 if this layer has none, or num_prefix_tokens={npt} if its "
            "tokens do start with them (a grid of patches that is not square)"
        )


def _cls(t: Tensor, ctx: PoolContext, key: object, pool: str) -> Tensor:
    if ctx.npt is None and not ctx.text:
        raise _unknown_prefix(t, key, pool)
    if ctx.npt == 0 and not ctx.text:
        raise HeadkitError(
            f"pool={pool!r}: the tokens of layer {key!r} {fmt_shape(t.shape)} have no class token "
            "(the model has no prefix tokens); use pool='mean', or pass num_prefix_tokens= if "
            "the first token is one"
        )
    _check_prefix_present(t, ctx, key, pool)
    return t[:, 0]


def _patch_mean(t: Tensor, ctx: PoolContext, key: object, pool: str) -> Tensor:
    npt = ctx.npt
    if npt is None:
        raise _unknown_prefix(t, key, pool)
    _check_prefix_present(t, ctx, key, pool)
    mask = _token_mask(t, ctx, key, pool)
    if t.shape[1] <= npt:
        raise HeadkitError(
            f"pool={pool!r}: layer {key!r} has {t.shape[1]} tokens, all of them prefix tokens"
        )
    return _masked_mean(t[:, npt:], None if mask is None else mask[:, npt:])
