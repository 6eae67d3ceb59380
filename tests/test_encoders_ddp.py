"""`LayerTap(ddp_model)(x)` runs DDP's own forward bookkeeping: gradients of a loss on a tapped
layer are synchronised, equal on every rank and to one process on the global batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from ._dist_tap_worker import LAYER, loss_of, make, worker


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_tap_through_ddp_two_gloo_processes(tmp_path: os.PathLike[str]) -> None:
    init_file = os.path.join(tmp_path, "init")
    mp.spawn(worker, args=(2, init_file, str(tmp_path)), nprocs=2, join=True)
    res = [
        torch.load(os.path.join(tmp_path, f"tap_rank{r}.pt"), weights_only=True) for r in range(2)
    ]
    model, x = make()
    out = model[: int(LAYER) + 1](x)
    loss_of(out).backward()
    for r in res:
        assert r["refused"]
        for step in r["steps"]:
            for name, p in model.named_parameters():
                if name.startswith("4."):  # after the tap: no gradient anywhere
                    assert step[name] is None
                    continue
                torch.testing.assert_close(step[name], p.grad, rtol=1e-10, atol=1e-12)
    # under no_grad each rank reads its own shard's features through DDP's forward
    for r, got in enumerate(res):
        torch.testing.assert_close(got["feats"], out[4 * r : 4 * (r + 1)].detach())
