"""Triton kernels for CUDA tensors (also runnable on the CPU under ``TRITON_INTERPRET=1``).

Imported lazily: only when a CUDA tensor reaches a headkit op, or by the interpreter tests.
``HEADKIT_DISABLE_TRITON=1`` forces the PyTorch path.
"""
# mypy: disable-error-code="no-untyped-def,no-any-return,misc,name-defined,untyped-decorator"

from __future__ import annotations

import functools
import math
import os

import torch
from torch import Tensor

__all__ = [
    "lse_backward_triton",
    "lse_forward_triton",
    "reweight_normalize_triton",
    "triton_available",
]


@functools.cache
def triton_available() -> bool:
    """True when Triton imports and kernels may run (a CUDA device or the interpreter)."""
    if os.environ.get("HEADKIT_DISABLE_TRITON", "0") == "1":
        return False
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _lse_fwd_kernel(
        Q,
        K,
        QL,
        KL,
        SELF,
        LSE,
        POS,
        CNT,
        A,
        N,
        D,
        inv_t,
        stride_q,
        stride_k,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rd = tl.arange(0, BLOCK_D)
        mrow = rm < A
        q = tl.load(
            Q + rm[:, None] * stride_q + rd[None, :],
            mask=mrow[:, None] & (rd[None, :] < D),
            other=0.0,
        )
        ql = tl.load(QL + rm, mask=mrow, other=-1)
        sf = tl.load(SELF + rm, mask=mrow, other=-1)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        p_i = tl.zeros([BLOCK_M], tl.float32)
        c_i = tl.zeros([BLOCK_M], tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            mcol = rn < N
            k = tl.load(
                K + rn[:, None] * stride_k + rd[None, :],
                mask=mcol[:, None] & (rd[None, :] < D),
                other=0.0,
            )
            kl = tl.load(KL + rn, mask=mcol, other=-2)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * inv_t
            else:
                s = tl.dot(q, tl.trans(k)) * inv_t
            valid = mcol[None, :] & (rn[None, :] != sf[:, None])
            same = valid & (kl[None, :] == ql[:, None])
            s = tl.where(valid, s, float("-inf"))
            p_i += tl.sum(tl.where(same, s, 0.0), 1)
            c_i += tl.sum(same.to(tl.float32), 1)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), 1)
            m_i = m_new
        tl.store(LSE + rm, m_i + tl.log(l_i), mask=mrow)
        tl.store(POS + rm, p_i, mask=mrow)
        tl.store(CNT + rm, c_i, mask=mrow)

    @triton.jit
    def _lse_bwd_dq_kernel(
        Q,
        K,
        QL,
        KL,
        SELF,
        LSE,
        GL,
        GP,
        DQ,
        A,
        N,
        D,
        inv_t,
        stride_q,
        stride_k,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rd = tl.arange(0, BLOCK_D)
        mrow = rm < A
        q = tl.load(
            Q + rm[:, None] * stride_q + rd[None, :],
            mask=mrow[:, None] & (rd[None, :] < D),
            other=0.0,
        )
        ql = tl.load(QL + rm, mask=mrow, other=-1)
        sf = tl.load(SELF + rm, mask=mrow, other=-1)
        lse = tl.load(LSE + rm, mask=mrow, other=0.0)
        gl = tl.load(GL + rm, mask=mrow, other=0.0) * inv_t
        gp = tl.load(GP + rm, mask=mrow, other=0.0) * inv_t
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            mcol = rn < N
            k = tl.load(
                K + rn[:, None] * stride_k + rd[None, :],
                mask=mcol[:, None] & (rd[None, :] < D),
                other=0.0,
            )
            kl = tl.load(KL + rn, mask=mcol, other=-2)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * inv_t
            else:
                s = tl.dot(q, tl.trans(k)) * inv_t
            valid = mcol[None, :] & (rn[None, :] != sf[:, None])
            same = valid & (kl[None, :] == ql[:, None])
            p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0) * gl[:, None]
            p += tl.where(same, gp[:, None], 0.0)
            if IEEE:
                acc += tl.dot(p.to(k.dtype), k, input_precision="ieee")
            else:
                acc += tl.dot(p.to(k.dtype), k)
        tl.store(
            DQ + rm[:, None] * stride_q + rd[None, :], acc, mask=mrow[:, None] & (rd[None, :] < D)
        )

    @triton.jit
    def _lse_bwd_dk_kernel(
        Q,
        K,
        QL,
        KL,
        SELF,
        LSE,
        GL,
        GP,
        DK,
        A,
        N,
        D,
        inv_t,
        stride_q,
        stride_k,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rd = tl.arange(0, BLOCK_D)
        mcol = rn < N
        k = tl.load(
            K + rn[:, None] * stride_k + rd[None, :],
            mask=mcol[:, None] & (rd[None, :] < D),
            other=0.0,
        )
        kl = tl.load(KL + rn, mask=mcol, other=-2)
        acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for m0 in range(0, A, BLOCK_M):
            rm = m0 + tl.arange(0, BLOCK_M)
            mrow = rm < A
            q = tl.load(
                Q + rm[:, None] * stride_q + rd[None, :],
                mask=mrow[:, None] & (rd[None, :] < D),
                other=0.0,
            )
            ql = tl.load(QL + rm, mask=mrow, other=-1)
            sf = tl.load(SELF + rm, mask=mrow, other=-1)
            lse = tl.load(LSE + rm, mask=mrow, other=0.0)
            gl = tl.load(GL + rm, mask=mrow, other=0.0) * inv_t
            gp = tl.load(GP + rm, mask=mrow, other=0.0) * inv_t
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * inv_t
            else:
                s = tl.dot(q, tl.trans(k)) * inv_t
            valid = mrow[:, None] & mcol[None, :] & (rn[None, :] != sf[:, None])
            same = valid & (kl[None, :] == ql[:, None])
            p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0) * gl[:, None]
            p += tl.where(same, gp[:, None], 0.0)
            if IEEE:
                acc += tl.dot(tl.trans(p.to(q.dtype)), q, input_precision="ieee")
            else:
                acc += tl.dot(tl.trans(p.to(q.dtype)), q)
        tl.store(
            DK + rn[:, None] * stride_k + rd[None, :], acc, mask=mcol[:, None] & (rd[None, :] < D)
        )

    @triton.jit
    def _rwn_fwd_kernel(H, Z, RNORM, logk_ptr, D, stride, eps, BLOCK_D: tl.constexpr):
        row = tl.program_id(0)
        rd = tl.arange(0, BLOCK_D)
        m = rd < D
        logk = tl.load(logk_ptr)
        h = tl.load(H + row * stride + rd, mask=m, other=0.0).to(tl.float32)
        w = tl.exp(-rd.to(tl.float32) * logk)
        y = tl.where(m, h * w, 0.0)
        nrm = tl.maximum(tl.sqrt(tl.sum(y * y, 0)), eps)
        tl.store(Z + row * stride + rd, (y / nrm).to(Z.dtype.element_ty), mask=m)
        tl.store(RNORM + row, 1.0 / nrm)

    @triton.jit
    def _rwn_bwd_kernel(H, DZ, RNORM, logk_ptr, DH, DLOGK, D, stride, BLOCK_D: tl.constexpr):
        row = tl.program_id(0)
        rd = tl.arange(0, BLOCK_D)
        m = rd < D
        logk = tl.load(logk_ptr)
        idx = rd.to(tl.float32)
        h = tl.load(H + row * stride + rd, mask=m, other=0.0).to(tl.float32)
        dz = tl.load(DZ + row * stride + rd, mask=m, other=0.0).to(tl.float32)
        r = tl.load(RNORM + row)
        w = tl.exp(-idx * logk)
        y = tl.where(m, h * w, 0.0)
        z = y * r
        dy = (dz - z * tl.sum(z * dz, 0)) * r
        tl.store(DH + row * stride + rd, (dy * w).to(DH.dtype.element_ty), mask=m)
        tl.store(DLOGK + row, tl.sum(tl.where(m, -idx * y * dy, 0.0), 0))


