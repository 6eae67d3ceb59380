"""Triton kernels for CUDA tensors (also runnable on the CPU under ``TRITON_INTERPRET=1``).

Imported lazily, only once `headkit._kernels.backend.use_triton` has chosen Triton for an op;
``import headkit`` never imports Triton. Two ops have kernels here:

- ``headkit::contrastive_lse`` (`headkit.ops.contrastive_lse`): a forward kernel (online
  log-sum-exp over column tiles) and two backward kernels (``dq`` over row tiles, ``dk`` over
  column tiles) that recompute each tile. The tile code they share -- loading a block of rows,
  the logits of a tile with the self and positive masks, the softmax gradient of a tile -- is
  written once as ``@triton.jit`` helpers.
- ``headkit::reweight_normalize`` (`headkit.ops.reweight_normalize`): one row per program,
  forward and backward.

Dot products: float32 inputs follow PyTorch's float32 matmul precision (IEEE under
``torch.get_float32_matmul_precision() == "highest"``, TF32 tensor cores otherwise); the ``dot``
argument ``"bfloat16"`` / ``"float16"`` (half-precision users) rounds each tile to that type
for the tensor cores and accumulates in float32. Block sizes are autotuned over a few
configurations per feature width (one configuration under the interpreter).
"""
# mypy: disable-error-code="no-untyped-def,no-any-return,misc,name-defined,untyped-decorator"

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .backend import block_d, dot_precision

if TYPE_CHECKING:
    from .lse import LseArgs

__all__ = ["block_d", "lse_backward", "lse_forward", "rwn_backward", "rwn_forward"]

import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_DOT = {"": 0, "bfloat16": 1, "float16": 2}
# the interpreter's tl.dot mishandles bfloat16 operands (numpy has no bfloat16): there, a
# bfloat16 dot is emulated by rounding to bfloat16 and multiplying in float32
_BF16_EMULATED = tl.constexpr(_INTERPRET)


def _lse_configs() -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4)]
    shapes = [(64, 64, 4, 2), (64, 128, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 4)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in shapes
    ]


def _prune_lse(configs, named_args, **kwargs):
    """Keep register use bounded for wide features: no 128 x 128 tiles at BLOCK_D = 256."""
    bd = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
    if bd < 256:
        return configs
    kept = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 128]
    return kept or configs[:1]


def _rwn_configs() -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({}, num_warps=4)]
    return [triton.Config({}, num_warps=w) for w in (1, 2, 4, 8)]


# ----------------------------------------------------------------------------- shared tile code


@triton.jit
def _load_rows(PTR, rows, n_rows, rd, D, stride):
    """A (len(rows), BLOCK_D) block of a row-major (n_rows, D) matrix, zero-padded."""
    return tl.load(
        PTR + rows[:, None] * stride + rd[None, :],
        mask=(rows[:, None] < n_rows) & (rd[None, :] < D),
        other=0.0,
    )


@triton.jit
def _dot(a, b, PREC: tl.constexpr, DOT: tl.constexpr):
    if DOT == 1:
        if _BF16_EMULATED:
            a16 = a.to(tl.bfloat16).to(tl.float32)
            return tl.dot(a16, b.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif DOT == 2:
        return tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        return tl.dot(a.to(b.dtype), b, input_precision=PREC)


@triton.jit
def _tile(
    q,
    k,
    rm,
    rn,
    A,
    N,
    ql,
    kl,
    sf,
    pi,
    inv_t,
    PREC: tl.constexpr,
    DOT: tl.constexpr,
    POS_MODE: tl.constexpr,
    HAS_SELF: tl.constexpr,
):
    """Logits ``q k^T / T`` of one tile with its masks.

    ``valid``: inside the matrix and not the anchor's excluded key; ``pos``: valid and a
    positive (same label when POS_MODE == 1, the anchor's positive index when POS_MODE == 2).
    """
    s = _dot(q, tl.trans(k), PREC, DOT) * inv_t
    valid = (rm[:, None] < A) & (rn[None, :] < N)
    if HAS_SELF:
        valid = valid & (rn[None, :] != sf[:, None])
    if POS_MODE == 1:
        pos = valid & (kl[None, :] == ql[:, None])
    elif POS_MODE == 2:
        pos = valid & (rn[None, :] == pi[:, None])
    else:
        pos = valid
    return s, valid, pos


@triton.jit
def _grad_tile(s, valid, pos, lse, gl, gp, POS_MODE: tl.constexpr):
    """d loss / d logits of one tile: softmax * g_lse (+ g_pos on the positives)."""
    p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0) * gl[:, None]
    if POS_MODE != 0:
        p += tl.where(pos, gp[:, None], 0.0)
    return p


