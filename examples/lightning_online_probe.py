"""Per-layer online linear probes during SimCLR pretraining, with PyTorch Lightning.

``LayerProbeCallback`` taps the chosen layers (detached) in every training forward and trains a
linear probe per layer on the batch labels, logging ``probe/<layer>`` accuracies each epoch.

    python examples/lightning_online_probe.py [--epochs 10] [--smoke]

Full run (10 epochs on scikit-learn's digits): 130 s on a 2-core CPU shared with other jobs
(load average 10).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from _common import augment, digits, make_encoder, parser
from torch.utils.data import DataLoader, TensorDataset

from headkit import NTXentLoss
from headkit.integrations.lightning import LayerProbeCallback


class SimCLRModule(pl.LightningModule):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.model = make_encoder(64, "mlp")
        self.criterion = NTXentLoss(temperature=0.2)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, _ = batch
        z0 = self.model(augment(x))
        z1 = self.model(augment(x))
        loss = self.criterion(z0, z1)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=2e-3)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    pl.seed_everything(args.seed)
    x, y = digits()
    loader = DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True, drop_last=True)
    layers = ["model.backbone.block1", "model.backbone.block2", "model.backbone", "model.head"]
    probes = LayerProbeCallback(layers, num_classes=10, lr=1e-2)
    trainer = pl.Trainer(
        max_epochs=1 if args.smoke else args.epochs,
        limit_train_batches=2 if args.smoke else None,
        callbacks=[probes],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(SimCLRModule(), loader)
    print("online probe accuracy per epoch:")
    for epoch, acc in enumerate(probes.history):
        print(f"  epoch {epoch}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items()))


if __name__ == "__main__":
    main()
