"""The reweighting head's weights and the fused reweight + L2-normalise op.

``headkit::reweight_normalize`` is one `headkit._kernels.op.KernelOp`, like
``headkit::contrastive_lse``: an eager autograd function, the ``torch.library`` custom ops for
``torch.compile``, a differentiable composite for double backward, and the Triton kernels of
`headkit._kernels.triton` on CUDA tensors after a self-check.

``log kappa`` is given either as a tensor (a trainable head) or as a Python float (a fixed head:
the exact float64 value, so the weights are exact in any working dtype).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._errors import HeadkitError
from . import backend as _backend
from .backend import compute_dtype
from .op import KernelKey, KernelOp, run_kernel

__all__ = [
    "RWN_OP",
    "check_kappa",
    "compute_dtype",
    "reweight_normalize",
    "reweight_normalize_log",
    "reweight_weights",
]

RWN_OP = "reweight_normalize"
_TRITON_MAX_D = 16384


def check_kappa(kappa: object) -> float:
    """Validate a kappa given as a number (numpy scalars included); return it as a float."""
    if isinstance(kappa, bool) or not (
        isinstance(kappa, (int, float))
        or (getattr(kappa, "ndim", None) == 0 and hasattr(kappa, "__float__"))
    ):
        raise HeadkitError(f"kappa must be a positive finite number, got {kappa!r}")
    value = float(kappa)  # type: ignore[arg-type,unused-ignore]
    if not math.isfinite(value) or value <= 0:
        raise HeadkitError(f"kappa must be a positive finite number, got {kappa!r}")
    return value


def reweight_weights(
    dim: int,
    log_kappa: Tensor | float,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``kappa ** -i`` for ``i = 0..dim-1``, computed as ``exp(-i * log kappa)``.

    Args:
        dim: number of coordinates.
        log_kappa: ``log(kappa)``: a scalar tensor (differentiable) or a float (exact).
        dtype: dtype of the result (default: that of ``log_kappa``, at least float32; float64
            for a float).
        device: device of the result when ``log_kappa`` is a float.

    Returns:
        The ``(dim,)`` weight vector.
    """
    if isinstance(log_kappa, Tensor):
        cdt = compute_dtype(log_kappa.dtype) if dtype is None else compute_dtype(dtype)
        idx = torch.arange(dim, device=log_kappa.device, dtype=cdt)
        w = torch.exp(-idx * log_kappa.to(cdt))
    else:
        cdt = torch.float64 if dtype is None else compute_dtype(dtype)
        w = torch.arange(dim, device=device, dtype=cdt).mul_(-log_kappa).exp_()
    return w if dtype is None else w.to(dtype)


def _as_log_kappa(kappa: float | Tensor) -> Tensor | float:
    if isinstance(kappa, Tensor):
        if kappa.numel() != 1:
            raise HeadkitError(
                f"kappa must be a scalar, got a tensor of shape {tuple(kappa.shape)}"
            )
        k = kappa.reshape(())
        if k.device.type == "cpu" and not torch.compiler.is_compiling():
            kv = float(k.detach())
            if not math.isfinite(kv) or kv <= 0:
                raise HeadkitError(f"kappa must be a positive finite number, got {kv!r}")
        return torch.log(k)
    return math.log(check_kappa(kappa))


