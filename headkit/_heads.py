"""MLP projection / prediction heads and the reweighting head."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import HeadkitError, closest, fmt_shape
from ._reweight import check_kappa, compute_dtype, reweight_normalize_log, reweight_weights

__all__ = ["PRESETS", "MLPHead", "ReweightHead"]

# Defaults of lightly 1.6.0's heads, expressed in MLPHead's arguments.
PRESETS: dict[str, dict[str, Any]] = {
    # SimCLR (arXiv 2002.05709): lightly.models.modules.SimCLRProjectionHead
    "simclr": dict(
        input_dim=2048,
        hidden_dim=2048,
        output_dim=128,
        num_layers=2,
        batch_norm=True,
        last_batch_norm=True,
    ),
    # MoCo v2 (arXiv 2003.04297): MoCoProjectionHead
    "moco_v2": dict(
        input_dim=2048,
        hidden_dim=2048,
        output_dim=128,
        num_layers=2,
        batch_norm=False,
        last_batch_norm=False,
    ),
    # BYOL (arXiv 2006.07733): BYOLProjectionHead / BYOLPredictionHead
    "byol_projection": dict(
        input_dim=2048,
        hidden_dim=4096,
        output_dim=256,
        num_layers=2,
        batch_norm=True,
        last_batch_norm=False,
    ),
    "byol_prediction": dict(
        input_dim=256,
        hidden_dim=4096,
        output_dim=256,
        num_layers=2,
        batch_norm=True,
        last_batch_norm=False,
    ),
    # SimSiam (arXiv 2011.10566): SimSiamProjectionHead / SimSiamPredictionHead
    "simsiam_projection": dict(
        input_dim=2048,
        hidden_dim=2048,
        output_dim=2048,
        num_layers=3,
        batch_norm=True,
        last_batch_norm=True,
        last_batch_norm_affine=False,
    ),
    "simsiam_prediction": dict(
        input_dim=2048,
        hidden_dim=512,
        output_dim=2048,
        num_layers=2,
        batch_norm=True,
        last_batch_norm=False,
    ),
    # Barlow Twins (arXiv 2103.03230): BarlowTwinsProjectionHead
    "barlow_twins": dict(
        input_dim=2048,
        hidden_dim=8192,
        output_dim=8192,
        num_layers=3,
        batch_norm=True,
        last_batch_norm=False,
    ),
    # VICReg (arXiv 2105.04906): VICRegProjectionHead
    "vicreg": dict(
        input_dim=2048,
        hidden_dim=8192,
        output_dim=8192,
        num_layers=3,
        batch_norm=True,
        last_batch_norm=False,
    ),
    # NNCLR (arXiv 2104.14548): NNCLRProjectionHead
    "nnclr": dict(
        input_dim=2048,
        hidden_dim=2048,
        output_dim=256,
        num_layers=3,
        batch_norm=True,
        last_batch_norm=True,
    ),
}


def _check_dim(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise HeadkitError(f"{name} must be a positive int, got {value!r}")
    return value


class MLPHead(nn.Module):
    """The generic projection / prediction MLP of self-supervised learning.

    ``num_layers`` linear layers: every layer but the last is ``Linear -> BatchNorm1d (if
    batch_norm) -> act_layer()``; the last is ``Linear -> BatchNorm1d (if last_batch_norm)``.
    The modules sit in one ``nn.Sequential`` called ``layers`` in the same order as in
    lightly's ``ProjectionHead``, so state dicts are interchangeable. Unlike lightly's heads it
    accepts token batches ``(B, T, D)`` (and any ``(..., D)``): batch norm then normalises each
    feature over all leading positions.

    Args:
        input_dim: D, size of the last input dimension.
        hidden_dim: width of the hidden layers.
        output_dim: size of the last output dimension.
        num_layers: number of linear layers (>= 1; 1 is a linear head).
        batch_norm: BatchNorm1d after each hidden linear layer.
        last_batch_norm: BatchNorm1d after the last linear layer.
        last_batch_norm_affine: whether that last BatchNorm1d has a scale and shift.
        act_layer: factory of the activation module (a class such as ``nn.ReLU`` or any
            zero-argument callable returning a module).
        bias: None means "bias only where no norm follows" (lightly's rule); True / False
            force it on / off for every linear layer.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Shapes:
        input ``(..., input_dim)`` -> output ``(..., output_dim)``.

    Example:
        >>> import torch
        >>> from headkit import MLPHead
        >>> head = MLPHead.preset("simclr", input_dim=512)
        >>> head(torch.randn(8, 512)).shape
        torch.Size([8, 128])
        >>> head(torch.randn(8, 5, 512)).shape  # token batch
        torch.Size([8, 5, 128])
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int = 2,
        *,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
        last_batch_norm_affine: bool = True,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        bias: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.input_dim = _check_dim("input_dim", input_dim)
        self.hidden_dim = _check_dim("hidden_dim", hidden_dim)
        self.output_dim = _check_dim("output_dim", output_dim)
        self.num_layers = _check_dim("num_layers", num_layers)
        if not callable(act_layer):
            raise HeadkitError(f"act_layer must be a module class or factory, got {act_layer!r}")
        if bias is not None and not isinstance(bias, bool):
            raise HeadkitError(f"bias must be None, True or False, got {bias!r}")
        self.batch_norm = bool(batch_norm)
        self.last_batch_norm = bool(last_batch_norm)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        layers: list[nn.Module] = []
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        for i in range(num_layers):
            last = i == num_layers - 1
            norm = last_batch_norm if last else batch_norm
            use_bias = (not norm) if bias is None else bias
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=use_bias, **factory))
            if norm:
                affine = last_batch_norm_affine if last else True
                layers.append(nn.BatchNorm1d(dims[i + 1], affine=affine, **factory))
            if not last:
                act = act_layer()
                if not isinstance(act, nn.Module):
                    raise HeadkitError(f"act_layer() must return an nn.Module, got {act!r}")
                layers.append(act)
        self.layers = nn.Sequential(*layers)

    @staticmethod
    def presets() -> list[str]:
        """Names of the presets, sorted.

        Example:
            >>> from headkit import MLPHead
            >>> "simclr" in MLPHead.presets()
            True
        """
        return sorted(PRESETS)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MLPHead:
        """Build the head of a published method with lightly 1.6.0's defaults.

        Args:
            name: one of `MLPHead.presets()`: ``simclr``, ``moco_v2``, ``byol_projection``,
                ``byol_prediction``, ``simsiam_projection``, ``simsiam_prediction``,
                ``barlow_twins``, ``vicreg``, ``nnclr``.
            **overrides: any `MLPHead` argument, e.g. ``input_dim=512``.

        Returns:
            The head; it matches the lightly head of the same name layer for layer.

        Raises:
            HeadkitError: unknown name (the message lists the known ones).

        Example:
            >>> from headkit import MLPHead
            >>> MLPHead.preset("byol_prediction").output_dim
            256
        """
        if name not in PRESETS:
            near = closest(name, PRESETS)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise HeadkitError(
                f"unknown MLPHead preset {name!r}.{hint} Known presets: {', '.join(sorted(PRESETS))}"
            )
        kwargs = {**PRESETS[name], **overrides}
        return cls(**kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the head to ``(..., input_dim)`` and return ``(..., output_dim)``."""
        if x.dim() == 0 or x.shape[-1] != self.input_dim:
            raise HeadkitError(
                f"MLPHead expected input of shape (..., {self.input_dim}), got {fmt_shape(x.shape)}"
            )
        if x.dim() == 2:
            out: Tensor = self.layers(x)
            return out
        lead = x.shape[:-1]
        out = self.layers(x.reshape(-1, self.input_dim))
        return out.reshape(*lead, out.shape[-1])

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, hidden_dim={self.hidden_dim}, output_dim={self.output_dim}, num_layers={self.num_layers}"


class ReweightHead(nn.Module):
    """The fixed reweighting head of Xue et al. (ICLR 2024, arXiv 2403.11391).

    Output coordinate ``i`` (0-based) is ``h_i * kappa ** -i`` over the last dimension, so
    earlier coordinates weigh more; ``kappa = 1`` is the identity. The weights are computed in
    log space, ``exp(-i * log kappa)``, so they are exact wherever representable. With
    ``trainable=True`` kappa is learned through ``log kappa`` (so it stays > 0). With
    ``normalize=True`` the output is L2-normalised by the fused `headkit.ops.reweight_normalize`.

    Where the tail of the weights underflows to zero in the working dtype (d = 2048 and
    kappa >= 1.1 in float32) or overflows (kappa < 1), the head warns with the number of dead
    coordinates instead of zeroing features silently; `dead_coordinates` reports the count.

    Args:
        dim: D, size of the last input dimension.
        kappa: base of the weights, positive and finite.
        trainable: learn kappa (parameter ``log_kappa``); otherwise a buffer.
        normalize: L2-normalise the output.
        device: device of ``log_kappa``.
        dtype: dtype of ``log_kappa`` (default: float32 at least).

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
        self.dim = _check_dim("dim", dim)
        value = check_kappa(kappa)
        self.trainable = bool(trainable)
        self.normalize = bool(normalize)
        dt = dtype if dtype is not None else torch.get_default_dtype()
        if not dt.is_floating_point:
            raise HeadkitError(f"dtype must be a floating dtype, got {dt}")
        log_k = torch.tensor(math.log(value), device=device, dtype=dt)
        if self.trainable:
            self.log_kappa = nn.Parameter(log_k)
        else:
            self.register_buffer("log_kappa", log_k)
        self._checked: set[tuple[torch.dtype, int]] = set()
        self._warn_dead(compute_dtype(dt) if dt in (torch.float16, torch.bfloat16) else dt)

    @property
    def kappa(self) -> Tensor:
        """kappa as a scalar tensor (``exp(log_kappa)``; differentiable when trainable)."""
        return self.log_kappa.exp()

    @property
    def weights(self) -> Tensor:
        """The ``(dim,)`` weight vector ``kappa ** -i`` in the dtype of ``log_kappa``."""
        return reweight_weights(self.dim, self.log_kappa, self.log_kappa.dtype)

    def dead_coordinates(self, dtype: torch.dtype | None = None) -> int:
        """How many weights are 0 (underflow) or inf (overflow) in ``dtype``.

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
        with torch.no_grad():
            w = reweight_weights(self.dim, self.log_kappa.detach().double(), torch.float64).to(dt)
            return int(((w == 0) | ~torch.isfinite(w)).sum())

    def _warn_dead(self, dtype: torch.dtype) -> None:
        key = (dtype, self.log_kappa._version)
        if key in self._checked:
            return
        self._checked.add(key)
        dead = self.dead_coordinates(dtype)
        if dead:
            kv = float(self.log_kappa.detach().double().exp())
            what = "underflow to 0" if kv > 1 else "overflow to inf"
            warnings.warn(
                f"ReweightHead(dim={self.dim}, kappa={kv:.6g}): {dead} of {self.dim} weights "
                f"{what} in {dtype}, so those coordinates are dead. Use a kappa closer to 1 "
                f"(kappa ** -(dim-1) must stay representable) or a smaller dim.",
                RuntimeWarning,
                stacklevel=3,
            )

    def forward(self, h: Tensor) -> Tensor:
        """Reweight ``(..., dim)`` and return ``(..., dim)`` (L2-normalised if ``normalize``)."""
        if h.dim() == 0 or h.shape[-1] != self.dim:
            raise HeadkitError(
                f"ReweightHead expected input of shape (..., {self.dim}), got {fmt_shape(h.shape)}"
            )
        if not torch.compiler.is_compiling():
            self._warn_dead(h.dtype)
        if self.normalize:
            return reweight_normalize_log(h, self.log_kappa)
        cdt = compute_dtype(h.dtype)
        w = reweight_weights(self.dim, self.log_kappa, cdt)
        return (h.to(cdt) * w).to(h.dtype)

    def extra_repr(self) -> str:
        kv = float(self.log_kappa.detach().double().exp())
        return f"dim={self.dim}, kappa={kv:.6g}, trainable={self.trainable}, normalize={self.normalize}"
