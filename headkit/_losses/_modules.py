"""Module forms of the losses; `NTXentLoss` is a drop-in for lightly's."""

from __future__ import annotations

from torch import Tensor, nn

from .. import _dist
from .._errors import HeadkitError
from ._bank import MemoryBank, parse_bank_size
from ._functional import (
    _check_pair,
    bank_loss,
    check_temperature,
    info_nce,
    normalized_pair,
    nt_xent,
    sup_con,
    with_call,
)

__all__ = ["InfoNCELoss", "NTXentLoss", "SupConLoss"]


def _set_temperature(module: nn.Module, temperature: float | Tensor) -> None:
    """Store a temperature: a float, a registered `nn.Parameter` (learnable), a tensor that
    requires grad (used as given), or a constant tensor (a buffer, so it moves with the module)."""
    t = check_temperature(temperature)
    if isinstance(temperature, nn.Parameter):
        module.temperature = temperature
    elif isinstance(t, Tensor) and isinstance(temperature, Tensor) and temperature.requires_grad:
        object.__setattr__(module, "temperature", temperature)
    elif isinstance(t, Tensor):
        module.register_buffer("temperature", t.detach().clone())
    else:
        setattr(module, "temperature", t)  # noqa: B010 (a float attribute of a Module)


def _repr_t(t: object) -> str:
    if isinstance(t, Tensor):
        return f"temperature=<{'learnable ' if t.requires_grad else ''}tensor>"
    return f"temperature={t}"


