"""A layer sweep under torchrun: every rank extracts its own shard, every rank gets one report.

    torchrun --standalone --nproc_per_node=2 examples/ddp_sweep.py [--smoke] [--out DIR]

gloo on CPU, NCCL on GPU (one GPU per rank). The loaders use a ``DistributedSampler``, so each
rank runs the model on its part of the data; ``layer_sweep`` gathers every rank's features and
labels, drops the samples the sampler repeats to pad the data set to a multiple of the world
size, and every rank returns the same report as one process on the whole data would. Rank 0
prints it and writes the files. ``recommend_layer`` picks a layer without labels the same way.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from _common import digits, make_encoder, parser
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from headkit.probe import layer_sweep, recommend_layer


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", default="runs/ddp_sweep", help="folder for the report (rank 0)")
    p.add_argument("--batch-size", type=int, default=128, help="per rank")
    args = p.parse_args()
    if "RANK" not in os.environ:
        raise SystemExit(
            "run me with: torchrun --standalone --nproc_per_node=2 examples/ddp_sweep.py"
        )
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    x, y = digits()
    if args.smoke:
        x, y = x[:601], y[:601]  # an odd count: the sampler pads, the sweep drops the repeats
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))
    n_test = len(y) // 5
    train = TensorDataset(x[perm[n_test:]], y[perm[n_test:]])
    test = TensorDataset(x[perm[:n_test]], y[perm[:n_test]])

    def loader(ds: TensorDataset) -> DataLoader[tuple[torch.Tensor, ...]]:
        sampler = DistributedSampler(ds, shuffle=False)
        return DataLoader(ds, batch_size=args.batch_size, sampler=sampler)

    model = make_encoder(64, "mlp")  # random weights: the point here is the distributed sweep
    layers = ["backbone.block1", "backbone.block2", "backbone", "head"]
    report = layer_sweep(
        model,
        loader(train),
        loader(test),
        layers=layers,
        roles={"backbone": "pre-projection", "head": "post-projection"},
        device=device,
        probe_kwargs={"epochs": 5 if args.smoke else 100},
        n_boot=200 if args.smoke else 1000,
        seed=args.seed,
        progress=False,
    )
    images = TensorDataset(train.tensors[0])  # no labels: a label-free choice
    unlabelled = DataLoader(
        images, batch_size=args.batch_size, sampler=DistributedSampler(images, shuffle=False)
    )
    choice = recommend_layer(model, unlabelled, layers, device=device, n_boot=50, progress=False)
    if rank == 0:
        print(
            f"{world} ranks; {report.info['n_train']} train / {report.info['n_test']} test samples"
        )
        print(report.table())
        print(f"tied with the best linear probe: {report.tied_with_best('linear')}")
        print(f"without labels: {choice}")
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "sweep.json"), "w") as fh:
            fh.write(report.to_json())
        print(f"report written to {os.path.join(args.out, 'sweep.json')}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # leave without running C++ static destructors: gloo's worker threads can abort the process
    # at interpreter exit (a known teardown race), which would turn a good run into a failure
    sys.stdout.flush()
    os._exit(0)
