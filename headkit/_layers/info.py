"""`feature_info`: the shape and dtype of every tap, from a dry run (no data, no compute)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .model import Call, LayerSpec, TapInfo, check_module
from .pool import Pool
from .tap import LayerTap

__all__ = ["feature_info"]


def feature_info(
    model: nn.Module,
    layers: Sequence[LayerSpec] | LayerSpec,
    input_shape: Sequence[int],
    *,
    pool: Pool = None,
    dtype: torch.dtype = torch.float32,
    num_prefix_tokens: int | None = None,
    call: Call = None,
    batch_first: bool | None = None,
) -> dict[LayerSpec, TapInfo]:
    """Shape and dtype of every tap of ``model`` from a dry run on the meta device.

    Same as ``LayerTap(model, layers, pool=pool).describe(input_shape, dtype)``. `TapInfo`
    also says which element of a tuple output a pool reads (Hugging Face blocks) and how many
    prefix tokens a token pool skips.

    Args:
        model: the encoder.
        layers: layer specs, as for `LayerTap`.
        input_shape: shape of one input batch.
        pool: pooling, as for `LayerTap`.
        dtype: input dtype (``torch.long`` for token ids).
        num_prefix_tokens: as for `LayerTap`.
        call: as for `LayerTap`.
        batch_first: the layout of 3-D outputs, as for `LayerTap`.

    Returns:
        ``{spec: TapInfo}``.

    Example:
        >>> from torch import nn
        >>> from headkit import feature_info
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> feature_info(net, ["0", "2"], (5, 8))["2"].shape
        (5, 4)
    """
    tap = LayerTap(
        check_module(model, "feature_info"),
        layers,
        pool=pool,
        num_prefix_tokens=num_prefix_tokens,
        call=call,
        batch_first=batch_first,
    )
    try:
        return tap.describe(input_shape, dtype)
    finally:
        tap.close()