def reweight_normalize(h: Tensor, kappa: float | Tensor, *, eps: float = 1e-12) -> Tensor:
    """Reweight the last dimension by ``kappa ** -i`` and L2-normalise, in one pass.

    ``z = (h * w) / max(||h * w||, eps)`` with ``w_i = kappa ** -i`` (Xue et al., ICLR 2024,
    arXiv 2403.11391). Half-precision inputs are computed in float32 and returned in their own
    dtype. Differentiable in ``h`` and (when it is a tensor that requires grad) ``kappa``, twice
    included. On CUDA tensors a Triton kernel is used when Triton is installed (after a
    self-check against the PyTorch path); elsewhere a tiled-free PyTorch implementation.

    Args:
        h: ``(..., D)`` representation.
        kappa: positive number or scalar tensor.
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
    if not isinstance(h, Tensor) or h.dim() == 0:
        raise HeadkitError("reweight_normalize needs an input of shape (..., D), got a scalar")
    if not h.dtype.is_floating_point:
        raise HeadkitError(f"reweight_normalize needs a floating input, got dtype {h.dtype}")
    if not math.isfinite(eps) or eps < 0:
        raise HeadkitError(f"eps must be a finite number >= 0, got {eps!r}")
    return reweight_normalize_log(h, _as_log_kappa(kappa), eps)


def reweight_normalize_log(h: Tensor, log_k: Tensor | float, eps: float = 1e-12) -> Tensor:
    """`reweight_normalize` with ``log(kappa)`` given as a scalar tensor or an exact float."""
    lk = log_k if isinstance(log_k, Tensor) else None
    value = 0.0 if isinstance(log_k, Tensor) else float(log_k)
    return _RWN.apply(h, lk, value, float(eps))[0]


# ----------------------------------------------------------------------------- implementations


def _weights(
    d: int, lk: Tensor | None, value: float, dtype: torch.dtype, device: torch.device
) -> Tensor:
    return reweight_weights(d, lk if lk is not None else value, dtype, device)


def _fwd_torch(h2: Tensor, lk: Tensor | None, value: float, eps: float) -> tuple[Tensor, Tensor]:
    cdt = compute_dtype(h2.dtype)
    y = h2.to(cdt) * _weights(h2.shape[-1], lk, value, cdt, h2.device)
    r = torch.linalg.vector_norm(y, dim=-1).clamp_min(eps).reciprocal()
    return (y * r[:, None]).to(h2.dtype), r


def _bwd_torch(
    dz: Tensor, h2: Tensor, r: Tensor, lk: Tensor | None, value: float, eps: float
) -> tuple[Tensor, Tensor]:
    cdt = compute_dtype(h2.dtype)
    d = h2.shape[-1]
    w = _weights(d, lk, value, cdt, h2.device)
    y = h2.to(cdt) * w
    z = y * r[:, None]
    g = dz.to(cdt)
    # where the norm was clamped to eps, no gradient flows through the norm (as F.normalize)
    proj = (z * g).sum(-1)
    if eps > 0:
        proj = torch.where(r < 1.0 / eps, proj, 0.0)
    dy = (g - z * proj[:, None]) * r[:, None]
    idx = torch.arange(d, device=h2.device, dtype=cdt)
    return (dy * w).to(h2.dtype), (-(idx * y * dy)).sum(-1)


def _dense(h: Tensor, lk: Tensor | None, value: float, eps: float) -> Tensor:
    """Differentiable composite (double backward)."""
    cdt = compute_dtype(h.dtype)
    y = h.to(cdt) * _weights(h.shape[-1], lk, value, cdt, h.device)
    z: Tensor = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True).clamp_min(eps)
    return z.to(h.dtype)


def _key(h: Tensor) -> KernelKey:
    d = h.shape[-1]
    supported = h.dtype in (torch.float32, torch.bfloat16, torch.float16) and 0 < d <= _TRITON_MAX_D
    return KernelKey(RWN_OP, h.device, h.dtype, _backend.block_d(d), supported)


def _lk_tensor(h: Tensor, lk: Tensor | None, value: float) -> Tensor:
    return lk if lk is not None else torch.full((1,), value, device=h.device, dtype=torch.float32)


def _forward(h: Tensor, lk: Tensor | None, value: float, eps: float) -> tuple[Tensor, Tensor]:
    h2 = h.reshape(-1, h.shape[-1])

    def triton() -> tuple[Tensor, Tensor]:
        from . import triton as _triton

        return _triton.rwn_forward(h2, _lk_tensor(h2, lk, value), eps)

    z, r = run_kernel(_key(h2), triton, lambda: _fwd_torch(h2, lk, value, eps))
    return z.reshape(h.shape), r


def _backward(
    grads: tuple[Tensor, ...], inputs: tuple[Any, ...], saved: tuple[Tensor, ...], _: bool
) -> tuple[Tensor, Tensor]:
    h, lk, value, eps = inputs
    d = h.shape[-1]
    dz2, h2, r = grads[0].reshape(-1, d), h.reshape(-1, d), saved[0]

    def triton() -> tuple[Tensor, Tensor]:
        from . import triton as _triton

        return _triton.rwn_backward(dz2, h2, r, _lk_tensor(h2, lk, value), eps)

    dh, dlk = run_kernel(_key(h2), triton, lambda: _bwd_torch(dz2, h2, r, lk, value, eps))
    gk = dlk.sum().to(lk.dtype).reshape(lk.shape) if lk is not None else dlk.new_empty(0)
    return dh.reshape(h.shape), gk


def _fake(h: Tensor, lk: Tensor | None, value: float, eps: float) -> tuple[Tensor, Tensor]:
    rows = math.prod(h.shape[:-1])
    return torch.empty_like(h), h.new_empty(rows, dtype=compute_dtype(h.dtype))


def _dense_op(h: Tensor, lk: Tensor | None, value: float, eps: float) -> tuple[Tensor, Tensor]:
    return _dense(h, lk, value, eps), h.new_empty(0)


_RWN = KernelOp(
    RWN_OP,
    args="Tensor h, Tensor? lk, float value, float eps",
    num_outputs=2,
    forward=_forward,
    backward=_backward,
    fake=_fake,
    dense=_dense_op,
    grad_inputs=(0, 1),
    save_outputs=(1,),
    nondiff_outputs=(1,),
)


# ----------------------------------------------------------------------------- Triton self-check


def _check_rwn(
    device: torch.device, dtype: torch.dtype, bd: int, prec: str
) -> _backend.CheckResult:
    from . import triton as _triton

    g = torch.Generator().manual_seed(0)
    d = max(1, bd - 3)
    h = torch.randn(37, d, generator=g).to(dtype)
    dz = torch.randn(37, d, generator=g).to(dtype)
    lk = torch.tensor([math.log(1.07)])
    z, r = _triton.rwn_forward(h.to(device), lk.to(device), 1e-12)
    dh, dlk = _triton.rwn_backward(dz.to(device), h.to(device), r, lk.to(device), 1e-12)
    zr, rr = _fwd_torch(h.double(), lk.double(), 0.0, 1e-12)
    dhr, dlkr = _bwd_torch(dz.double(), h.double(), rr, lk.double(), 0.0, 1e-12)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    errs = {
        "z": _backend.rel_err(z.cpu(), zr),
        "dh": _backend.rel_err(dh.cpu(), dhr),
        "d log kappa": _backend.rel_err(dlk.sum().cpu(), dlkr.sum()),
    }
    return _backend.check_verdict(errs, tol, f"37 x {d}")


_backend.register_check(RWN_OP, _check_rwn)
