"""Memory-lean contrastive losses.

Every loss here reduces to one primitive, `contrastive_lse`: for anchors ``q`` (A, D) and keys
``k`` (K, D) with integer labels, it returns per anchor

- ``lse_a = log sum_{j != self(a)} exp(q_a . k_j / T)`` (the softmax denominator), and
- ``pos_a = sum_{j != self(a), label_j = label_a} q_a . k_j / T`` (summed positive logits),
- ``cnt_a``, the number of positives,

without ever building the (A, K) similarity matrix: the forward streams over column tiles with an
online log-sum-exp and the backward recomputes each tile. It is one ``torch.library`` custom op
(opaque to ``torch.compile``, so no graph breaks) with a CPU/any-device PyTorch implementation and
Triton kernels for CUDA tensors.
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ._errors import HeadkitError, fmt_shape
from ._reweight import compute_dtype

__all__ = [
    "InfoNCELoss",
    "NTXentLoss",
    "SupConLoss",
    "contrastive_lse",
    "info_nce",
    "nt_xent",
    "sup_con",
]

# elements of one (rows x tile) block in the PyTorch path: 4M floats = 16 MiB in float32
_TILE_ELEMS = int(os.environ.get("HEADKIT_TILE_ELEMS", str(1 << 22)))


def _use_triton(q: Tensor) -> bool:
    if q.shape[-1] > 256 or q.dtype == torch.float64:
        return False
    if not q.is_cuda and os.environ.get("HEADKIT_FORCE_TRITON") != "1":
        return False
    from ._triton import triton_available

    return triton_available()


def _tile_cols(rows: int, cols: int) -> int:
    return max(16, min(cols, _TILE_ELEMS // max(rows, 1)))


def _lse_forward_torch(
    q: Tensor,
    k: Tensor,
    ql: Tensor,
    kl: Tensor,
    self_idx: Tensor,
    inv_t: float,
    need_pos: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    a, n = q.shape[0], k.shape[0]
    m = torch.full((a,), -math.inf, dtype=q.dtype, device=q.device)
    s = torch.zeros(a, dtype=q.dtype, device=q.device)
    pos = torch.zeros(a, dtype=q.dtype, device=q.device)
    cnt = torch.zeros(a, dtype=q.dtype, device=q.device)
    rows = torch.arange(a, device=q.device)
    tile = _tile_cols(a, n)
    lowest = torch.finfo(q.dtype).min
    for c0 in range(0, n, tile):
        kt = k[c0 : c0 + tile]
        t = kt.shape[0]
        logits = torch.mm(q, kt.t()).mul_(inv_t)
        col = self_idx - c0
        hit = (col >= 0) & (col < t)
        r_hit, c_hit = rows[hit], col[hit]
        if need_pos:
            same = ql[:, None] == kl[None, c0 : c0 + t]
            same[r_hit, c_hit] = False
        logits[r_hit, c_hit] = -math.inf
        if need_pos:
            pos += torch.where(same, logits, 0.0).sum(1)
            cnt += same.sum(1)
        new_m = torch.maximum(m, logits.amax(1))
        safe = new_m.clamp_min(lowest)
        s = s * torch.exp(m - safe) + logits.sub_(safe[:, None]).exp_().sum(1)
        m = new_m
    return m + torch.log(s), pos, cnt


def _lse_backward_torch(
    g_lse: Tensor,
    g_pos: Tensor,
    q: Tensor,
    k: Tensor,
    ql: Tensor,
    kl: Tensor,
    self_idx: Tensor,
    lse: Tensor,
    inv_t: float,
    need_pos: bool = True,
) -> tuple[Tensor, Tensor]:
    a, n = q.shape[0], k.shape[0]
    dq = torch.zeros_like(q)
    dk = torch.empty_like(k)
    rows = torch.arange(a, device=q.device)
    tile = _tile_cols(a, n)
    gl = (g_lse * inv_t)[:, None]
    gp = (g_pos * inv_t)[:, None]
    for c0 in range(0, n, tile):
        kt = k[c0 : c0 + tile]
        t = kt.shape[0]
        p = torch.mm(q, kt.t()).mul_(inv_t).sub_(lse[:, None]).exp_()
        col = self_idx - c0
        hit = (col >= 0) & (col < t)
        r_hit, c_hit = rows[hit], col[hit]
        p[r_hit, c_hit] = 0.0
        p.mul_(gl)
        if need_pos:
            same = ql[:, None] == kl[None, c0 : c0 + t]
            same[r_hit, c_hit] = False
            p.add_(torch.where(same, gp, 0.0))
        dq.addmm_(p, kt)
        torch.mm(p.t(), q, out=dk[c0 : c0 + t])
    return dq, dk


@torch.library.custom_op("headkit::contrastive_lse", mutates_args=())
def _contrastive_lse_op(
    q: Tensor, k: Tensor, ql: Tensor, kl: Tensor, self_idx: Tensor, inv_t: float, need_pos: bool
) -> tuple[Tensor, Tensor, Tensor]:
    if _use_triton(q):
        from ._triton import lse_forward_triton

        lse, pos, cnt = lse_forward_triton(q, k, ql, kl, self_idx, inv_t)
        if not need_pos:
            pos, cnt = torch.zeros_like(pos), torch.zeros_like(cnt)
        return lse, pos, cnt
    return _lse_forward_torch(q, k, ql, kl, self_idx, inv_t, need_pos)


@_contrastive_lse_op.register_fake
def _(
    q: Tensor, k: Tensor, ql: Tensor, kl: Tensor, self_idx: Tensor, inv_t: float, need_pos: bool
) -> tuple[Tensor, Tensor, Tensor]:
    a = q.shape[0]
    return q.new_empty(a), q.new_empty(a), q.new_empty(a)


@torch.library.custom_op("headkit::contrastive_lse_backward", mutates_args=())
def _contrastive_lse_bwd_op(
    g_lse: Tensor,
    g_pos: Tensor,
    q: Tensor,
    k: Tensor,
    ql: Tensor,
    kl: Tensor,
    self_idx: Tensor,
    lse: Tensor,
    inv_t: float,
    need_pos: bool,
) -> tuple[Tensor, Tensor]:
    if _use_triton(q):
        from ._triton import lse_backward_triton

        g_pos = g_pos if need_pos else torch.zeros_like(g_pos)
        return lse_backward_triton(g_lse, g_pos, q, k, ql, kl, self_idx, lse, inv_t)
    return _lse_backward_torch(g_lse, g_pos, q, k, ql, kl, self_idx, lse, inv_t, need_pos)


@_contrastive_lse_bwd_op.register_fake
def _(
    g_lse: Tensor,
    g_pos: Tensor,
    q: Tensor,
    k: Tensor,
    ql: Tensor,
    kl: Tensor,
    self_idx: Tensor,
    lse: Tensor,
    inv_t: float,
    need_pos: bool,
) -> tuple[Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k)


def _setup_context(
    ctx: torch.autograd.function.FunctionCtx, inputs: tuple[object, ...], output: tuple[Tensor, ...]
) -> None:
    q, k, ql, kl, self_idx, inv_t, need_pos = inputs
    ctx.save_for_backward(q, k, ql, kl, self_idx, output[0])  # type: ignore[arg-type]
    ctx.inv_t = inv_t  # type: ignore[attr-defined]
    ctx.need_pos = need_pos  # type: ignore[attr-defined]


def _backward(
    ctx: torch.autograd.function.FunctionCtx,
    g_lse: Tensor | None,
    g_pos: Tensor | None,
    g_cnt: Tensor | None,
) -> tuple[Tensor, Tensor, None, None, None, None, None]:
    q, k, ql, kl, self_idx, lse = ctx.saved_tensors  # type: ignore[attr-defined]
    g_lse = torch.zeros_like(lse) if g_lse is None else g_lse
    g_pos = torch.zeros_like(lse) if g_pos is None else g_pos
    dq, dk = _contrastive_lse_bwd_op(
        g_lse,
        g_pos,
        q,
        k,
        ql,
        kl,
        self_idx,
        lse,
        ctx.inv_t,  # type: ignore[attr-defined]
        ctx.need_pos,  # type: ignore[attr-defined]
    )
    return dq, dk, None, None, None, None, None


_contrastive_lse_op.register_autograd(_backward, setup_context=_setup_context)


def contrastive_lse(
    q: Tensor,
    k: Tensor,
    q_labels: Tensor,
    k_labels: Tensor,
    self_idx: Tensor,
    temperature: float,
    need_pos: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Tiled log-sum-exp and summed positive logits of ``q @ k.T / temperature``.

    Args:
        q: ``(A, D)`` anchors (float32 or float64).
        k: ``(K, D)`` keys, same dtype.
        q_labels: ``(A,)`` int64 anchor labels.
        k_labels: ``(K,)`` int64 key labels; key j is a positive of anchor a when the labels match.
        self_idx: ``(A,)`` int64, the key index excluded for each anchor (``-1``: none).
        temperature: positive float.
        need_pos: compute ``pos`` and ``cnt`` (False returns zeros and skips the label masks).

    Returns:
        ``(lse, pos, cnt)``, each ``(A,)``: log-sum-exp over the non-excluded keys, the sum of the
        positive logits, and the number of positives (not differentiable).

    Example:
        >>> import torch
        >>> from headkit.ops import contrastive_lse
        >>> q = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
        >>> lab = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> lse, pos, cnt = contrastive_lse(q, q, lab, lab, torch.arange(6), 0.1)
        >>> cnt.tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    cnt: Tensor
    lse, pos, cnt = _contrastive_lse_op(
        q, k, q_labels, k_labels, self_idx, 1.0 / temperature, need_pos
    )
    return lse, pos, cnt


# ----------------------------------------------------------------------------- checks


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise HeadkitError(f"temperature must be a positive float, got {temperature!r}")
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise HeadkitError(f"temperature must be a positive finite float, got {temperature!r}")
    return t


def _check_embeddings(name: str, z: Tensor, ndim: int = 2) -> None:
    if not isinstance(z, Tensor):
        raise HeadkitError(f"{name} must be a tensor, got {type(z).__name__}")
    if z.dim() != ndim:
        want = "(B, D)" if ndim == 2 else "(B, V, D)"
        raise HeadkitError(f"{name} must have shape {want}, got {fmt_shape(z.shape)}")
    if not z.dtype.is_floating_point:
        raise HeadkitError(f"{name} must be a floating tensor, got dtype {z.dtype}")
    if z.shape[-1] == 0:
        raise HeadkitError(f"{name} has an empty feature dimension: {fmt_shape(z.shape)}")


def _normalized(z: Tensor) -> Tensor:
    return F.normalize(z.to(compute_dtype(z.dtype)), dim=-1)


def _out(loss: Tensor, like: Tensor) -> Tensor:
    return loss if like.dtype in (torch.float16, torch.bfloat16) else loss.to(like.dtype)


# ----------------------------------------------------------------------------- distributed


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of this rank's slice."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> tuple[Tensor, ...]:
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: Tensor) -> Tensor:
        g = torch.stack(grads)
        dist.all_reduce(g)
        return g[dist.get_rank()]


def _gather(x: Tensor) -> Tensor:
    sizes = [
        torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())
    ]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    got = [int(s) for s in sizes]
    if len(set(got)) != 1:
        raise HeadkitError(f"gather_distributed needs the same batch size on every rank, got {got}")
    return torch.cat(_GatherWithGrad.apply(x), 0)


def _global_mean(local_sum: Tensor, local_count: int, world: int) -> Tensor:
    """Local mean whose value is the mean over all ranks (gradients stay the local mean's)."""
    local = local_sum / local_count
    if world == 1:
        return local
    total = local_sum.detach().clone()
    dist.all_reduce(total)
    return local + (total / (local_count * world) - local.detach())


# ----------------------------------------------------------------------------- losses


def nt_xent(
    z0: Tensor, z1: Tensor, temperature: float = 0.5, *, gather_distributed: bool = False
) -> Tensor:
    """SimCLR's NT-Xent loss over two views, without the (2N, 2N) similarity matrix.

    Equal in value and gradients to ``lightly.loss.NTXentLoss(temperature,
    memory_bank_size=0)``: both views are L2-normalised inside; each of the 2N anchors has its
    other view as positive and the 2N - 2 remaining embeddings as negatives; the result is the
    mean cross-entropy (Chen et al. 2020, arXiv 2002.05709). Memory is O(N * tile) instead of
    O(N^2). Half-precision inputs are computed in float32 and give a float32 loss.

    With ``gather_distributed=True`` under ``torch.distributed``, negatives come from every
    rank. The returned value is the loss of the global batch (equal on every rank), and the
    gradients are lightly's (each rank's embeddings receive the gradient of every rank's
    anchors), so that DDP's gradient averaging gives exactly the gradient of one process on the
    concatenated batch.

    Args:
        z0: ``(N, D)`` embeddings of the first view.
        z1: ``(N, D)`` embeddings of the second view.
        temperature: softmax temperature, > 0.
        gather_distributed: gather negatives across ranks.

    Returns:
        Scalar loss.

    Raises:
        HeadkitError: shapes differ or are not 2-D, N < 2, temperature <= 0.

    Example:
        >>> import torch
        >>> from headkit.ops import nt_xent
        >>> z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
        >>> nt_xent(z0, z1).shape
        torch.Size([])
    """
    t = _check_temperature(temperature)
    _check_embeddings("z0", z0)
    _check_embeddings("z1", z1)
    if z0.shape != z1.shape:
        raise HeadkitError(
            f"z0 and z1 must have the same shape (N, D), got {fmt_shape(z0.shape)} and {fmt_shape(z1.shape)}"
        )
    n = z0.shape[0]
    world, rank = _world() if gather_distributed else (1, 0)
    if n * world < 2:
        raise HeadkitError(f"nt_xent needs a batch of at least 2 samples, got N={n}")
    q0, q1 = _normalized(z0), _normalized(z1)
    if world > 1:
        k0, k1 = _gather(q0), _gather(q1)
    else:
        k0, k1 = q0, q1
    m = n * world
    gi = torch.arange(n, device=z0.device) + rank * n
    q = torch.cat([q0, q1])
    k = torch.cat([k0, k1])
    labels_k = torch.arange(m, device=z0.device).repeat(2)
    labels_q = gi.repeat(2)
    self_idx = torch.cat([gi, gi + m])
    lse, _, _ = contrastive_lse(q, k, labels_q, labels_k, self_idx, t, need_pos=False)
    pos = (q0 * q1).sum(1).div(t).repeat(2)
    return _out(_global_mean((lse - pos).sum(), 2 * n, world), z0)


def sup_con(z: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss, the "L_out" form of Khosla et al. 2020 (arXiv 2004.11362).

    Every one of the ``B * V`` views (L2-normalised inside) is an anchor; its positives are the
    other views whose sample has the same label; its denominator runs over all other views:
    ``loss_a = log sum_{j != a} exp(s_aj / T) - mean_{p in P(a)} s_ap / T``. Anchors without
    any positive are left out of the mean. O(B * V * tile) memory.

    Args:
        z: ``(B, V, D)`` embeddings, V >= 1 views per sample (``(B, D)`` is read as V = 1).
        labels: ``(B,)`` integer class labels.
        temperature: softmax temperature, > 0.

    Returns:
        Scalar loss.

    Raises:
        HeadkitError: bad shapes, labels not an integer ``(B,)`` tensor, temperature <= 0, or
            no anchor has a positive (V = 1 and all labels distinct).

    Example:
        >>> import torch
        >>> from headkit.ops import sup_con
        >>> z = torch.randn(6, 2, 16)
        >>> float(sup_con(z, torch.tensor([0, 0, 1, 1, 2, 2]))) > 0
        True
    """
    t = _check_temperature(temperature)
    if isinstance(z, Tensor) and z.dim() == 2:
        z = z.unsqueeze(1)
    _check_embeddings("z", z, ndim=3)
    b, v, _ = z.shape
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != b:
        got = fmt_shape(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise HeadkitError(
            f"labels must have shape ({b},) to match z {fmt_shape(z.shape)}, got {got}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise HeadkitError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if b * v < 2:
        raise HeadkitError(f"sup_con needs at least 2 views in the batch, got B={b}, V={v}")
    q = _normalized(z).reshape(b * v, -1)
    lab = labels.to(device=z.device, dtype=torch.long).repeat_interleave(v)
    idx = torch.arange(b * v, device=z.device)
    lse, pos, cnt = contrastive_lse(q, q, lab, lab, idx, t)
    has = cnt > 0
    if v == 1 and not torch.compiler.is_compiling() and not bool(has.any()):
        raise HeadkitError(
            "sup_con: no anchor has a positive (V = 1 view and every label distinct); "
            "pass V >= 2 views or batches with repeated labels"
        )
    per = torch.where(has, lse - pos / cnt.clamp_min(1), 0.0)
    loss = per.sum() / has.sum().clamp_min(1)
    return _out(loss, z)


def info_nce(
    query: Tensor, key: Tensor, temperature: float = 0.1, *, negatives: Tensor | None = None
) -> Tensor:
    """Cross-view InfoNCE (one direction), normalising inside.

    Without ``negatives`` the targets sit on the diagonal and every other key of the batch is a
    negative, as in CLIP's one-directional loss (Oord et al. 2018, arXiv 1807.03748). With a bank
    ``negatives`` the negatives are the bank only, as in MoCo (arXiv 1911.05722) and lightly's
    ``NTXentLoss`` with a memory bank. Never builds the (N, N) or (N, K) matrix.

    Args:
        query: ``(N, D)`` queries.
        key: ``(N, D)`` keys; key i is the positive of query i.
        temperature: softmax temperature, > 0.
        negatives: optional ``(K, D)`` bank of negatives.

    Returns:
        Scalar loss (mean over queries).

    Raises:
        HeadkitError: shapes do not match, N < 2 without a bank, temperature <= 0.

    Example:
        >>> import torch
        >>> from headkit.ops import info_nce
        >>> q, k, bank = torch.randn(8, 16), torch.randn(8, 16), torch.randn(64, 16)
        >>> info_nce(q, k, negatives=bank).shape
        torch.Size([])
    """
    t = _check_temperature(temperature)
    _check_embeddings("query", query)
    _check_embeddings("key", key)
    if query.shape != key.shape:
        raise HeadkitError(
            f"query and key must have the same shape (N, D), got {fmt_shape(query.shape)} and {fmt_shape(key.shape)}"
        )
    n = query.shape[0]
    qn, kn = _normalized(query), _normalized(key)
    pos = (qn * kn).sum(1) / t
    if negatives is None:
        if n < 2:
            raise HeadkitError(f"info_nce without negatives needs N >= 2 queries, got N={n}")
        lab = torch.arange(n, device=query.device)
        none = torch.full((n,), -1, device=query.device, dtype=torch.long)
        lse, _, _ = contrastive_lse(qn, kn, lab, lab, none, t, need_pos=False)
    else:
        _check_embeddings("negatives", negatives)
        if negatives.shape[1] != query.shape[1] or negatives.shape[0] == 0:
            raise HeadkitError(
                f"negatives must have shape (K, {query.shape[1]}) with K >= 1, got {fmt_shape(negatives.shape)}"
            )
        bn = _normalized(negatives).to(qn.dtype)
        ql = torch.zeros(n, device=query.device, dtype=torch.long)
        bl = torch.ones(bn.shape[0], device=query.device, dtype=torch.long)
        none = torch.full((n,), -1, device=query.device, dtype=torch.long)
        lse_bank, _, _ = contrastive_lse(qn, bn, ql, bl, none, t, need_pos=False)
        lse = torch.logaddexp(pos, lse_bank)
    return _out((lse - pos).mean(), query)


class NTXentLoss(nn.Module):
    """Module form of `headkit.ops.nt_xent`; a drop-in for lightly's ``NTXentLoss``.

    Args:
        temperature: softmax temperature, > 0.
        gather_distributed: gather negatives across ranks.

    Shapes:
        ``forward(z0 (N, D), z1 (N, D)) -> ()``.

    Example:
        >>> import torch
        >>> from headkit import NTXentLoss
        >>> NTXentLoss(temperature=0.2)(torch.randn(4, 8), torch.randn(4, 8)).dim()
        0
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        """Loss of two ``(N, D)`` views."""
        return nt_xent(z0, z1, self.temperature, gather_distributed=self.gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"


class SupConLoss(nn.Module):
    """Module form of `headkit.ops.sup_con` (Khosla et al. 2020, arXiv 2004.11362).

    Args:
        temperature: softmax temperature, > 0.

    Shapes:
        ``forward(z (B, V, D), labels (B,)) -> ()``.

    Example:
        >>> import torch
        >>> from headkit import SupConLoss
        >>> SupConLoss()(torch.randn(4, 2, 8), torch.tensor([0, 1, 0, 1])).dim()
        0
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        """Loss of ``(B, V, D)`` embeddings with ``(B,)`` labels."""
        return sup_con(z, labels, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class InfoNCELoss(nn.Module):
    """Module form of `headkit.ops.info_nce`.

    Args:
        temperature: softmax temperature, > 0.

    Shapes:
        ``forward(query (N, D), key (N, D), negatives (K, D) | None) -> ()``.

    Example:
        >>> import torch
        >>> from headkit import InfoNCELoss
        >>> InfoNCELoss()(torch.randn(4, 8), torch.randn(4, 8)).dim()
        0
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, query: Tensor, key: Tensor, negatives: Tensor | None = None) -> Tensor:
        """Loss of ``(N, D)`` queries against their keys (and an optional bank)."""
        return info_nce(query, key, self.temperature, negatives=negatives)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
