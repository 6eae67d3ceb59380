"""MLP projection / prediction heads and the reweighting head."""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import HeadkitError, closest, fmt_shape
from .._kernels.reweight import check_kappa, compute_dtype, reweight_normalize_log, reweight_weights

__all__ = ["LIGHTLY_HEADS", "PRESETS", "MLPHead", "ReweightHead"]

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


# lightly 1.6.0 head of each preset
LIGHTLY_HEADS: dict[str, str] = {
    "simclr": "SimCLRProjectionHead",
    "moco_v2": "MoCoProjectionHead",
    "byol_projection": "BYOLProjectionHead",
    "byol_prediction": "BYOLPredictionHead",
    "simsiam_projection": "SimSiamProjectionHead",
    "simsiam_prediction": "SimSiamPredictionHead",
    "barlow_twins": "BarlowTwinsProjectionHead",
    "vicreg": "VICRegProjectionHead",
    "nnclr": "NNCLRProjectionHead",
}
# presets whose lightly head has a batch_norm argument meaning "on every layer, output included"
_BN_ON_EVERY_LAYER = {"simclr", "moco_v2"}
# presets whose lightly head has a num_layers argument (which builds 2 layers for num_layers=1)
_LIGHTLY_NUM_LAYERS = {"simclr", "moco_v2", "vicreg"}


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

        Overrides that share a name with an argument of the lightly head mean what they mean
        there, or are refused with an error that names the difference:

        - ``batch_norm`` on ``simclr`` / ``moco_v2`` switches batch norm on *every* layer,
          output included (lightly's ``SimCLRProjectionHead(batch_norm=False)`` has none,
          ``MoCoProjectionHead(batch_norm=True)`` is MoCo v3's head with one on the output),
          unless ``last_batch_norm`` is also given; on ``simsiam_projection`` and ``nnclr``
          (batch norm on the output too, no such argument in lightly) it must come with an
          explicit ``last_batch_norm``; elsewhere it is MLPHead's (hidden layers, which are then
          all the batch norms of the head).
        - ``num_layers`` counts linear layers, as lightly's for 2 and more; lightly's
          ``num_layers=1`` still builds two layers, so ``simclr``, ``moco_v2`` and ``vicreg``
          refuse it.
        - biases follow lightly's rule (a bias only where no batch norm follows) unless
          ``bias`` is given.

        Args:
            name: one of `MLPHead.presets()`: ``simclr``, ``moco_v2``, ``byol_projection``,
                ``byol_prediction``, ``simsiam_projection``, ``simsiam_prediction``,
                ``barlow_twins``, ``vicreg``, ``nnclr``.
            **overrides: any `MLPHead` argument, e.g. ``input_dim=512``.

        Returns:
            The head; it matches the lightly head of the same name layer for layer.

        Raises:
            HeadkitError: unknown name or argument (the message lists the known ones), or an
                override whose meaning differs from lightly's.

        Example:
            >>> from headkit import MLPHead
            >>> MLPHead.preset("byol_prediction").output_dim
            256
            >>> head = MLPHead.preset("simclr", input_dim=32, batch_norm=False)  # no BN at all
            >>> any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules())
            False
        """
        if name not in PRESETS:
            near = closest(name, PRESETS)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise HeadkitError(
                f"unknown MLPHead preset {name!r}.{hint} Known presets: {', '.join(sorted(PRESETS))}"
            )
        known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise HeadkitError(
                f"MLPHead.preset({name!r}) got unknown argument(s) {', '.join(unknown)}; "
                f"MLPHead's arguments are {', '.join(known)}"
            )
        lightly_name = LIGHTLY_HEADS[name]
        overrides = dict(overrides)
        if "batch_norm" in overrides and "last_batch_norm" not in overrides:
            if name in _BN_ON_EVERY_LAYER:
                overrides["last_batch_norm"] = bool(overrides["batch_norm"])
            elif (
                PRESETS[name]["last_batch_norm"]
                and bool(overrides["batch_norm"]) != PRESETS[name]["batch_norm"]
            ):
                raise HeadkitError(
                    f"MLPHead.preset({name!r}, batch_norm={overrides['batch_norm']!r}) is "
                    f"ambiguous: lightly's {lightly_name} has no batch_norm argument and puts a "
                    "batch norm on the output layer too, while MLPHead's batch_norm covers the "
                    "hidden layers only; pass last_batch_norm=True or False as well"
                )
        n = overrides.get("num_layers")
        if name in _LIGHTLY_NUM_LAYERS and isinstance(n, int) and not isinstance(n, bool) and n < 2:
            raise HeadkitError(
                f"MLPHead.preset({name!r}, num_layers={n}): lightly's {lightly_name}"
                f"(num_layers={n}) still builds 2 linear layers, while MLPHead's num_layers counts "
                "linear layers; use num_layers >= 2, or MLPHead(input_dim, hidden_dim, "
                "output_dim, num_layers=1) for a linear head"
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
        self.dim = _check_dim("dim", dim)
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