@triton.jit
def _row_meta(
    QL, SELF, PIDX, rm, A, BLOCK_M: tl.constexpr, POS_MODE: tl.constexpr, HAS_SELF: tl.constexpr
):
    """Labels, excluded key and positive index of a block of anchors."""
    mrow = rm < A
    if POS_MODE == 1:
        ql = tl.load(QL + rm, mask=mrow, other=-1)
    else:
        ql = tl.full([BLOCK_M], -1, tl.int64)
    if HAS_SELF:  # noqa: SIM108 (a static if: Triton compiles one branch)
        sf = tl.load(SELF + rm, mask=mrow, other=-1)
    else:
        sf = tl.full([BLOCK_M], -1, tl.int64)
    if POS_MODE == 2:
        pi = tl.load(PIDX + rm, mask=mrow, other=-1)
    else:
        pi = tl.full([BLOCK_M], -1, tl.int64)
    return ql, sf, pi


@triton.jit
def _col_labels(KL, rn, N, BLOCK_N: tl.constexpr, POS_MODE: tl.constexpr):
    if POS_MODE == 1:
        return tl.load(KL + rn, mask=rn < N, other=-2)
    else:
        return tl.full([BLOCK_N], -2, tl.int64)


# ----------------------------------------------------------------------------- LSE kernels


@triton.autotune(
    configs=_lse_configs(),
    key=["D", "SIZE_BUCKET", "POS_MODE", "DOT", "HAS_SELF"],
    prune_configs_by={"early_config_prune": _prune_lse},
)
@triton.jit
def _lse_fwd_kernel(
    Q,
    K,
    QL,
    KL,
    SELF,
    PIDX,
    LSE,
    POS,
    CNT,
    A,
    N,
    D,
    inv_t,
    stride_q,
    stride_k,
    SIZE_BUCKET,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PREC: tl.constexpr,
    DOT: tl.constexpr,
    POS_MODE: tl.constexpr,
    HAS_SELF: tl.constexpr,
):
    pid = tl.program_id(0)
    rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BLOCK_D)
    q = _load_rows(Q, rm, A, rd, D, stride_q)
    ql, sf, pi = _row_meta(QL, SELF, PIDX, rm, A, BLOCK_M, POS_MODE, HAS_SELF)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    p_i = tl.zeros([BLOCK_M], tl.float32)
    c_i = tl.zeros([BLOCK_M], tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        k = _load_rows(K, rn, N, rd, D, stride_k)
        kl = _col_labels(KL, rn, N, BLOCK_N, POS_MODE)
        s, valid, pos = _tile(
            q, k, rm, rn, A, N, ql, kl, sf, pi, inv_t, PREC, DOT, POS_MODE, HAS_SELF
        )
        s = tl.where(valid, s, float("-inf"))
        if POS_MODE != 0:
            p_i += tl.sum(tl.where(pos, s, 0.0), 1)
            c_i += tl.sum(pos.to(tl.float32), 1)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), 1)
        m_i = m_new
    mrow = rm < A
    lse = tl.where(l_i > 0, m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
    tl.store(LSE + rm, lse, mask=mrow)
    tl.store(POS + rm, p_i, mask=mrow)
    tl.store(CNT + rm, c_i, mask=mrow)


@triton.autotune(
    configs=_lse_configs(),
    key=["D", "SIZE_BUCKET", "POS_MODE", "DOT", "HAS_SELF"],
    prune_configs_by={"early_config_prune": _prune_lse},
)
@triton.jit
def _lse_bwd_dq_kernel(
    Q,
    K,
    QL,
    KL,
    SELF,
    PIDX,
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
    SIZE_BUCKET,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PREC: tl.constexpr,
    DOT: tl.constexpr,
    POS_MODE: tl.constexpr,
    HAS_SELF: tl.constexpr,
):
    pid = tl.program_id(0)
    rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BLOCK_D)
    mrow = rm < A
    q = _load_rows(Q, rm, A, rd, D, stride_q)
    ql, sf, pi = _row_meta(QL, SELF, PIDX, rm, A, BLOCK_M, POS_MODE, HAS_SELF)
    lse = tl.load(LSE + rm, mask=mrow, other=0.0)
    gl = tl.load(GL + rm, mask=mrow, other=0.0) * inv_t
    gp = tl.load(GP + rm, mask=mrow, other=0.0) * inv_t
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        k = _load_rows(K, rn, N, rd, D, stride_k)
        kl = _col_labels(KL, rn, N, BLOCK_N, POS_MODE)
        s, valid, pos = _tile(
            q, k, rm, rn, A, N, ql, kl, sf, pi, inv_t, PREC, DOT, POS_MODE, HAS_SELF
        )
        p = _grad_tile(s, valid, pos, lse, gl, gp, POS_MODE)
        acc += _dot(p, k, PREC, DOT)
    tl.store(DQ + rm[:, None] * D + rd[None, :], acc, mask=mrow[:, None] & (rd[None, :] < D))


