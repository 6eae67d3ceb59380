"""SimCLR under DDP with negatives gathered from every rank.

    torchrun --nproc_per_node=2 examples/ddp_simclr.py [--epochs 20] [--smoke]

gloo on CPU, NCCL on GPU. ``NTXentLoss(gather_distributed=True)`` gives every rank the negatives
of the global batch; the loss it reports is the global batch's and, after DDP averages the
gradients, training follows one process on the concatenated batch.

Full run (20 epochs, 2 CPU processes): 56 s on a 2-core CPU shared with other jobs (load
average 11).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from _common import augment, digits, make_encoder, parser
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from headkit import NTXentLoss, layer_sweep


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128, help="per rank")
    args = p.parse_args()
    if "RANK" not in os.environ:
        raise SystemExit("run me with: torchrun --nproc_per_node=2 examples/ddp_simclr.py")
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    torch.manual_seed(args.seed)
    x, y = digits()
    sampler = DistributedSampler(TensorDataset(x, y), shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=args.batch_size, sampler=sampler, drop_last=True
    )
    model = make_encoder(64, "mlp").to(device)
    ddp = DDP(model, device_ids=[device.index] if cuda else None)
    criterion = NTXentLoss(temperature=0.2, gather_distributed=True)
    opt = torch.optim.AdamW(ddp.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(args.seed + rank)
    epochs = 1 if args.smoke else args.epochs
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for step, (xb, _) in enumerate(loader):
            loss = criterion(ddp(augment(xb, g).to(device)), ddp(augment(xb, g).to(device)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if args.smoke and step >= 1:
                break
        if rank == 0:
            print(
                f"epoch {epoch}: global-batch loss {loss.item():.4f} ({world} ranks x {args.batch_size})"
            )
    # every rank sweeps its own shard; layer_sweep gathers the features of all ranks, so each
    # rank gets the report of the whole data set (calling it on rank 0 alone would wait forever
    # for the other ranks)
    model.eval()
    model.cpu()
    shard = DistributedSampler(TensorDataset(x, y), shuffle=False)
    sweep_loader = DataLoader(TensorDataset(x, y), batch_size=512, sampler=shard)
    report = layer_sweep(
        model,
        sweep_loader,
        layers=["backbone.block2", "backbone", "head"],
        metrics=("knn", "rankme"),
        progress=False,
    )
    if rank == 0:
        print(report.table())
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # leave without running C++ static destructors: gloo's worker threads can abort the process
    # at interpreter exit (a known teardown race), which would turn a good run into a failure
    sys.stdout.flush()
    os._exit(0)
