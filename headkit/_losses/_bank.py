"""The FIFO memory bank of negatives (MoCo), with lightly 1.6.0's semantics."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _dist
from .._errors import HeadkitError, fmt_shape

__all__ = ["MemoryBank", "parse_bank_size"]

# banks by handle, so that the enqueue op (opaque to torch.compile) can advance a bank's Python
# pointer at run time without dynamo guarding on it
_BANKS: weakref.WeakValueDictionary[int, MemoryBank] = weakref.WeakValueDictionary()
_HANDLES = itertools.count()


def parse_bank_size(size: object, dim: int | None = None) -> tuple[int, int] | None:
    """``(size, dim)`` of a bank, None for 0 (no bank); lightly 1.6.0's rules and errors.

    Accepted: ``0``; ``(size, dim)``; an int ``size`` with ``dim`` given separately. A bare
    positive int without ``dim`` is rejected, as by lightly 1.6.0 (the feature dimension cannot
    be guessed before the first batch, and guessing it breaks distributed training).
    """
    if isinstance(size, bool):
        raise HeadkitError(f"memory bank size must be an int or a (size, dim) tuple, got {size!r}")
    if isinstance(size, int):
        if size < 0:
            raise HeadkitError(
                f"Illegal memory bank size {size}, all entries must be non-negative."
            )
        if size == 0:
            return None
        if dim is None:
            raise HeadkitError(
                f"Memory bank size 'size={size}' does not specify the feature dimension. Set "
                f"it with 'size=({size}, dim)', or pass 'size=0' to disable the memory bank."
            )
        size = (size, dim)
    if not isinstance(size, Sequence) or isinstance(size, str):
        raise HeadkitError(
            f"memory bank size must be an int or a (size, dim) tuple, got {type(size).__name__}"
        )
    entries = tuple(size)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in entries):
        raise HeadkitError(f"Illegal memory bank size {size}, entries must be ints.")
    if any(x < 0 for x in entries):
        raise HeadkitError(f"Illegal memory bank size {size}, all entries must be non-negative.")
    if entries == (0,):
        return None
    if len(entries) != 2:
        raise HeadkitError(
            f"Illegal memory bank size {size}, expected a (num_features, dim) tuple, or "
            "'size=0' to disable the memory bank."
        )
    if entries[0] == 0:
        return None
    if entries[1] == 0:
        raise HeadkitError(f"Illegal memory bank size {size}: the feature dimension is 0.")
    return entries[0], entries[1]


class MemoryBank(nn.Module):
    """A FIFO queue of past keys used as negatives (MoCo, arXiv 1911.05722).

    Exactly lightly 1.6.0's ``MemoryBankModule``: the bank starts as ``size`` random unit
    vectors drawn from the global RNG at construction (``torch.randn((size, dim))``, then
    L2-normalised), is stored in float32 (``.double()`` etc. convert it) as a non-persistent
    buffer, and ``bank(keys)`` returns a detached copy of the bank *before* enqueueing
    ``keys``. The enqueue writes from the pointer on; when the pointer would reach the end,
    the remaining slots are filled, the rest of the batch is dropped and the pointer wraps to
    0. Differences: the bank moves to the device of the keys on first use (so it lives where the
    embeddings are), the pointer is a Python int (no host synchronisation per step), and
    ``forward`` returns the ``(size, dim)`` negatives only.

    With ``gather_distributed=True`` under ``torch.distributed`` the keys of every rank are
    enqueued (in rank order), so every rank holds the same bank as one process on the global
    batch.

    Attributes ``size`` (the ``(num_features, dim)`` tuple), ``bank`` and ``bank_ptr`` read as
    lightly's; ``ptr`` is the pointer as an int.

    Args:
        size: number of stored keys, or lightly's ``(size, dim)`` tuple.
        dim: feature dimension D (required when ``size`` is an int).
        gather_distributed: enqueue the keys of every rank.

    Shapes:
        ``forward(keys (B, D), update=True) -> (size, D)``.

    Example:
        >>> import torch
        >>> from headkit import InfoNCELoss, MemoryBank
        >>> bank = MemoryBank(64, 16)
        >>> q, k = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> loss = InfoNCELoss(0.2)(q, k, negatives=bank(k))  # k is enqueued after the read
        >>> loss.backward()
        >>> bank.ptr
        8
    """

    bank: Tensor

    def __init__(
        self,
        size: int | tuple[int, int],
        dim: int | None = None,
        *,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        parsed = parse_bank_size(size, dim)
        if parsed is None:
            raise HeadkitError(f"MemoryBank needs size >= 1, got {size!r}")
        if isinstance(size, tuple) and dim is not None and dim != parsed[1]:
            raise HeadkitError(f"MemoryBank got size={size} and dim={dim}; give the dim once")
        if gather_distributed:
            _dist.require_available()
        self.size = parsed  # (num_features, dim), as lightly's MemoryBankModule.size
        self.num_features, self.dim = parsed
        self.gather_distributed = bool(gather_distributed)
        # lightly's initialisation, the same draw from the global RNG
        bank = F.normalize(torch.randn(parsed).to(torch.float32), dim=-1)
        self.register_buffer("bank", bank, persistent=False)
        self.ptr = 0
        self._handle = next(_HANDLES)
        _BANKS[self._handle] = self

    def forward(self, keys: Tensor, update: bool = True) -> Tensor:
        """Return the ``(size, D)`` negatives, then enqueue ``keys`` if ``update``."""
        if not isinstance(keys, Tensor) or keys.dim() != 2 or keys.shape[1] != self.dim:
            got = fmt_shape(keys.shape) if isinstance(keys, Tensor) else type(keys).__name__
            raise HeadkitError(f"MemoryBank expected keys of shape (B, {self.dim}), got {got}")
        if self.bank.device != keys.device:
            self.bank = self.bank.to(keys.device)
        negatives = self.bank.detach().clone()
        if update:
            self.enqueue(keys)
        return negatives

    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (B, D) at the pointer (gathered from every rank when distributed)."""
        if torch.compiler.is_compiling():
            _enqueue_op(self.bank, keys.detach(), self._handle)
        else:
            _enqueue(self, self.bank, keys)

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        self._handle = next(_HANDLES)  # a copy (deepcopy, pickle) is a bank of its own
        _BANKS[self._handle] = self

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, dim={self.dim}, ptr={self.ptr}, "
            f"gather_distributed={self.gather_distributed}"
        )

    @property
    def bank_ptr(self) -> Tensor:
        """lightly's ``bank_ptr``: the pointer as a one-element long tensor (CPU)."""
        return torch.tensor([self.ptr], dtype=torch.long)


@torch.no_grad()
def _enqueue(module: MemoryBank, bank: Tensor, keys: Tensor) -> None:
    """lightly's ``_dequeue_and_enqueue`` on ``bank``, advancing ``module.ptr``."""
    world, _ = _dist.world(module.gather_distributed)
    keys = keys.detach()
    if world > 1:
        keys = _dist.gather_nograd(keys.contiguous())
    b, ptr, k = keys.shape[0], module.ptr, module.num_features
    if ptr + b >= k:
        bank[ptr:] = keys[: k - ptr]
        module.ptr = 0
    else:
        bank[ptr : ptr + b] = keys
        module.ptr = ptr + b


@torch.library.custom_op("headkit::memory_bank_enqueue", mutates_args=("bank",))
def _enqueue_op(bank: Tensor, keys: Tensor, handle: int) -> None:
    _enqueue(_BANKS[handle], bank, keys)


@_enqueue_op.register_fake
def _(bank: Tensor, keys: Tensor, handle: int) -> None:
    return None
