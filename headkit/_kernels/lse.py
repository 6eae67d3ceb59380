"""The one primitive of the contrastive losses: a tiled, masked log-sum-exp.

For anchors ``q`` (A, D) and keys ``k`` (K, D) it returns per anchor

- ``lse_a = log sum_{j != self(a)} exp(q_a . k_j / T)``, the softmax denominator,
- ``pos_a``, the summed logits of the anchor's positives: the keys with its label (label mode)
  or the one key ``pos_idx[a]`` (index mode),
- ``cnt_a``, the number of those positives (not differentiable),

without building the (A, K) matrix: the forward streams over (row block x column tile) blocks
with an online log-sum-exp, the backward recomputes each block. Blocks live in buffers
allocated once per call and reused (``out=``), so the extra memory is a few blocks.

One `headkit._kernels.op.KernelOp` definition gives two routes to the same implementation:

- eager: an `torch.autograd.Function` calls it directly (no dispatcher, no ``torch._dynamo``
  import, which alone costs about 160 MiB of resident memory on the first call);
- under `torch.compile`: the ``torch.library`` custom ops ``headkit::contrastive_lse`` and
  ``headkit::contrastive_lse_backward`` (opaque to dynamo, so no graph breaks).

Double backward (``create_graph=True``) recomputes the gradient with a differentiable dense
composite (O(A K) memory, only on that path). CUDA tensors use the Triton kernels of
`headkit._kernels.triton` after a self-check (see `headkit._kernels.backend`).
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import backend as _backend
from .op import KernelKey, KernelOp, run_kernel

__all__ = ["LSE_OP", "LseArgs", "lse", "lse_dense", "tile_shape"]

LSE_OP = "contrastive_lse"

# elements of one block of logits in the PyTorch path: 4M floats = 16 MiB in float32, one buffer
# alive at a time (SupCon adds a product buffer and a boolean mask). Smaller blocks use less
# memory but multiply the number of (multi-threaded) ops: with 1M-element blocks the CPU step
# was up to 1.4x slower on a loaded 2-core machine.
_TILE_ELEMS = int(os.environ.get("HEADKIT_TILE_ELEMS", str(1 << 22)))
_MAX_COLS = 1024
_TRITON_MAX_D = 256
_EMPTY: dict[torch.device, Tensor] = {}


class LseArgs(NamedTuple):
    """The inputs of the op, as every implementation takes them: anchors ``q`` (A, D), keys
    ``k`` (K, D), labels ``ql`` (A,) / ``kl`` (K,), the excluded key ``self_idx`` (A,) and
    the positive key ``pos_idx`` (A,) of each anchor (empty tensors where unused), and
    ``inv_t``, the inverse temperature."""

    q: Tensor
    k: Tensor
    ql: Tensor
    kl: Tensor
    self_idx: Tensor
    pos_idx: Tensor
    inv_t: float


def tile_shape(a: int, n: int) -> tuple[int, int]:
    """(rows, columns) of one block of the PyTorch path for an (a, n) logits matrix."""
    cols = max(1, min(n, _MAX_COLS, _TILE_ELEMS))
    rows = max(1, min(a, _TILE_ELEMS // cols))
    return rows, cols


def _dot_dtype(q: Tensor, dot: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dot, q.dtype)


def _triton_supported(q: Tensor) -> bool:
    return q.dtype == torch.float32 and 0 < q.shape[-1] <= _TRITON_MAX_D


def _use_triton(q: Tensor, dot: str) -> bool:
    return _backend.use_triton(
        LSE_OP, q.device, _dot_dtype(q, dot), _backend.block_d(q.shape[-1]), _triton_supported(q)
    )


# ----------------------------------------------------------------------------- PyTorch path


def _self_cols(sib: Tensor, c0: int, t: int) -> tuple[Tensor, Tensor]:
    """For each row of a block: whether its index is in columns [c0, c0 + t), and where."""
    col = sib - c0
    hit = (col >= 0) & (col < t)
    return hit, col.clamp(0, t - 1).unsqueeze(1)


def _col_range(idx: Tensor) -> tuple[int, int] | None:
    """Columns a block of per-row indices can hit: read on the host only for CPU tensors (free);
    elsewhere None (every tile is masked: no device synchronisation)."""
    if idx.device.type != "cpu":
        return None
    hit = idx[idx >= 0]
    if hit.numel() == 0:
        return (0, -1)
    return int(hit.min()), int(hit.max())


def _touches(rng: tuple[int, int] | None, c0: int, c1: int) -> bool:
    return rng is None or (rng[0] < c1 and rng[1] >= c0)


def _fwd_torch(args: LseArgs) -> tuple[Tensor, Tensor, Tensor]:
    q, k, ql, kl, self_idx, pos_idx, inv_t = args
    a, n = q.shape[0], k.shape[0]
    dt, dev = q.dtype, q.device
    lse = torch.full((a,), -math.inf, dtype=dt, device=dev)
    pos = torch.zeros(a, dtype=dt, device=dev)
    cnt = torch.zeros(a, dtype=dt, device=dev)
    if a == 0 or n == 0:
        return lse, pos, cnt
    labels, index, has_self = ql.numel() > 0, pos_idx.numel() > 0, self_idx.numel() > 0
    qs = q * inv_t if inv_t != 1.0 else q  # logits straight out of the matmul
    rb, tc = tile_shape(a, n)
    buf = torch.empty(rb * tc, dtype=dt, device=dev)
    if labels:
        prod = torch.empty(rb * tc, dtype=dt, device=dev)
        same = torch.empty(rb * tc, dtype=torch.bool, device=dev)
    if index:  # a positive that is also the excluded key does not count
        pos_ok = (pos_idx >= 0) & (pos_idx != self_idx) if has_self else pos_idx >= 0
        cnt.copy_(pos_ok)
    m = torch.empty(rb, dtype=dt, device=dev)
    sm_ = torch.empty(rb, dtype=dt, device=dev)
    lowest = torch.finfo(dt).min
    for r0 in range(0, a, rb):
        r1 = min(a, r0 + rb)
        nr = r1 - r0
        qb = qs[r0:r1]
        mb, sb = m[:nr].fill_(-math.inf), sm_[:nr].zero_()
        self_rng = _col_range(self_idx[r0:r1]) if has_self else (0, -1)
        pos_rng = _col_range(pos_idx[r0:r1]) if index else (0, -1)
        for c0 in range(0, n, tc):
            c1 = min(n, c0 + tc)
            t = c1 - c0
            blk = buf[: nr * t].view(nr, t)
            torch.mm(qb, k[c0:c1].t(), out=blk)
            masked = _touches(self_rng, c0, c1)
            if masked:
                hit, scol = _self_cols(self_idx[r0:r1], c0, t)
            if labels:
                sm = same[: nr * t].view(nr, t)
                torch.eq(ql[r0:r1, None], kl[None, c0:c1], out=sm)
                if masked:
                    sm.scatter_(1, scol, sm.gather(1, scol) & ~hit[:, None])
                pr = prod[: nr * t].view(nr, t)
                torch.mul(blk, sm, out=pr)
                pos[r0:r1] += pr.sum(1)
                cnt[r0:r1] += sm.sum(1)
            elif index and _touches(pos_rng, c0, c1):
                hit_p, pcol = _self_cols(pos_idx[r0:r1], c0, t)
                hit_p &= pos_ok[r0:r1]
                pos[r0:r1] += torch.where(hit_p, blk.gather(1, pcol)[:, 0], 0.0)
            if masked:
                blk.scatter_(1, scol, torch.where(hit[:, None], -math.inf, blk.gather(1, scol)))
            # online log-sum-exp, in place (torch.logsumexp allocates a block-sized temporary)
            new = torch.maximum(mb, blk.amax(1))
            safe = new.clamp_min(lowest)
            blk.sub_(safe[:, None]).exp_()
            sb.mul_(torch.exp(mb - safe)).add_(blk.sum(1))
            mb.copy_(new)
        torch.add(mb, torch.log(sb), out=lse[r0:r1])
    return lse, pos, cnt


def _bwd_torch(
    g_lse: Tensor, g_pos: Tensor, args: LseArgs, lse: Tensor, symmetric: bool
) -> tuple[Tensor, Tensor]:
    """``(dq, dk)``; with ``symmetric`` (k is q) both are one buffer holding their sum.

    ``P = softmax * g_lse + positives * g_pos`` per tile; ``dq = inv_t P k``, ``dk = P^T (inv_t
    q)``. ``exp(s - lse) * g_lse`` is one ``exp`` of ``s - (lse - log g_lse)``, the shift folded
    into the matmul (``addmm``), when every ``g_lse >= 0`` (checked on the host for CPU tensors).
    """
    q, k, ql, kl, self_idx, pos_idx, inv_t = args
    a, n = q.shape[0], k.shape[0]
    dt, dev = q.dtype, q.device
    dq = torch.zeros_like(q)
    dk = dq if symmetric else torch.zeros_like(k)
    if a == 0 or n == 0:
        return dq, dk
    labels, index, has_self = ql.numel() > 0, pos_idx.numel() > 0, self_idx.numel() > 0
    qs = q * inv_t if inv_t != 1.0 else q
    kk = qs if symmetric else k  # symmetric: dq and dk share the scaled rows
    rb, tc = tile_shape(a, n)
    buf = torch.empty(rb * tc, dtype=dt, device=dev)
    if labels:
        prod = torch.empty(rb * tc, dtype=dt, device=dev)
        same = torch.empty(rb * tc, dtype=torch.bool, device=dev)
    lse = torch.where(torch.isfinite(lse), lse, 0.0)
    fold = dev.type == "cpu" and bool((g_lse >= 0).all())
    neg_shift = (torch.log(g_lse) - lse) if fold else -lse
    if index:
        pos_ok = (pos_idx >= 0) & (pos_idx != self_idx) if has_self else pos_idx >= 0
    for r0 in range(0, a, rb):
        r1 = min(a, r0 + rb)
        nr = r1 - r0
        qb = qs[r0:r1]
        sh = neg_shift[r0:r1, None]
        self_rng = _col_range(self_idx[r0:r1]) if has_self else (0, -1)
        pos_rng = _col_range(pos_idx[r0:r1]) if index else (0, -1)
        for c0 in range(0, n, tc):
            c1 = min(n, c0 + tc)
            t = c1 - c0
            blk = buf[: nr * t].view(nr, t)
            torch.addmm(sh, qb, k[c0:c1].t(), out=blk)
            blk.exp_()
            if not fold:
                blk.mul_(g_lse[r0:r1, None])
            if labels:
                sm = same[: nr * t].view(nr, t)
                torch.eq(ql[r0:r1, None], kl[None, c0:c1], out=sm)
                pr = prod[: nr * t].view(nr, t)
                torch.mul(sm, g_pos[r0:r1, None], out=pr)
                blk.add_(pr)
            elif index and _touches(pos_rng, c0, c1):
                hit_p, pcol = _self_cols(pos_idx[r0:r1], c0, t)
                hit_p &= pos_ok[r0:r1]
                blk.scatter_add_(1, pcol, torch.where(hit_p, g_pos[r0:r1], 0.0)[:, None])
            if _touches(self_rng, c0, c1):
                hit, scol = _self_cols(self_idx[r0:r1], c0, t)
                blk.scatter_(1, scol, torch.where(hit[:, None], 0.0, blk.gather(1, scol)))
            dq[r0:r1].addmm_(blk, kk[c0:c1])
            dk[c0:c1].addmm_(blk.t(), qb)
    if not symmetric and inv_t != 1.0:
        dq.mul_(inv_t)
    return dq, dk


def lse_dense(
    q: Tensor,
    k: Tensor,
    ql: Tensor,
    kl: Tensor,
    self_idx: Tensor,
    pos_idx: Tensor,
    inv_t: float | Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Differentiable dense composite of the same op (builds the (A, K) matrix)."""
    a, n = q.shape[0], k.shape[0]
    logits = (q @ k.t()) * inv_t
    cols = torch.arange(n, device=q.device)
    excl = (
        cols[None, :] == self_idx[:, None]
        if self_idx.numel()
        else torch.zeros(a, n, dtype=torch.bool, device=q.device)
    )
    masked = logits.masked_fill(excl, -math.inf)
    lse_ = torch.logsumexp(masked, 1) if n else q.new_full((a,), -math.inf)
    if ql.numel():
        same = (ql[:, None] == kl[None, :]) & ~excl
    elif pos_idx.numel():
        same = (cols[None, :] == pos_idx[:, None]) & ~excl
    else:
        same = torch.zeros(a, n, dtype=torch.bool, device=q.device)
    pos = torch.where(same, logits, 0.0).sum(1)
    return lse_, pos, same.sum(1).to(q.dtype)


