"""`ReweightHead`: the fixed or trainable reweighting head of Xue et al. (arXiv 2403.11391)."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import HeadkitError, fmt_shape
from .._kernels.reweight import check_kappa, compute_dtype, reweight_normalize_log, reweight_weights
from ._mlp import check_dim

__all__ = ["ReweightHead"]


@functools.cache
def _limits(dtype: torch.dtype) -> tuple[float, float]:
    """``x`` range where ``exp(-x)`` is neither 0 nor inf in ``dtype`` (rounded from float64)."""
    fi = torch.finfo(dtype)
    # exp(-x) rounds to 0 below half the smallest subnormal (smallest_normal * eps)
    log_half_tiny = math.log(fi.smallest_normal) + math.log(fi.eps) - math.log(2.0)
    return -math.log(fi.max), -log_half_tiny


def _dead_count(dim: int, log_kappa: float, dtype: torch.dtype) -> int:
    """Weights ``exp(-i log kappa)`` that are 0 or inf in ``dtype``: host arithmetic only."""
    lo, hi = _limits(dtype)
    x = (dim - 1) * log_kappa
    if lo * 0.999 < x < hi * 0.999:  # far from either limit: nothing to count
        return 0
    with torch.no_grad():
        w = torch.arange(dim, dtype=torch.float64).mul_(-log_kappa).exp_().to(dtype)
        return int(((w == 0) | ~torch.isfinite(w)).sum())


class ReweightHead(nn.Module):
    """The reweighting head of Xue et al. (ICLR 2024, arXiv 2403.11391).

    Output coordinate ``i`` (0-based) is ``h_i * kappa ** -i`` over the last dimension, so
    earlier coordinates weigh more; ``kappa = 1`` is the identity. The weights are computed in
    log space, ``exp(-i * log kappa)``. A fixed head keeps the exact float64 ``log(kappa)`` as
    its source of truth, so it is exact in any dtype it is moved to or applied in
    (``head.double()`` is exact to float64 rounding); the ``log_kappa`` buffer mirrors it for
    the state dict. With ``trainable=True`` kappa is learned through ``log kappa`` (so it stays
    > 0). With ``normalize=True`` the output is L2-normalised by the fused
    `headkit.ops.reweight_normalize`.

    Where the tail of the weights underflows to zero in the working dtype (d = 2048 and
    kappa >= 1.1 in float32) or overflows (kappa < 1), the head warns with the number of dead
    coordinates instead of zeroing features silently; `dead_coordinates` reports the count.
    The check never synchronises with the device in a training step: a fixed head checks once
    per working dtype (host arithmetic on the exact value); a trainable head in training reads
    kappa without waiting (directly on the CPU, from an asynchronous copy on CUDA, not at all
    elsewhere) and counts only when kappa moved near or past the representable range; in eval
    it reads kappa when it changed. Its cache holds one entry per working dtype.

    Args:
        dim: D, size of the last input dimension.
        kappa: base of the weights, positive and finite.
        trainable: learn kappa (parameter ``log_kappa``); otherwise a buffer.
        normalize: L2-normalise the output.
        device: device of ``log_kappa``.
        dtype: dtype of ``log_kappa`` (default: the default dtype).

    Shapes:
        input ``(..., dim)`` -> output ``(..., dim)``.

    Example:
        >>> import torch
        >>> from headkit import ReweightHead
        >>> head = ReweightHead(4, kappa=2.0)
        >>> head(torch.ones(1, 4))
        tensor([[1.0000, 0.5000, 0.2500, 0.1250]])
        >>> head.weights
        tensor([1.0000, 0.5000, 0.2500, 0.1250])
        >>> ReweightHead(3, kappa=1.1).double().weights[2].item() == 1.1 ** -2
        True
    """

    log_kappa: Tensor

    def __init__(
        self,
        dim: int,
        kappa: float = 1.05,
        *,
        trainable: bool = False,
        normalize: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_dim("dim", dim)
        value = check_kappa(kappa)
        self.trainable = bool(trainable)
        self.normalize = bool(normalize)
        dt = dtype if dtype is not None else torch.get_default_dtype()
        if not dt.is_floating_point:
            raise HeadkitError(f"dtype must be a floating dtype, got {dt}")
        self._exact = math.log(value)  # float64: the source of truth of a fixed head
        log_k = torch.full((), self._exact, device=device, dtype=dt)
        if self.trainable:
            self.log_kappa = nn.Parameter(log_k)
        else:
            self.register_buffer("log_kappa", log_k)
        self._synced = self._stamp()
        # working dtype -> (log kappa last checked, dead count): one entry per dtype
        self._dead: dict[torch.dtype, tuple[float, int]] = {}
        self._snap: tuple[Tensor, Any] | None = None  # async CUDA copy of kappa (trainable)
        self._snap_pending = False
        self._check_dead(
            self._exact, compute_dtype(dt) if dt in (torch.float16, torch.bfloat16) else dt
        )

    # -- the exact value -------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int]:
        return id(self.log_kappa), self.log_kappa._version

    def _exact_log_kappa(self) -> float:
        """The exact ``log kappa``; re-read (once) after the tensor was replaced or edited."""
        stamp = self._stamp()
        if stamp != self._synced and self.log_kappa.device.type != "meta":
            t = self.log_kappa.detach()
            mirrored = torch.full((), self._exact, dtype=t.dtype, device=t.device)
            if not bool(torch.equal(t, mirrored)):  # a new value (load_state_dict, fill_, a step)
                self._exact = float(t.double())
            self._synced = stamp
        return self._exact

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ReweightHead:
        exact = self._exact_log_kappa()
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        t = self.log_kappa
        if t.dtype.is_floating_point:
            with torch.no_grad():
                t.fill_(exact)  # the exact value rounded once, in the new dtype
        self._synced = self._stamp()
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        self._snap, self._snap_pending = None, False

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        state["_snap"], state["_snap_pending"] = None, False  # pinned memory and CUDA events
        return state

    @property
    def kappa(self) -> Tensor:
        """kappa as a scalar tensor (``exp(log_kappa)``; differentiable when trainable)."""
        return self.log_kappa.exp()

    @property
    def weights(self) -> Tensor:
        """The ``(dim,)`` weight vector ``kappa ** -i`` in the dtype of ``log_kappa``."""
        if self.trainable:
            return reweight_weights(self.dim, self.log_kappa, self.log_kappa.dtype)
        return reweight_weights(
            self.dim, self._exact_log_kappa(), self.log_kappa.dtype, self.log_kappa.device
        )

    # -- dead coordinates ------------------------------------------------------------------

    def dead_coordinates(self, dtype: torch.dtype | None = None) -> int:
        """How many weights are 0 (underflow) or inf (overflow) in ``dtype``.

        Reads kappa (a host synchronisation for a trainable head on a device); meant for
        inspection, not for every step.

        Args:
            dtype: working dtype (default: that of ``log_kappa``).

        Returns:
            The count of coordinates the head cannot represent; 0 when all are usable.

        Example:
            >>> from headkit import ReweightHead
            >>> ReweightHead(2048, kappa=1.1).dead_coordinates()
            957
        """
        dt = dtype or self.log_kappa.dtype
        value = (
            float(self.log_kappa.detach().double()) if self.trainable else self._exact_log_kappa()
        )
        return _dead_count(self.dim, value, dt)

    def _check_dead(self, log_kappa: float, dtype: torch.dtype) -> None:
        """Warn when ``log_kappa`` moved by a meaningful amount and leaves dead coordinates.

        Host arithmetic only: an O(1) range test, and an O(dim) count only near or past the
        representable range when kappa moved since the last count.
        """
        lo, hi = _limits(dtype)
        x = (self.dim - 1) * log_kappa
        last = self._dead.get(dtype)
        if lo * 0.999 < x < hi * 0.999:  # every weight representable: nothing to count
            self._dead[dtype] = (log_kappa, 0)
            return
        if last is not None and last[1] and abs(log_kappa - last[0]) * max(self.dim - 1, 1) <= 1e-3:
            return  # the tail weights moved by less than 0.1% since the last count
        dead = _dead_count(self.dim, log_kappa, dtype)
        self._dead[dtype] = (log_kappa, dead)
        if dead and (last is None or last[1] != dead):
            kv = math.exp(log_kappa)
            what = "underflow to 0" if log_kappa > 0 else "overflow to inf"
            warnings.warn(
                f"ReweightHead(dim={self.dim}, kappa={kv:.6g}): {dead} of {self.dim} weights "
                f"{what} in {dtype}, so those coordinates are dead. Use a kappa closer to 1 "
                f"(kappa ** -(dim-1) must stay representable) or a smaller dim.",
                RuntimeWarning,
                stacklevel=4,
            )

    def _peek(self) -> float | None:
        """``log kappa`` of a trainable head if it can be read without waiting for the device."""
        t = self.log_kappa
        if t.device.type == "cpu":
            return float(t.detach())
        if t.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return None
        value = None
        if self._snap is not None and self._snap_pending and self._snap[1].query():
            value = float(self._snap[0])  # the copy of an earlier step, already on the host
            self._snap_pending = False
        if not self._snap_pending:
            if self._snap is None or self._snap[0].dtype != t.dtype:
                self._snap = (torch.empty((), dtype=t.dtype, pin_memory=True), torch.cuda.Event())  # type: ignore[no-untyped-call]
            self._snap[0].copy_(t.detach(), non_blocking=True)
            self._snap[1].record()
            self._snap_pending = True
        return value

    def _watch(self, dtype: torch.dtype) -> None:
        if not self.trainable:
            value: float | None = self._exact_log_kappa()
        elif self.training:
            value = self._peek()
        elif self.log_kappa.device.type != "meta":
            value = float(self.log_kappa.detach().double())  # eval: a read is acceptable
        else:
            value = None
        if value is not None:
            self._check_dead(value, dtype)

    # -- forward ---------------------------------------------------------------------------

    def forward(self, h: Tensor) -> Tensor:
        """Reweight ``(..., dim)`` and return ``(..., dim)`` (L2-normalised if ``normalize``)."""
        if h.dim() == 0 or h.shape[-1] != self.dim:
            raise HeadkitError(
                f"ReweightHead expected input of shape (..., {self.dim}), got {fmt_shape(h.shape)}"
            )
        compiling = torch.compiler.is_compiling()
        if not compiling:
            self._watch(h.dtype)
        log_k: Tensor | float
        if self.trainable:
            log_k = self.log_kappa
        else:
            log_k = self._exact if compiling else self._exact_log_kappa()
        if self.normalize:
            return reweight_normalize_log(h, log_k)
        cdt = compute_dtype(h.dtype)
        w = reweight_weights(self.dim, log_k, cdt, h.device)
        return (h.to(cdt) * w).to(h.dtype)

    def extra_repr(self) -> str:
        if self.trainable:
            kv = float(self.log_kappa.detach().double().exp())
        else:
            kv = math.exp(self._exact_log_kappa())
        return f"dim={self.dim}, kappa={kv:.6g}, trainable={self.trainable}, normalize={self.normalize}"
