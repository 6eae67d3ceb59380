"""The losses as functions: NT-Xent, supervised contrastive, InfoNCE."""

from __future__ import annotations

import math
import numbers

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .. import _dist
from .._errors import HeadkitError, fmt_shape
from .._kernels.backend import compute_dtype
from .._kernels.lse import lse

__all__ = [
    "Temperature",
    "bank_loss",
    "check_embeddings",
    "check_temperature",
    "info_nce",
    "normalized_pair",
    "nt_xent",
    "sup_con",
]

Temperature = float | Tensor


# ----------------------------------------------------------------------------- checks


def check_temperature(temperature: object) -> float | Tensor:
    """A temperature as lightly accepts it: finite with ``abs(t) >= 1e-8``.

    Floats, ints, numpy scalars and 0-d arrays become a float; a one-element floating tensor is
    kept as a 0-d tensor (differentiable: a learnable temperature). A tensor's value is checked
    only where reading it is free (a CPU tensor, not under ``torch.compile``).
    """
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1 or not temperature.dtype.is_floating_point:
            raise HeadkitError(
                "temperature must be a number or a one-element floating tensor, got a "
                f"{temperature.dtype} tensor of shape {fmt_shape(temperature.shape)}"
            )
        t = temperature.reshape(())
        if t.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_value(float(t.detach()), temperature)
        return t
    if isinstance(temperature, bool):
        raise HeadkitError(f"temperature must be a number, got {temperature!r}")
    if isinstance(temperature, numbers.Real) or (
        getattr(temperature, "ndim", None) == 0 and hasattr(temperature, "__float__")
    ):
        value = float(temperature)  # type: ignore[arg-type,unused-ignore]
        _check_value(value, temperature)
        return value
    raise HeadkitError(
        f"temperature must be a number or a one-element tensor, got {type(temperature).__name__}"
    )


def _check_value(value: float, given: object) -> None:
    if not math.isfinite(value) or abs(value) < 1e-8:
        raise HeadkitError(
            f"temperature must be finite with abs(temperature) >= 1e-8, got {given!r}"
        )


_CALL = "; the call got "


def describe(**inputs: object) -> str:
    """``out0 (4, 8), out1 (3, 8), labels (4,)``: every input of a call (None left out)."""
    parts = []
    for name, v in inputs.items():
        if v is None:
            continue
        if isinstance(v, Tensor):
            what = f"({int(v.shape[0])},)" if v.dim() == 1 else fmt_shape(v.shape)
        else:
            what = type(v).__name__
        parts.append(f"{name} {what}")
    return ", ".join(parts)


def with_call(err: HeadkitError, **inputs: object) -> HeadkitError:
    """``err`` naming every input of the call (the outermost call's names win)."""
    msg = str(err).split(_CALL, 1)[0]
    return HeadkitError(f"{msg}{_CALL}{describe(**inputs)}")


def check_embeddings(name: str, z: object, ndim: int = 2) -> Tensor:
    """Validate an embedding tensor of ``ndim`` dimensions."""
    if not isinstance(z, Tensor):
        raise HeadkitError(f"{name} must be a tensor, got {type(z).__name__}")
    if z.dim() != ndim:
        want = "(B, D)" if ndim == 2 else "(B, V, D)"
        raise HeadkitError(f"{name} must have shape {want}, got {fmt_shape(z.shape)}")
    if not z.dtype.is_floating_point:
        raise HeadkitError(f"{name} must be a floating tensor, got dtype {z.dtype}")
    if z.shape[-1] == 0:
        raise HeadkitError(f"{name} has an empty feature dimension: {fmt_shape(z.shape)}")
    return z


def _check_pair(na: str, a: object, nb: str, b: object) -> tuple[Tensor, Tensor]:
    ta, tb = check_embeddings(na, a), check_embeddings(nb, b)
    if ta.shape != tb.shape:
        raise HeadkitError(
            f"{na} and {nb} must have the same shape (N, D), got {fmt_shape(ta.shape)} and "
            f"{fmt_shape(tb.shape)}"
        )
    if ta.device != tb.device:
        raise HeadkitError(f"{na} and {nb} are on different devices: {ta.device} and {tb.device}")
    if ta.shape[0] == 0:
        raise HeadkitError(f"{na} and {nb} are empty: shape {fmt_shape(ta.shape)}")
    return ta, tb