# ----------------------------------------------------------------------------- dispatch


def _key(q: Tensor, dot: str) -> KernelKey:
    return KernelKey(
        LSE_OP, q.device, _dot_dtype(q, dot), _backend.block_d(q.shape[-1]), _triton_supported(q)
    )


def _forward(*inputs: Any) -> tuple[Tensor, Tensor, Tensor]:
    args, dot = LseArgs(*inputs[:7]), inputs[7]

    def triton() -> tuple[Tensor, Tensor, Tensor]:
        from . import triton as _triton

        return _triton.lse_forward(args, dot)

    return run_kernel(_key(args.q, dot), triton, lambda: _fwd_torch(args))


def _backward(
    grads: tuple[Tensor, ...], inputs: tuple[Any, ...], saved: tuple[Tensor, ...], symmetric: bool
) -> tuple[Tensor, Tensor]:
    """``(dq, dk)``; with ``symmetric`` (``k is q``, eager route) ``dq`` holds their sum."""
    g_lse, g_pos = grads
    args, dot, lse_ = LseArgs(*inputs[:7]), inputs[7], saved[0]

    def triton() -> tuple[Tensor, Tensor]:
        from . import triton as _triton

        dq, dk = _triton.lse_backward(g_lse, g_pos, args, lse_, dot)
        return (dq.add_(dk), dq) if symmetric else (dq, dk)

    return run_kernel(
        _key(args.q, dot), triton, lambda: _bwd_torch(g_lse, g_pos, args, lse_, symmetric)
    )