@triton.autotune(
    configs=_lse_configs(),
    key=["D", "SIZE_BUCKET", "POS_MODE", "DOT", "HAS_SELF"],
    prune_configs_by={"early_config_prune": _prune_lse},
)
@triton.jit
def _lse_bwd_dk_kernel(
    Q,
    K,
    QL,
    KL,
    SELF,
    PIDX,
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
    SIZE_BUCKET,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PREC: tl.constexpr,
    DOT: tl.constexpr,
    POS_MODE: tl.constexpr,
    HAS_SELF: tl.constexpr,
):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    mcol = rn < N
    k = _load_rows(K, rn, N, rd, D, stride_k)
    kl = _col_labels(KL, rn, N, BLOCK_N, POS_MODE)
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for m0 in range(0, A, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        mrow = rm < A
        q = _load_rows(Q, rm, A, rd, D, stride_q)
        ql, sf, pi = _row_meta(QL, SELF, PIDX, rm, A, BLOCK_M, POS_MODE, HAS_SELF)
        lse = tl.load(LSE + rm, mask=mrow, other=0.0)
        gl = tl.load(GL + rm, mask=mrow, other=0.0) * inv_t
        gp = tl.load(GP + rm, mask=mrow, other=0.0) * inv_t
        s, valid, pos = _tile(
            q, k, rm, rn, A, N, ql, kl, sf, pi, inv_t, PREC, DOT, POS_MODE, HAS_SELF
        )
        p = _grad_tile(s, valid, pos, lse, gl, gp, POS_MODE)
        acc += _dot(tl.trans(p), q, PREC, DOT)
    tl.store(DK + rn[:, None] * D + rd[None, :], acc, mask=mcol[:, None] & (rd[None, :] < D))


def _bucket(a: int, n: int) -> int:
    """Autotuning key of the problem size: a power-of-two class of the larger side."""
    return max(a, n, 1).bit_length()


def _modes(ql: Tensor, self_idx: Tensor, pos_idx: Tensor) -> tuple[int, bool]:
    pos_mode = 1 if ql.numel() else (2 if pos_idx.numel() else 0)
    return pos_mode, bool(self_idx.numel())


def _ptr(t: Tensor, like: Tensor) -> Tensor:
    """A valid pointer for an unused index argument (Triton rejects empty tensors' null pointers)."""
    return t.contiguous() if t.numel() else torch.zeros(1, dtype=torch.long, device=like.device)


def lse_forward(args: LseArgs, dot: str) -> tuple[Tensor, Tensor, Tensor]:
    """Triton forward of ``headkit::contrastive_lse``: ``(lse, pos, cnt)`` in q's dtype."""
    q, k, ql, kl, self_idx, pos_idx, inv_t = args
    q, k = q.contiguous(), k.contiguous()
    a, d = q.shape
    n = k.shape[0]
    pos_mode, has_self = _modes(ql, self_idx, pos_idx)
    lse = torch.empty(a, device=q.device, dtype=torch.float32)
    pos = torch.empty_like(lse)
    cnt = torch.empty_like(lse)
    _lse_fwd_kernel[lambda meta: (triton.cdiv(a, meta["BLOCK_M"]),)](
        q,
        k,
        _ptr(ql, q),
        _ptr(kl, q),
        _ptr(self_idx, q),
        _ptr(pos_idx, q),
        lse,
        pos,
        cnt,
        a,
        n,
        d,
        float(inv_t),
        q.stride(0),
        k.stride(0),
        _bucket(a, n),
        BLOCK_D=block_d(d),
        PREC=dot_precision(q.dtype),
        DOT=_DOT[dot],
        POS_MODE=pos_mode,
        HAS_SELF=has_self,
    )
    return lse.to(q.dtype), pos.to(q.dtype), cnt.to(q.dtype)


def lse_backward(
    g_lse: Tensor, g_pos: Tensor, args: LseArgs, lse: Tensor, dot: str
) -> tuple[Tensor, Tensor]:
    """Triton backward of ``headkit::contrastive_lse``: ``(dq, dk)`` in q's dtype."""
    q, k, ql, kl, self_idx, pos_idx, inv_t = args
    q, k = q.contiguous(), k.contiguous()
    a, d = q.shape
    n = k.shape[0]
    pos_mode, has_self = _modes(ql, self_idx, pos_idx)
    dq = torch.empty((a, d), device=q.device, dtype=torch.float32)
    dk = torch.empty((n, d), device=k.device, dtype=torch.float32)
    lse = torch.where(torch.isfinite(lse), lse, 0.0).float().contiguous()
    kargs = (
        q,
        k,
        _ptr(ql, q),
        _ptr(kl, q),
        _ptr(self_idx, q),
        _ptr(pos_idx, q),
        lse,
        g_lse.float().contiguous(),
        g_pos.float().contiguous(),
    )
    consts = {
        "BLOCK_D": block_d(d),
        "PREC": dot_precision(q.dtype),
        "DOT": _DOT[dot],
        "POS_MODE": pos_mode,
        "HAS_SELF": has_self,
    }
    tail = (a, n, d, float(inv_t), q.stride(0), k.stride(0), _bucket(a, n))
    _lse_bwd_dq_kernel[lambda meta: (triton.cdiv(a, meta["BLOCK_M"]),)](*kargs, dq, *tail, **consts)
    _lse_bwd_dk_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](*kargs, dk, *tail, **consts)
    return dq.to(q.dtype), dk.to(k.dtype)