def check_labels(labels: object, b: int, device: torch.device) -> Tensor:
    """``(B,)`` integer labels as int64 on ``device``; integer-valued floats are accepted."""
    if not isinstance(labels, Tensor):
        raise HeadkitError(f"labels must be a tensor of shape ({b},), got {type(labels).__name__}")
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 1 or labels.shape[0] != b:
        raise HeadkitError(
            f"labels must have shape ({b},) to match the {b} samples, got {fmt_shape(labels.shape)}"
        )
    if labels.is_complex():
        raise HeadkitError(f"labels must be integer class labels, got dtype {labels.dtype}")
    if labels.dtype.is_floating_point and not torch.compiler.is_compiling():
        bad = ~torch.isfinite(labels) | (labels != torch.round(labels))
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise HeadkitError(
                f"labels must be integer class labels; got {labels.dtype} labels with the "
                f"non-integer value {labels[i].item()!r} at index {i}"
            )
    return labels.to(device=device, dtype=torch.long)


def _normalized(z: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return F.normalize(z.to(dtype or compute_dtype(z.dtype)), dim=-1)


def normalized_pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Both L2-normalised in their common compute dtype (half types computed in float32)."""
    dt = torch.promote_types(compute_dtype(a.dtype), compute_dtype(b.dtype))
    return _normalized(a, dt), _normalized(b, dt)


def _dot(z: Tensor) -> str:
    """Dot-product dtype of the Triton kernels: a half-precision input's own type."""
    return {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(z.dtype, "")


def _out(loss: Tensor, like: Tensor, *more: Tensor) -> Tensor:
    """The loss in the inputs' (promoted) dtype; float32 for half-precision inputs."""
    dt = like.dtype
    for m in more:
        dt = torch.promote_types(dt, m.dtype)
    return loss if dt in (torch.float16, torch.bfloat16) else loss.to(dt)


def _scaled(q: Tensor, t: float | Tensor) -> tuple[Tensor, float]:
    """Anchors and the float inverse temperature the op applies (1 for a tensor temperature)."""
    if isinstance(t, Tensor):
        return q * t.reciprocal().to(device=q.device, dtype=q.dtype), 1.0
    return q, 1.0 / t


def _zero(a: Tensor, b: Tensor, t: float | Tensor) -> Tensor:
    """Lightly's loss of a single pair: exactly 0, with zero gradients, graph connected."""
    s = (a * b).sum() * 0.0
    return s * t if isinstance(t, Tensor) else s


# ----------------------------------------------------------------------------- losses


def nt_xent(
    z0: Tensor, z1: Tensor, temperature: float | Tensor = 0.5, *, gather_distributed: bool = False
) -> Tensor:
    """SimCLR's NT-Xent loss over two views, without the (2N, 2N) similarity matrix.

    Equal in value and gradients to ``lightly.loss.NTXentLoss(temperature,
    memory_bank_size=0)``: both views are L2-normalised inside; each of the 2N anchors has its
    other view as positive and the 2N - 2 remaining embeddings as negatives; the result is the
    mean cross-entropy (Chen et al. 2020, arXiv 2002.05709). Memory is O(N * tile) instead of
    O(N^2). Half-precision inputs are normalised in float32 and give a float32 loss. A batch of
    one pair gives 0 with zero gradients, as lightly.

    With ``gather_distributed=True`` under ``torch.distributed``, negatives come from every
    rank. The returned value is the loss of the global batch (equal on every rank), and the
    gradients are lightly's (each rank's embeddings receive the gradient of every rank's
    anchors), so that DDP's gradient averaging gives exactly the gradient of one process on the
    concatenated batch.

    Args:
        z0: ``(N, D)`` embeddings of the first view.
        z1: ``(N, D)`` embeddings of the second view.
        temperature: softmax temperature: a number with ``abs >= 1e-8``, or a one-element
            tensor (a learnable temperature receives its gradient).
        gather_distributed: gather negatives across ranks.

    Returns:
        Scalar loss.

    Raises:
        HeadkitError: shapes differ or are not 2-D, bad temperature, ``gather_distributed``
            without ``torch.distributed``.

    Example:
        >>> import torch
        >>> from headkit.ops import nt_xent
        >>> z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
        >>> nt_xent(z0, z1).shape
        torch.Size([])
    """
    try:
        t = check_temperature(temperature)
        z0, z1 = _check_pair("z0", z0, "z1", z1)
    except HeadkitError as err:
        raise with_call(err, z0=z0, z1=z1) from None
    world, rank = _dist.world(gather_distributed)
    n = z0.shape[0]
    q0, q1 = normalized_pair(z0, z1)
    if world == 1 and n == 1:
        return _out(_zero(q0, q1, t), z0, z1)
    q = torch.cat([q0, q1])
    if world > 1:
        k0, info = _dist.gather(q0, rank)
        k1, _ = _dist.gather(q1, rank)
        k, m, off = torch.cat([k0, k1]), info.total, info.offset
    else:
        k, m, off = q, n, 0
    gi = torch.arange(n, device=q.device) + off
    qs, inv_t = _scaled(q, t)
    lse_, pos, _ = lse(
        qs,
        k,
        self_idx=torch.cat([gi, gi + m]),
        pos_idx=torch.cat([gi + m, gi]),
        inv_t=inv_t,
        dot=_dot(z0),
    )
    return _out(_dist.global_mean((lse_ - pos).sum(), float(2 * m), world), z0, z1)


def bank_loss(
    q: Tensor,
    k: Tensor,
    bank: Tensor,
    t: float | Tensor,
    world: int,
    like: Tensor,
    like2: Tensor | None = None,
) -> Tensor:
    """MoCo's loss: the positive key against a bank of negatives (inputs already normalised)."""
    qs, inv_t = _scaled(q, t)
    pos = (q * k).sum(1)
    pos = pos * inv_t if not isinstance(t, Tensor) else pos / t.to(device=q.device, dtype=q.dtype)
    lse_bank, _, _ = lse(qs, bank.to(device=q.device, dtype=q.dtype), inv_t=inv_t, dot=_dot(like))
    per = torch.logaddexp(pos, lse_bank) - pos
    count: Tensor | float = float(q.shape[0])
    if world > 1:
        count = torch.full((), float(q.shape[0]), device=q.device)  # a fill: no host copy
        dist.all_reduce(count)
    return _out(
        _dist.global_mean(per.sum(), count, world), like, *([] if like2 is None else [like2])
    )


def info_nce(
    query: Tensor,
    key: Tensor,
    temperature: float | Tensor = 0.1,
    *,
    negatives: Tensor | None = None,
    gather_distributed: bool = False,
) -> Tensor:
    """Cross-view InfoNCE (one direction), normalising inside.

    Without ``negatives`` the targets sit on the diagonal and every other key of the batch is a
    negative, as in CLIP's one-directional loss (Oord et al. 2018, arXiv 1807.03748). With a bank
    ``negatives`` the negatives are the bank only, as in MoCo (arXiv 1911.05722) and lightly's
    ``NTXentLoss`` with a memory bank (see `headkit.MemoryBank`). Never builds the (N, N) or
    (N, K) matrix. A single pair without a bank gives 0 with zero gradients.

    With ``gather_distributed=True`` and no bank, the keys of every rank are the candidates of
    every query; the value is the loss of the global batch on every rank and the gradients are
    DDP-ready (see `nt_xent`). With a bank, only the value is averaged over ranks.

    Args:
        query: ``(N, D)`` queries.
        key: ``(N, D)`` keys; key i is the positive of query i.
        temperature: softmax temperature (a number, or a one-element tensor that may be
            learnable, e.g. ``logit_scale.exp().reciprocal()``).
        negatives: optional ``(K, D)`` bank of negatives.
        gather_distributed: gather keys across ranks.

    Returns:
        Scalar loss (mean over queries).

    Raises:
        HeadkitError: shapes do not match, bad temperature.

    Example:
        >>> import torch
        >>> from headkit.ops import info_nce
        >>> q, k, bank = torch.randn(8, 16), torch.randn(8, 16), torch.randn(64, 16)
        >>> info_nce(q, k, negatives=bank).shape
        torch.Size([])
    """
    try:
        t = check_temperature(temperature)
        query_, key_ = _check_pair("query", query, "key", key)
        bank = None if negatives is None else check_embeddings("negatives", negatives)
        if bank is not None and (bank.shape[1] != query_.shape[1] or bank.shape[0] == 0):
            raise HeadkitError(
                f"negatives must have shape (K, {query_.shape[1]}) with K >= 1, got "
                f"{fmt_shape(bank.shape)}"
            )
    except HeadkitError as err:
        raise with_call(err, query=query, key=key, negatives=negatives) from None
    query, key = query_, key_
    world, rank = _dist.world(gather_distributed)
    n = query.shape[0]
    qn, kn = normalized_pair(query, key)
    if bank is not None:
        return bank_loss(qn, kn, _normalized(bank.to(qn.device), qn.dtype), t, world, query, key)
    if world == 1 and n == 1:
        return _out(_zero(qn, kn, t), query, key)
    if world > 1:
        kg, info = _dist.gather(kn, rank)
        total, off = info.total, info.offset
    else:
        kg, total, off = kn, n, 0
    qs, inv_t = _scaled(qn, t)
    lse_, pos, _ = lse(
        qs, kg, pos_idx=torch.arange(n, device=qn.device) + off, inv_t=inv_t, dot=_dot(query)
    )
    return _out(_dist.global_mean((lse_ - pos).sum(), float(total), world), query, key)


def sup_con(
    z: Tensor,
    labels: Tensor | None = None,
    temperature: float | Tensor = 0.1,
    *,
    gather_distributed: bool = False,
    rescale: bool = False,
) -> Tensor:
    """Supervised contrastive loss, the "L_out" form of Khosla et al. 2020 (arXiv 2004.11362).

    Every one of the ``B * V`` views (L2-normalised inside) is an anchor; its positives are the
    other views whose sample has the same label; its denominator runs over all other views:
    ``loss_a = log sum_{j != a} exp(s_aj / T) - mean_{p in P(a)} s_ap / T``. Anchors without
    any positive are left out of the mean. O(B * V * tile) memory. Without labels every sample
    is its own class (with two views: NT-Xent).

    Args:
        z: ``(B, V, D)`` embeddings, V >= 1 views per sample (``(B, D)`` is read as V = 1).
        labels: ``(B,)`` class labels: integers, or integer-valued floats (``torch.Tensor([0,
            1, 1])``); None: each sample its own class.
        temperature: softmax temperature (a number or a one-element, possibly learnable, tensor).
        gather_distributed: contrast against the views (and labels) of every rank.
        rescale: multiply the loss by the temperature (lightly's ``SupConLoss(rescale=True)``).

    Returns:
        Scalar loss.

    Raises:
        HeadkitError: bad shapes; labels not ``(B,)``, or with a non-integer value (named in
            the message); bad temperature; no anchor has a positive (V = 1 and all labels
            distinct; checked on CPU tensors, where it is free -- elsewhere the loss is NaN).

    Example:
        >>> import torch
        >>> from headkit.ops import sup_con
        >>> z = torch.randn(6, 2, 16)
        >>> float(sup_con(z, torch.tensor([0, 0, 1, 1, 2, 2]))) > 0
        True
    """
    given = z
    try:
        t = check_temperature(temperature)
        if isinstance(z, Tensor) and z.dim() == 2:
            z = z.unsqueeze(1)
        z = check_embeddings("z", z, ndim=3)
        b, v, d = z.shape
        lab = None if labels is None else check_labels(labels, b, z.device)
        world, rank = _dist.world(gather_distributed)
        if world == 1 and b * v < 2:
            raise HeadkitError(f"sup_con needs at least 2 views in the batch, got B={b}, V={v}")
        if b == 0:
            raise HeadkitError(f"sup_con got an empty batch: z of shape {fmt_shape(z.shape)}")
    except HeadkitError as err:
        raise with_call(err, z=given, labels=labels) from None
    q = _normalized(z).reshape(b * v, d)
    if world > 1:
        k, info = _dist.gather(q, rank)
        off = info.offset
        if lab is None:
            lab = torch.arange(b, device=z.device) + off // v
        rows = lab.repeat_interleave(v)
        k_rows = _dist.gather_nograd(rows, info)
    else:
        k, off = q, 0
        rows = (torch.arange(b, device=z.device) if lab is None else lab).repeat_interleave(v)
        k_rows = rows
    qs, inv_t = _scaled(q, t)
    lse_, pos, cnt = lse(
        qs,
        k,
        q_labels=rows,
        k_labels=k_rows,
        self_idx=torch.arange(b * v, device=z.device) + off,
        inv_t=inv_t,
        dot=_dot(z),
    )
    has = cnt > 0
    per = torch.where(has, lse_ - pos / cnt.clamp_min(1), 0.0)
    count = has.sum().to(per.dtype)
    if world > 1:
        count = count.clone()
        dist.all_reduce(count)
    elif v == 1 and z.device.type == "cpu" and not torch.compiler.is_compiling() and not count:
        raise HeadkitError(
            "sup_con: no anchor has a positive (V = 1 view and every label distinct); "
            "pass V >= 2 views or batches with repeated labels"
        )
    loss = _dist.global_mean(per.sum(), count, world)
    if rescale:
        loss = loss * t
    return _out(loss, z)


def contrastive_lse(
    q: Tensor,
    k: Tensor,
    q_labels: Tensor,
    k_labels: Tensor,
    self_idx: Tensor,
    temperature: float | Tensor,
    need_pos: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Tiled log-sum-exp and summed positive logits of ``q @ k.T / temperature``.

    Args:
        q: ``(A, D)`` anchors (float32 or float64).
        k: ``(K, D)`` keys, same dtype and device.
        q_labels: ``(A,)`` int64 anchor labels.
        k_labels: ``(K,)`` int64 key labels; key j is a positive of anchor a when the labels match.
        self_idx: ``(A,)`` int64, the key index excluded for each anchor (``-1``: none).
        temperature: a float, or a scalar tensor (differentiable: a learnable temperature
            receives its gradient).
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
    from .._losses._functional import check_temperature

    t = check_temperature(temperature)
    ql, kl = (q_labels, k_labels) if need_pos else (None, None)
    if isinstance(t, Tensor):
        return lse(q * t.reciprocal().to(q.dtype), k, q_labels=ql, k_labels=kl, self_idx=self_idx)
    return lse(q, k, q_labels=ql, k_labels=kl, self_idx=self_idx, inv_t=1.0 / t)