def _fake(q: Tensor, *_: Any) -> tuple[Tensor, Tensor, Tensor]:
    a = q.shape[0]
    return q.new_empty(a), q.new_empty(a), q.new_empty(a)


_LSE = KernelOp(
    LSE_OP,
    args="Tensor q, Tensor k, Tensor ql, Tensor kl, Tensor self_idx, Tensor pos_idx, "
    "float inv_t, str dot",
    num_outputs=3,
    forward=_forward,
    backward=_backward,
    fake=_fake,
    dense=lambda q, k, ql, kl, si, pi, inv_t, dot: lse_dense(q, k, ql, kl, si, pi, inv_t),
    grad_inputs=(0, 1),
    save_outputs=(0,),
    nondiff_outputs=(2,),
    alias=(0, 1),
)


# ----------------------------------------------------------------------------- entry points


def _empty(device: torch.device) -> Tensor:
    t = _EMPTY.get(device)
    if t is None:
        t = _EMPTY[device] = torch.empty(0, dtype=torch.long, device=device)
    return t


def lse(
    q: Tensor,
    k: Tensor,
    *,
    q_labels: Tensor | None = None,
    k_labels: Tensor | None = None,
    self_idx: Tensor | None = None,
    pos_idx: Tensor | None = None,
    inv_t: float = 1.0,
    dot: str = "",
) -> tuple[Tensor, Tensor, Tensor]:
    """Internal entry point: ``(lse, pos, cnt)``; unused index arguments may be None."""
    e = (
        _empty(q.device)
        if q.device.type != "meta"
        else torch.empty(0, dtype=torch.long, device="meta")
    )
    ql = e if q_labels is None else q_labels
    kl = e if k_labels is None else k_labels
    si = e if self_idx is None else self_idx
    pi = e if pos_idx is None else pos_idx
    lse_, pos, cnt = _LSE.apply(q, k, ql, kl, si, pi, float(inv_t), dot)
    return lse_, pos, cnt