class NTXentLoss(nn.Module):
    """Module form of `headkit.ops.nt_xent`; a drop-in for lightly's ``NTXentLoss``.

    Same arguments and semantics as ``lightly.loss.NTXentLoss`` (1.6.0): with
    ``memory_bank_size=(size, dim)`` the loss is MoCo's: the negatives of each ``out0`` are the
    bank only, the bank holds the L2-normalised ``out1`` of past steps (a `headkit.MemoryBank`,
    ``self.memory_bank``, initialised from the global RNG at construction exactly like
    lightly's, so equal seeds give equal values across steps) and is updated after reading,
    only when ``out0`` requires grad. ``memory_bank_size=0`` is SimCLR's in-batch loss.

    Args:
        temperature: a number with ``abs >= 1e-8``, or a one-element tensor; an
            `nn.Parameter` is registered (learnable), another tensor that requires grad is
            used as given.
        memory_bank_size: 0 (no bank) or ``(size, dim)``; a bare positive int raises, as in
            lightly 1.6.0.
        gather_distributed: negatives from every rank (without a bank); with a bank, the keys
            of every rank are enqueued. Raises `ValueError` when ``torch.distributed`` is not
            available, as lightly.

    Shapes:
        ``forward(out0 (N, D), out1 (N, D)) -> ()``.

    Example:
        >>> import torch
        >>> from headkit import NTXentLoss
        >>> NTXentLoss(temperature=0.2)(torch.randn(4, 8), torch.randn(4, 8)).dim()
        0
        >>> moco = NTXentLoss(memory_bank_size=(64, 8))
        >>> moco(torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)).dim()
        0
    """

    temperature: float | Tensor

    def __init__(
        self,
        temperature: float | Tensor = 0.5,
        memory_bank_size: int | tuple[int, int] = 0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        size = parse_bank_size(memory_bank_size)
        self.memory_bank: MemoryBank | None = (
            MemoryBank(size, gather_distributed=gather_distributed) if size is not None else None
        )
        _set_temperature(self, temperature)
        if gather_distributed:
            _dist.require_available()
        self.gather_distributed = bool(gather_distributed)

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        """Loss of two ``(N, D)`` views."""
        try:
            return self._loss(out0, out1)
        except HeadkitError as err:
            raise with_call(err, out0=out0, out1=out1) from None

    def _loss(self, out0: Tensor, out1: Tensor) -> Tensor:
        if self.memory_bank is None:
            _check_pair("out0", out0, "out1", out1)  # the module's names in the message
            return nt_xent(out0, out1, self.temperature, gather_distributed=self.gather_distributed)
        t = check_temperature(self.temperature)
        z0, z1 = _check_pair("out0", out0, "out1", out1)
        world, _ = _dist.world(self.gather_distributed)
        q0, q1 = normalized_pair(z0, z1)
        negatives = self.memory_bank(q1, update=z0.requires_grad)
        return bank_loss(q0, q1, negatives, t, world, z0, z1)

    def extra_repr(self) -> str:
        return f"{_repr_t(self.temperature)}, gather_distributed={self.gather_distributed}"


class SupConLoss(nn.Module):
    """Module form of `headkit.ops.sup_con` (Khosla et al. 2020, arXiv 2004.11362).

    Also takes lightly's call ``loss(out0, out1, labels=None)`` (two ``(B, D)`` views) and its
    ``rescale`` argument (the loss times the temperature); unlike lightly's ``SupConLoss``,
    ``rescale`` defaults to False (the paper's loss) and the temperature to 0.1.

    Args:
        temperature: a number with ``abs >= 1e-8``, or a one-element (learnable) tensor.
        gather_distributed: contrast against the views and labels of every rank.
        rescale: multiply the loss by the temperature.

    Shapes:
        ``forward(z (B, V, D), labels (B,) | None) -> ()`` or
        ``forward(out0 (B, D), out1 (B, D), labels (B,) | None) -> ()``.

    Example:
        >>> import torch
        >>> from headkit import SupConLoss
        >>> SupConLoss()(torch.randn(4, 2, 8), torch.tensor([0, 1, 0, 1])).dim()
        0
        >>> SupConLoss()(torch.randn(3, 8), torch.randn(3, 8), torch.Tensor([0, 1, 1])).dim()
        0
    """

    temperature: float | Tensor

    def __init__(
        self,
        temperature: float | Tensor = 0.1,
        gather_distributed: bool = False,
        rescale: bool = False,
    ) -> None:
        super().__init__()
        _set_temperature(self, temperature)
        if gather_distributed:
            _dist.require_available()
        self.gather_distributed = bool(gather_distributed)
        self.rescale = bool(rescale)

    def forward(
        self, z: Tensor, labels: Tensor | None = None, out1_labels: Tensor | None = None
    ) -> Tensor:
        """Loss of ``(B, V, D)`` embeddings with ``(B,)`` labels (or lightly's two views)."""
        views = (
            isinstance(z, Tensor)
            and isinstance(labels, Tensor)
            and z.dim() == 2
            and labels.dim() == 2
            and labels.dtype.is_floating_point
            and (labels.shape == z.shape or labels.shape[-1] != 1)  # (B, 1) floats: labels
        )
        names = (
            {"out0": z, "out1": labels, "labels": out1_labels}
            if views or out1_labels is not None
            else {"z": z, "labels": labels}
        )
        try:
            return self._loss(z, labels, out1_labels, views)
        except HeadkitError as err:
            raise with_call(err, **names) from None

    def _loss(
        self, z: Tensor, labels: Tensor | None, out1_labels: Tensor | None, views: bool
    ) -> Tensor:
        if views:
            assert labels is not None
            _check_pair("out0", z, "out1", labels)
            z, labels = _stack(z, labels), out1_labels
        elif out1_labels is not None:
            raise HeadkitError(
                "SupConLoss takes (z, labels) or lightly's (out0, out1, labels) with two (B, D) "
                "views of the same shape"
            )
        return sup_con(
            z,
            labels,
            self.temperature,
            gather_distributed=self.gather_distributed,
            rescale=self.rescale,
        )

    def extra_repr(self) -> str:
        return (
            f"{_repr_t(self.temperature)}, gather_distributed={self.gather_distributed}, "
            f"rescale={self.rescale}"
        )


def _stack(a: Tensor, b: Tensor) -> Tensor:
    import torch

    return torch.stack([a, b], 1)


class InfoNCELoss(nn.Module):
    """Module form of `headkit.ops.info_nce` (CLIP's one direction; MoCo with a bank).

    Args:
        temperature: a number with ``abs >= 1e-8``, or a one-element (learnable) tensor.
        gather_distributed: without a bank, the keys of every rank are candidates.

    Shapes:
        ``forward(query (N, D), key (N, D), negatives (K, D) | None) -> ()``.

    Example:
        >>> import torch
        >>> from headkit import InfoNCELoss, MemoryBank
        >>> InfoNCELoss()(torch.randn(4, 8), torch.randn(4, 8)).dim()
        0
        >>> bank = MemoryBank(32, 8)
        >>> InfoNCELoss()(torch.randn(4, 8), k := torch.randn(4, 8), negatives=bank(k)).dim()
        0
    """

    temperature: float | Tensor

    def __init__(self, temperature: float | Tensor = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        _set_temperature(self, temperature)
        if gather_distributed:
            _dist.require_available()
        self.gather_distributed = bool(gather_distributed)

    def forward(self, query: Tensor, key: Tensor, negatives: Tensor | None = None) -> Tensor:
        """Loss of ``(N, D)`` queries against their keys (and an optional bank)."""
        return info_nce(
            query,
            key,
            self.temperature,
            negatives=negatives,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return f"{_repr_t(self.temperature)}, gather_distributed={self.gather_distributed}"
