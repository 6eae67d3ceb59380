"""The reweighting head's weights and the fused reweight + L2-normalise op."""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from ._errors import HeadkitError

__all__ = [
    "check_kappa",
    "compute_dtype",
    "reweight_normalize",
    "reweight_normalize_log",
    "reweight_weights",
]


def check_kappa(kappa: float) -> float:
    """Validate a kappa given as a number; return it as a float."""
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)):
        raise HeadkitError(f"kappa must be a positive finite number, got {kappa!r}")
    value = float(kappa)
    if not math.isfinite(value) or value <= 0:
        raise HeadkitError(f"kappa must be a positive finite number, got {kappa!r}")
    return value


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, the dtype itself otherwise (float32/float64)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def reweight_weights(dim: int, log_kappa: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``kappa ** -i`` for ``i = 0..dim-1``, computed as ``exp(-i * log kappa)``.

    Args:
        dim: number of coordinates.
        log_kappa: scalar tensor holding ``log(kappa)``.
        dtype: dtype of the result (default: that of ``log_kappa``, at least float32).

    Returns:
        The ``(dim,)`` weight vector, differentiable in ``log_kappa``.
    """
    cdt = compute_dtype(log_kappa.dtype)
    idx = torch.arange(dim, device=log_kappa.device, dtype=cdt)
    w = torch.exp(-idx * log_kappa.to(cdt))
    return w if dtype is None else w.to(dtype)


def _as_log_kappa(kappa: float | Tensor, ref: Tensor) -> Tensor:
    if isinstance(kappa, Tensor):
        if kappa.numel() != 1:
            raise HeadkitError(
                f"kappa must be a scalar, got a tensor of shape {tuple(kappa.shape)}"
            )
        k = kappa.reshape(())
        if not torch.compiler.is_compiling() and not k.requires_grad:
            kv = float(k)
            if not math.isfinite(kv) or kv <= 0:
                raise HeadkitError(f"kappa must be a positive finite number, got {kv!r}")
        return torch.log(k.to(device=ref.device, dtype=compute_dtype(ref.dtype)))
    value = check_kappa(kappa)
    return torch.tensor(math.log(value), device=ref.device, dtype=compute_dtype(ref.dtype))


def reweight_normalize(h: Tensor, kappa: float | Tensor, *, eps: float = 1e-12) -> Tensor:
    """Reweight the last dimension by ``kappa ** -i`` and L2-normalise, in one pass.

    ``z = (h * w) / max(||h * w||, eps)`` with ``w_i = kappa ** -i`` (Xue et al., ICLR 2024,
    arXiv 2403.11391). Half-precision inputs are computed in float32 and returned in their own
    dtype. Differentiable in ``h`` and (when it is a tensor that requires grad) ``kappa``. On
    CUDA tensors a Triton kernel is used when Triton is installed; elsewhere a PyTorch
    composite that ``torch.compile`` fuses.

    Args:
        h: ``(..., D)`` representation.
        kappa: positive float or scalar tensor.
        eps: lower bound of the norm, as in `torch.nn.functional.normalize`.

    Returns:
        ``(..., D)`` tensor of unit L2 norm along the last dimension, dtype of ``h``.

    Raises:
        HeadkitError: kappa not positive and finite, or ``h`` has no dimension.

    Example:
        >>> import torch, headkit.ops as ops
        >>> z = ops.reweight_normalize(torch.randn(4, 16), 1.05)
        >>> torch.allclose(z.norm(dim=-1), torch.ones(4))
        True
    """
    if h.dim() == 0:
        raise HeadkitError("reweight_normalize needs an input of shape (..., D), got a scalar")
    return reweight_normalize_log(h, _as_log_kappa(kappa, h), eps)


def reweight_normalize_log(h: Tensor, log_k: Tensor, eps: float = 1e-12) -> Tensor:
    """`reweight_normalize` with ``log(kappa)`` given as a scalar tensor."""
    if h.is_cuda or os.environ.get("HEADKIT_FORCE_TRITON") == "1":
        from ._triton import triton_available

        if triton_available() and h.shape[-1] <= 16384 and h.dtype != torch.float64:
            from ._triton import reweight_normalize_triton

            return reweight_normalize_triton(h, log_k, eps)
    return _reweight_normalize_torch(h, log_k, eps)


def _reweight_normalize_torch(h: Tensor, log_k: Tensor, eps: float) -> Tensor:
    cdt = compute_dtype(h.dtype)
    w = reweight_weights(h.shape[-1], log_k, cdt)
    y = h.to(cdt) * w
    z: Tensor = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True).clamp_min(eps)
    return z.to(h.dtype)
