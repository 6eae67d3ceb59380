"""Float tolerances from the dtype and the magnitude of what is compared, never from one CPU.

A value computed by a different (but correct) order of float operations differs by a few units
of roundoff per operation; a reduction over n terms by about sqrt(n) of them (random-walk
rounding), n at worst. So: ``atol = k * eps(dtype) * sqrt(n) * magnitude``, with ``magnitude``
the size of the values (or of the terms summed), ``n`` the length of the longest reduction
behind them, and a small safety factor ``k``.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def tol(
    dtype: torch.dtype = torch.float32, magnitude: float = 1.0, n: int = 1, k: float = 8.0
) -> dict[str, float]:
    """``{"rtol": ..., "atol": ...}`` for ``torch.testing.assert_close`` (or ``rel``/``abs``)."""
    eps = torch.finfo(dtype).eps
    r = k * eps * math.sqrt(max(1, n))
    return {"rtol": r, "atol": r * max(abs(float(magnitude)), torch.finfo(dtype).tiny)}


def approx(
    expected: Any,
    dtype: torch.dtype = torch.float32,
    magnitude: float | None = None,
    n: int = 1,
    k: float = 8.0,
) -> Any:
    """``pytest.approx(expected)`` with `tol` (magnitude: |expected| unless given)."""
    import pytest

    mag = abs(float(expected)) if magnitude is None else magnitude
    t = tol(dtype, mag, n, k)
    return pytest.approx(expected, rel=t["rtol"], abs=t["atol"])


def magnitude(t: torch.Tensor) -> float:
    """The size of the values of ``t`` (its largest absolute value, 1 if empty)."""
    return float(t.detach().abs().max()) if t.numel() else 1.0