# ----------------------------------------------------------------------------- Triton self-check


def _check_lse(
    device: torch.device, dtype: torch.dtype, bd: int, prec: str
) -> _backend.CheckResult:
    """Run the Triton kernels on a small input and compare them with the PyTorch path."""
    from . import triton as _triton

    g = torch.Generator().manual_seed(0)
    a, n, d = 67, 83, max(1, bd - 5)
    dot = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "")
    q = torch.nn.functional.normalize(torch.randn(a, d, generator=g), dim=1)
    k = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    ql, kl = torch.randint(0, 5, (a,), generator=g), torch.randint(0, 5, (n,), generator=g)
    self_idx = torch.randint(-1, n, (a,), generator=g)
    pos_idx = torch.randint(-1, n, (a,), generator=g)
    g_lse, g_pos = torch.randn(a, generator=g), torch.randn(a, generator=g)
    e = torch.empty(0, dtype=torch.long)
    tol = 1e-4 if (dot == "" and prec == "ieee") else 3e-2
    # the reference sees the inputs as the kernel's dot products do (rounded to the dot dtype)
    qr = q.to(dtype).double() if dot else q.double()
    kr = k.to(dtype).double() if dot else k.double()
    errs: dict[str, float] = {}
    for name, (lq, lk, si, pi) in {
        "labels": (ql, kl, self_idx, e),
        "index": (e, e, self_idx, pos_idx),
        "plain": (e, e, e, e),
    }.items():
        dq_, dk_, dl, dkl, dsi, dpi = (x.to(device) for x in (q, k, lq, lk, si, pi))
        on_device = LseArgs(dq_, dk_, dl, dkl, dsi, dpi, 2.0)
        ref_args = LseArgs(qr, kr, lq, lk, si, pi, 2.0)
        got = _triton.lse_forward(on_device, dot)
        ref = _fwd_torch(ref_args)
        got_g = _triton.lse_backward(g_lse.to(device), g_pos.to(device), on_device, got[0], dot)
        ref_g = _bwd_torch(g_lse.double(), g_pos.double(), ref_args, ref[0], False)
        for what, x, r in zip(
            ("lse", "pos", "cnt", "dq", "dk"), (*got, *got_g), (*ref, *ref_g), strict=True
        ):
            errs[f"{what} ({name} positives)"] = _backend.rel_err(x.cpu(), r)
    return _backend.check_verdict(errs, tol, f"{a} x {n} x {d}")


_backend.register_check(LSE_OP, _check_lse)