def _blocks(d: int) -> tuple[int, int, int]:
    bd = max(16, 1 << (d - 1).bit_length())
    if bd <= 64:
        return 64, 64, bd
    return (64, 32, bd) if bd >= 256 else (64, 64, bd)


def _prep(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, bool]:
    q, k = q.contiguous(), k.contiguous()
    return q, k, q.dtype in (torch.float32, torch.float64)


def lse_forward_triton(
    q: Tensor, k: Tensor, ql: Tensor, kl: Tensor, self_idx: Tensor, inv_t: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton forward of ``headkit::contrastive_lse``: ``(lse, pos, cnt)`` in float32."""
    q, k, ieee = _prep(q, k)
    a, d = q.shape
    n = k.shape[0]
    bm, bn, bd = _blocks(d)
    lse = torch.empty(a, device=q.device, dtype=torch.float32)
    pos = torch.empty_like(lse)
    cnt = torch.empty_like(lse)
    _lse_fwd_kernel[(triton.cdiv(a, bm),)](
        q,
        k,
        ql.contiguous(),
        kl.contiguous(),
        self_idx.contiguous(),
        lse,
        pos,
        cnt,
        a,
        n,
        d,
        float(inv_t),
        q.stride(0),
        k.stride(0),
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_D=bd,
        IEEE=ieee,
    )
    return lse.to(q.dtype), pos.to(q.dtype), cnt.to(q.dtype)


def lse_backward_triton(
    g_lse: Tensor,
    g_pos: Tensor,
    q: Tensor,
    k: Tensor,
    ql: Tensor,
    kl: Tensor,
    self_idx: Tensor,
    lse: Tensor,
    inv_t: float,
) -> tuple[Tensor, Tensor]:
    """Triton backward of ``headkit::contrastive_lse``: ``(dq, dk)``."""
    q, k, ieee = _prep(q, k)
    a, d = q.shape
    n = k.shape[0]
    bm, bn, bd = _blocks(d)
    dq = torch.empty(q.shape, device=q.device, dtype=torch.float32)
    dk = torch.empty(k.shape, device=k.device, dtype=torch.float32)
    args = (
        q,
        k,
        ql.contiguous(),
        kl.contiguous(),
        self_idx.contiguous(),
        lse.float().contiguous(),
        g_lse.float().contiguous(),
        g_pos.float().contiguous(),
    )
    _lse_bwd_dq_kernel[(triton.cdiv(a, bm),)](
        *args,
        dq,
        a,
        n,
        d,
        float(inv_t),
        q.stride(0),
        k.stride(0),
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_D=bd,
        IEEE=ieee,
    )
    _lse_bwd_dk_kernel[(triton.cdiv(n, bn),)](
        *args,
        dk,
        a,
        n,
        d,
        float(inv_t),
        q.stride(0),
        k.stride(0),
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_D=bd,
        IEEE=ieee,
    )
    return dq.to(q.dtype), dk.to(k.dtype)


class _ReweightNormalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, log_k: Tensor, eps: float) -> Tensor:
        d = h.shape[-1]
        h2 = h.reshape(-1, d).contiguous()
        z = torch.empty_like(h2)
        rnorm = torch.empty(h2.shape[0], device=h.device, dtype=torch.float32)
        lk = log_k.detach().float().reshape(1).contiguous()
        bd = max(16, 1 << (d - 1).bit_length())
        if h2.shape[0]:
            _rwn_fwd_kernel[(h2.shape[0],)](
                h2, z, rnorm, lk, d, h2.stride(0), float(eps), BLOCK_D=bd
            )
        ctx.save_for_backward(h2, rnorm, lk)
        ctx.shape, ctx.ldtype = h.shape, log_k.dtype
        return z.reshape(h.shape)

    @staticmethod
    def backward(ctx, dz: Tensor):
        h2, rnorm, lk = ctx.saved_tensors
        d = h2.shape[-1]
        dz2 = dz.reshape(-1, d).contiguous()
        dh = torch.empty_like(h2)
        dlogk = torch.zeros(h2.shape[0], device=h2.device, dtype=torch.float32)
        bd = max(16, 1 << (d - 1).bit_length())
        if h2.shape[0]:
            _rwn_bwd_kernel[(h2.shape[0],)](
                h2, dz2, rnorm, lk, dh, dlogk, d, h2.stride(0), BLOCK_D=bd
            )
        return dh.reshape(ctx.shape), dlogk.sum().to(ctx.ldtype), None


def reweight_normalize_triton(h: Tensor, log_k: Tensor, eps: float = 1e-12) -> Tensor:
    """Triton path of `headkit.ops.reweight_normalize` (``log_k``: scalar ``log(kappa)``)."""
    if not math.isfinite(eps):
        raise ValueError(f"eps must be finite, got {eps}")
    out: Tensor = _ReweightNormalize.apply(h, log_k, eps)
    return out
