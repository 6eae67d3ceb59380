from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from headkit.ops import nt_xent

from ._dist_worker import make_data, worker


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_gather_distributed_two_gloo_processes_equal_one_process(
    tmp_path: os.PathLike[str],
) -> None:
    init_file = os.path.join(tmp_path, "init")
    mp.spawn(worker, args=(2, init_file, str(tmp_path)), nprocs=2, join=True)
    results = [
        torch.load(os.path.join(tmp_path, f"rank{r}.pt"), weights_only=True) for r in range(2)
    ]

    x0, x1, enc = make_data()
    z0 = enc(x0)
    z0.retain_grad()
    loss = nt_xent(z0, enc(x1), 0.3)
    loss.backward()
    for res in results:
        # every rank reports the loss of the global batch
        torch.testing.assert_close(res["loss"], loss.detach(), rtol=1e-12, atol=0)
        # after DDP's averaging the parameter gradients are those of one process
        for name, p in enc.named_parameters():
            torch.testing.assert_close(res["grads"][name], p.grad, rtol=1e-10, atol=1e-13)
    # each rank's embeddings get every rank's gradient (lightly's convention): world x global
    assert z0.grad is not None
    for r, res in enumerate(results):
        torch.testing.assert_close(
            res["z0_grad"], 2 * z0.grad[4 * r : 4 * (r + 1)], rtol=1e-10, atol=1e-13
        )