# ----------------------------------------------------------------------------- reweight + normalise


@triton.autotune(configs=_rwn_configs(), key=["D"])
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


@triton.autotune(configs=_rwn_configs(), key=["D"])
@triton.jit
def _rwn_bwd_kernel(H, DZ, RNORM, logk_ptr, DH, DLOGK, D, stride, eps, BLOCK_D: tl.constexpr):
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
    # where the norm was clamped to eps no gradient flows through it (as F.normalize)
    proj = tl.where(r < 1.0 / eps, tl.sum(z * dz, 0), 0.0)
    dy = (dz - z * proj) * r
    tl.store(DH + row * stride + rd, (dy * w).to(DH.dtype.element_ty), mask=m)
    tl.store(DLOGK + row, tl.sum(tl.where(m, -idx * y * dy, 0.0), 0))


def rwn_forward(h2: Tensor, log_k: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Triton forward of ``headkit::reweight_normalize`` on ``(rows, D)``: ``(z, 1 / norm)``."""
    h2 = h2.contiguous()
    rows, d = h2.shape
    z = torch.empty_like(h2)
    rnorm = torch.empty(rows, device=h2.device, dtype=torch.float32)
    lk = log_k.detach().float().reshape(1).contiguous()
    if rows:
        _rwn_fwd_kernel[(rows,)](h2, z, rnorm, lk, d, h2.stride(0), float(eps), BLOCK_D=block_d(d))
    return z, rnorm


def rwn_backward(
    dz: Tensor, h2: Tensor, rnorm: Tensor, log_k: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """Triton backward of ``headkit::reweight_normalize``: ``(dh, per-row d/d log kappa)``."""
    h2, dz = h2.contiguous(), dz.contiguous().to(h2.dtype)
    rows, d = h2.shape
    dh = torch.empty_like(h2)
    dlogk = torch.zeros(rows, device=h2.device, dtype=torch.float32)
    lk = log_k.detach().float().reshape(1).contiguous()
    if rows:
        _rwn_bwd_kernel[(rows,)](
            h2,
            dz,
            rnorm,
            lk,
            dh,
            dlogk,
            d,
            h2.stride(0),
            max(float(eps), 1e-38),
            BLOCK_D=block_d(d),
        )
    return dh, dlogk
