"""Pooling of tapped outputs and the model facts it needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from einops import reduce
from torch import Tensor, nn

from ._errors import HeadkitError, fmt_shape

__all__ = ["POOLS", "Pool", "apply_pool", "check_pool", "needs_prefix", "num_prefix_tokens"]

PoolName = Literal["avg", "flatten", "cls", "mean", "cls+mean"]
Pool = PoolName | Callable[[Tensor], Tensor] | None
POOLS = ("avg", "flatten", "cls", "mean", "cls+mean")


def check_pool(pool: object) -> Pool:
    """Validate a pool argument."""
    if pool is None or callable(pool):
        return pool
    if isinstance(pool, str) and pool in POOLS:
        return pool  # type: ignore[return-value]
    raise HeadkitError(
        f"pool must be None, one of {', '.join(repr(p) for p in POOLS)} or a callable, got {pool!r}"
    )


def needs_prefix(pool: Pool) -> bool:
    """Whether the pool reads the class token."""
    return pool in ("cls", "cls+mean")


def num_prefix_tokens(model: nn.Module) -> int | None:
    """Number of prefix tokens of a token model (see `headkit._model.num_prefix_tokens`)."""
    from ._model import num_prefix_tokens as count

    return count(model)


def _spatial_mean(t: Tensor) -> Tensor:
    """Mean over every position: ``(B, C, *spatial) -> (B, C)``."""
    if t.dim() <= 2:
        return t
    out: Tensor = reduce(t, "b c ... -> b c", "mean")
    return out


def apply_pool(out: Any, pool: Pool, npt: int | None, key: object) -> Any:
    """Pool one tapped output.

    ``out`` is a tensor (``(B, C, H, W)`` maps, ``(B, T, C)`` tokens, ``(B, C)`` vectors) or, for
    timm ViTs asked for prefix tokens (an int ``key``), a ``(spatial NCHW, prefix (B, P, C))``
    pair. A named module's output is never read as such a pair: it is returned raw.
    """
    pair = isinstance(key, int) and isinstance(out, tuple) and _is_prefix_pair(out)
    if pool is None:
        return out[0] if pair else out
    if callable(pool):
        return pool(out[0] if pair else out)
    if not pair and not isinstance(out, Tensor):
        raise HeadkitError(
            f"layer {key!r} returned a {type(out).__name__}, not a tensor; pool={pool!r} needs a "
            "tensor (pass pool=callable to pick from it)"
        )
    if pool == "avg":
        t = out[0] if pair else out
        if t.dim() == 3:
            return t.mean(1)
        return _spatial_mean(t)
    if pool == "flatten":
        t = out[0] if pair else out
        return t.flatten(1)
    cls = _cls(out, pair, key, pool) if pool in ("cls", "cls+mean") else None
    if pool == "cls":
        return cls
    mean = _patch_mean(out, pair, npt, key, pool)
    if pool == "mean":
        return mean
    assert cls is not None
    return torch.cat([cls, mean], dim=-1)


def _is_prefix_pair(out: tuple[Any, ...]) -> bool:
    return len(out) == 2 and all(isinstance(t, Tensor) for t in out) and out[1].dim() == 3


def _cls(out: Any, pair: bool, key: object, pool: str) -> Tensor:
    if pair:
        prefix: Tensor = out[1]
        if prefix.shape[1] == 0:
            raise HeadkitError(f"pool={pool!r}: layer {key!r} has no class token")
        return prefix[:, 0]
    t: Tensor = out
    if t.dim() != 3:
        raise HeadkitError(
            f"pool={pool!r} needs token outputs (B, T, C), but layer {key!r} gives "
            f"{fmt_shape(t.shape)}; use pool='avg' for feature maps"
        )
    return t[:, 0]


def _patch_mean(out: Any, pair: bool, npt: int | None, key: object, pool: str) -> Tensor:
    t: Tensor = out[0] if pair else out
    if pair or t.dim() == 4:
        return _spatial_mean(t)
    if t.dim() == 3:
        if npt is None:
            raise HeadkitError(
                f"pool={pool!r}: cannot tell how many prefix (class / register) tokens the "
                f"output of layer {key!r} {fmt_shape(t.shape)} starts with; pass "
                "num_prefix_tokens= (0 if there are none)"
            )
        if t.shape[1] <= npt:
            raise HeadkitError(
                f"pool={pool!r}: layer {key!r} has {t.shape[1]} tokens, all of them prefix tokens"
            )
        return t[:, npt:].mean(1)
    raise HeadkitError(
        f"pool={pool!r} needs token outputs (B, T, C) or maps (B, C, H, W), layer {key!r} gives "
        f"{fmt_shape(t.shape)}"
    )
