"""`MLPHead`: the generic projection / prediction MLP, and the presets of the common methods."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import HeadkitError, closest, fmt_shape

__all__ = ["LIGHTLY_HEADS", "PRESETS", "MLPHead", "check_dim"]


def _preset(
    i: int, h: int, o: int, n: int, *, bn: bool, last_bn: bool, last_affine: bool | None = None
) -> dict[str, Any]:
    """MLPHead's arguments for input, hidden and output widths, layers and batch norms."""
    out: dict[str, Any] = dict(
        input_dim=i,
        hidden_dim=h,
        output_dim=o,
        num_layers=n,
        batch_norm=bn,
        last_batch_norm=last_bn,
    )
    if last_affine is not None:
        out["last_batch_norm_affine"] = last_affine
    return out


# Defaults of lightly 1.6.0's heads, expressed in MLPHead's arguments.
PRESETS: dict[str, dict[str, Any]] = {
    # SimCLR (arXiv 2002.05709): lightly.models.modules.SimCLRProjectionHead
    "simclr": _preset(2048, 2048, 128, 2, bn=True, last_bn=True),
    # MoCo v2 (arXiv 2003.04297): MoCoProjectionHead
    "moco_v2": _preset(2048, 2048, 128, 2, bn=False, last_bn=False),
    # BYOL (arXiv 2006.07733): BYOLProjectionHead / BYOLPredictionHead
    "byol_projection": _preset(2048, 4096, 256, 2, bn=True, last_bn=False),
    "byol_prediction": _preset(256, 4096, 256, 2, bn=True, last_bn=False),
    # SimSiam (arXiv 2011.10566): SimSiamProjectionHead / SimSiamPredictionHead
    "simsiam_projection": _preset(2048, 2048, 2048, 3, bn=True, last_bn=True, last_affine=False),
    "simsiam_prediction": _preset(2048, 512, 2048, 2, bn=True, last_bn=False),
    # Barlow Twins (arXiv 2103.03230): BarlowTwinsProjectionHead
    "barlow_twins": _preset(2048, 8192, 8192, 3, bn=True, last_bn=False),
    # VICReg (arXiv 2105.04906): VICRegProjectionHead
    "vicreg": _preset(2048, 8192, 8192, 3, bn=True, last_bn=False),
    # NNCLR (arXiv 2104.14548): NNCLRProjectionHead
    "nnclr": _preset(2048, 2048, 256, 3, bn=True, last_bn=True),
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


def check_dim(name: str, value: object) -> int:
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
        self.input_dim = check_dim("input_dim", input_dim)
        self.hidden_dim = check_dim("hidden_dim", hidden_dim)
        self.output_dim = check_dim("output_dim", output_dim)
        self.num_layers = check_dim("num_layers", num_layers)
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
