"""lightly's SimCLR recipe on a timm backbone, with headkit's head and loss swapped in.

The recipe is lightly's own (its ``SimCLRTransform`` and training loop); two lines change:
the projection head (``MLPHead.preset("simclr", ...)`` instead of ``SimCLRProjectionHead``) and
the loss (headkit's lightly-exact, O(N)-memory ``NTXentLoss``). At the end a layer sweep says
which layer of the backbone to use, and which layers the data cannot separate from it. Data:
scikit-learn's digits as 32x32 RGB images.

    python examples/lightly_simclr.py [--epochs 5] [--smoke]

Full run (5 epochs): 37 minutes on a 2-core CPU shared with other jobs (load average 11), most
of it lightly's PIL transforms and the ResNet-18 on the CPU; ``--epochs 1`` takes about a fifth.
``--smoke`` (2 steps) checks that it runs.
"""

from __future__ import annotations

import timm
import torch
from _common import digits, digits_pil, parser
from lightly.transforms import SimCLRTransform
from torch import nn
from torch.utils.data import DataLoader, Dataset

import headkit
from headkit import MLPHead


class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        # was: self.projection_head = SimCLRProjectionHead(dim, dim, 128)
        self.projection_head = MLPHead.preset("simclr", input_dim=dim, hidden_dim=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


class Views(Dataset[tuple[list[torch.Tensor], int]]):
    def __init__(self, images: list[object], labels: list[int], transform: SimCLRTransform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int]:
        return self.transform(self.images[i]), self.labels[i]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    images, labels = digits_pil(32)
    transform = SimCLRTransform(input_size=32, gaussian_blur=0.0, min_scale=0.5)
    loader = DataLoader(
        Views(images, labels, transform),
        batch_size=32 if args.smoke else args.batch_size,
        shuffle=True,
        drop_last=True,
    )
    backbone = timm.create_model("resnet18", pretrained=False, num_classes=0)
    model = SimCLR(backbone, backbone.num_features)
    criterion = headkit.NTXentLoss(temperature=0.5)  # was: lightly.loss.NTXentLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
    steps = 0
    for epoch in range(1 if args.smoke else args.epochs):
        total = 0.0
        for batch in loader:
            x0, x1 = batch[0]
            loss = criterion(model(x0), model(x1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
            if args.smoke and steps >= 2:
                break
        print(f"epoch {epoch}: loss {total / max(1, steps if args.smoke else len(loader)):.4f}")
    # which layer of the backbone to use: timm indices 0..4, on clean images
    x, y = digits()
    x = nn.functional.interpolate(x, size=32, mode="bilinear").expand(-1, 3, -1, -1)
    if args.smoke:
        x, y = x[:200], y[:200]
    batches = [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(y), 256)]
    report = headkit.layer_sweep(
        model.backbone,
        batches,
        metrics=("linear", "knn", "rankme"),
        probe_kwargs={"epochs": 10 if args.smoke else 100},
    )
    print(report.table())
    best = report.best_layer("linear")
    tied = [layer for layer in report.tied_with_best("linear") if layer != best]
    print(f"best layer of the backbone: {best}" + (f"; tied with it: {tied}" if tied else ""))


if __name__ == "__main__":
    main()
