"""PyTorch Lightning integration: per-layer online probes during pretraining.

Needs ``pip install "headkit[lightning]"`` (``lightning`` or ``pytorch_lightning``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .._errors import HeadkitError
from .._layers.model import LayerSpec
from .._layers.pool import Pool
from .._layers.tap import LayerTap
from ..probe import OnlineLayerProbe

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl
    except ImportError as err:
        raise ImportError(
            'headkit.integrations.lightning needs PyTorch Lightning: pip install "headkit[lightning]"'
        ) from err

__all__ = ["LayerProbeCallback"]


class LayerProbeCallback(pl.Callback):  # type: ignore[misc]
    """Train linear probes on several layers of the model while it pretrains.

    A `LayerTap` records the chosen layers (detached) during each training forward; after each
    training batch the probes take one optimiser step on those features and the batch labels
    (``batch[1]``, or a dict batch's ``labels``/``label``/``y``), and ``probe/<layer>``
    accuracies are logged each epoch. The encoder never receives a gradient from the probes.
    Under DDP every rank starts from rank 0's probes, the probe gradients are averaged over
    ranks (one all-reduce per step) and the accuracy counts, kept out of DDP's buffer broadcast,
    are summed over ranks at the end of each epoch, so the logged accuracy is that of all ranks'
    samples. Nothing synchronises with the host per step.

    Args:
        layers: layer specs of ``pl_module`` (or of ``pl_module.<module_attr>``), module names.
        num_classes: number of classes of the labels.
        pool: pooling of the tapped outputs before the probe (default ``"auto"``: the pool that
            fits the model, as for `LayerTap`).
        lr: Adam learning rate of the probes.
        module_attr: attribute of the LightningModule holding the encoder (None: the module).

    Example:
        >>> from headkit.integrations.lightning import LayerProbeCallback
        >>> cb = LayerProbeCallback(["backbone.layer3", "backbone.layer4"], num_classes=10)
        >>> cb.layers
        ['backbone.layer3', 'backbone.layer4']
    """

    def __init__(
        self,
        layers: Sequence[LayerSpec],
        num_classes: int,
        *,
        pool: Pool = "auto",
        lr: float = 1e-3,
        module_attr: str | None = None,
    ) -> None:
        super().__init__()
        self.layers = list(layers)
        self.num_classes = num_classes
        self.pool = pool
        self.lr = lr
        self.module_attr = module_attr
        self.tap: LayerTap | None = None
        self.probe: OnlineLayerProbe | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.history: list[dict[str, float]] = []

    def _target(self, pl_module: nn.Module) -> nn.Module:
        if self.module_attr is None:
            return pl_module
        target = getattr(pl_module, self.module_attr, None)
        if not isinstance(target, nn.Module):
            raise HeadkitError(f"LightningModule has no module attribute {self.module_attr!r}")
        return target

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.tap = LayerTap(self._target(pl_module), self.layers, pool=self.pool, detach=True)
        self.tap.__enter__()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        assert self.tap is not None
        labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        if isinstance(batch, dict):
            labels = next((batch[k] for k in ("labels", "label", "y") if k in batch), None)
        if not isinstance(labels, torch.Tensor):
            raise HeadkitError(
                "LayerProbeCallback needs (inputs, labels) batches or dict batches with a "
                "'labels'/'label'/'y' key"
            )
        feats = {k: self.tap.outputs[k] for k in self.tap.keys}
        if self.probe is None:
            self._build(feats, labels.device)
        assert self.probe is not None and self.optimizer is not None
        with torch.enable_grad():
            loss = self.probe(feats, labels.to(next(self.probe.parameters()).device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # one all-reduce of every probe gradient, flattened: the probes stay identical
            grads = [p.grad for p in self.probe.parameters() if p.grad is not None]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        self.optimizer.step()
        self.tap.clear()

    def _build(self, feats: dict[LayerSpec, Any], device: torch.device) -> None:
        dims = {
            k: int(
                v.shape[1]
                if v.dim() == 4
                else v.shape[-1]
                if v.dim() == 3
                else v.reshape(v.shape[0], -1).shape[1]
            )
            for k, v in feats.items()
        }
        self.probe = OnlineLayerProbe(dims, self.num_classes).to(device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every rank starts from rank 0's probes (each rank's random init differs)
            comm = (
                torch.device("cuda", torch.cuda.current_device())
                if dist.get_backend() == "nccl"
                else torch.device("cpu")
            )
            for p in self.probe.parameters():
                buf = p.data.to(comm)
                dist.broadcast(buf, src=0)
                p.data.copy_(buf.to(p.device))
        self.optimizer = torch.optim.Adam(self.probe.parameters(), lr=self.lr)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.probe is None:
            return
        acc = self.probe.compute()
        self.history.append({str(k): v for k, v in acc.items()})
        for k, v in acc.items():
            pl_module.log(f"probe/{k}", v, rank_zero_only=True)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.tap is not None:
            self.tap.close()
            self.tap = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)
