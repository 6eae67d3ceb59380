"""Online probes: linear probes on several layers, trained during pretraining."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .._errors import HeadkitError, fmt_shape
from .._layers.model import LayerSpec

__all__ = ["OnlineLayerProbe"]


class OnlineLayerProbe(nn.Module):
    """Linear probes on several layers, trained during pretraining on detached features.

    Add its parameters to your optimizer (or give it its own) and add its loss to yours: the
    features are detached, so no gradient reaches the encoder. Wrapped in DDP (alone or inside
    your model), its gradients are averaged like any other parameter.

    Accuracy counts accumulate on the device of the labels without any host synchronisation per
    step, until `compute`, which sums them over ranks under ``torch.distributed``. They are
    plain attributes, not buffers, so DDP's buffer broadcast (which copies rank 0's buffers to
    every rank at each forward) cannot overwrite them; they follow ``.to()`` and are not saved in
    the ``state_dict``.

    Args:
        layers_dims: ``{layer: feature width}``.
        num_classes: number of classes.

    Shapes:
        ``forward({layer: (B, D) or (B, C, H, W) or (B, T, D)}, labels (B,))`` -> scalar loss
        (the sum over layers of each probe's mean cross-entropy). 4-D features are averaged over
        their spatial positions and 3-D ones over their tokens (pool them yourself, e.g. with
        `LayerTap`'s ``pool``, to skip class tokens).

    Example:
        >>> import torch
        >>> from headkit.probe import OnlineLayerProbe
        >>> probe = OnlineLayerProbe({"layer3": 256, "layer4": 512}, num_classes=10)
        >>> feats = {"layer3": torch.randn(8, 256), "layer4": torch.randn(8, 512)}
        >>> loss = probe(feats, torch.randint(0, 10, (8,)))
        >>> sorted(probe.compute())
        ['layer3', 'layer4']
    """

    def __init__(self, layers_dims: Mapping[LayerSpec, int], num_classes: int) -> None:
        super().__init__()
        if not layers_dims:
            raise HeadkitError("OnlineLayerProbe needs at least one layer")
        if num_classes < 2:
            raise HeadkitError(f"num_classes must be >= 2, got {num_classes}")
        self.layers = list(layers_dims)
        self.num_classes = num_classes
        self.probes = nn.ModuleDict(
            {self._key(k): nn.Linear(int(d), num_classes) for k, d in layers_dims.items()}
        )
        self._correct: Tensor | None = None
        self._total: Tensor | None = None

    @staticmethod
    def _key(layer: LayerSpec) -> str:
        return str(layer).replace(".", "__")

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> OnlineLayerProbe:
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        if self._correct is not None and self._total is not None:
            self._correct, self._total = fn(self._correct), fn(self._total)
        return self

    def _counts(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._correct is None or self._total is None:
            self._correct = torch.zeros(len(self.layers), dtype=torch.long, device=device)
            self._total = torch.zeros((), dtype=torch.long, device=device)
        elif self._correct.device != device:
            self._correct, self._total = self._correct.to(device), self._total.to(device)
        return self._correct, self._total

    def forward(self, feats: Mapping[LayerSpec, Tensor], labels: Tensor) -> Tensor:
        """Cross-entropy summed over layers, on detached features; updates the accuracy counts."""
        correct, total = self._counts(labels.device)
        loss = torch.zeros((), device=labels.device)
        for i, layer in enumerate(self.layers):
            if layer not in feats:
                raise HeadkitError(
                    f"OnlineLayerProbe: no features for layer {layer!r}; got {list(feats)}"
                )
            f = feats[layer].detach()
            if f.dim() == 4:
                f = f.mean((2, 3))
            elif f.dim() == 3:
                f = f.mean(1)
            probe = self.probes[self._key(layer)]
            assert isinstance(probe, nn.Linear)
            if f.dim() != 2 or f.shape[-1] != probe.in_features:
                raise HeadkitError(
                    f"OnlineLayerProbe: layer {layer!r} expected width {probe.in_features}, got {fmt_shape(f.shape)}"
                )
            logits = probe(f.to(probe.weight.dtype))
            loss = loss + F.cross_entropy(logits, labels)
            with torch.no_grad():
                correct[i] += (logits.argmax(1) == labels).sum()
        with torch.no_grad():
            total += labels.shape[0]
        return loss

    def reset(self) -> None:
        """Zero the accuracy counts."""
        if self._correct is not None and self._total is not None:
            self._correct.zero_()
            self._total.zero_()

    def compute(self, reset: bool = True) -> dict[LayerSpec, float]:
        """Accuracy per layer since the last reset, summed over ranks when distributed.

        Under ``torch.distributed`` every rank must call it (it is a collective).
        """
        correct, total = self._counts(
            self._correct.device if self._correct is not None else torch.device("cpu")
        )
        counts = torch.cat([correct, total.view(1)])
        if dist.is_available() and dist.is_initialized():
            comm = (
                torch.device("cuda", torch.cuda.current_device())
                if dist.get_backend() == "nccl"
                else torch.device("cpu")
            )
            buf = counts.to(comm)
            dist.all_reduce(buf)
            counts = buf
        counts = counts.cpu()
        if reset:
            self.reset()
        t = int(counts[-1])
        return {
            layer: (int(counts[i]) / t if t else float("nan"))
            for i, layer in enumerate(self.layers)
        }
