"""Losses with ``gather_distributed=True`` on 2 gloo processes against one process on the global
batch: values, DDP-averaged parameter gradients (a learnable temperature included), uneven batch
sizes, SupCon's gathered labels, and the memory bank's gathered enqueues."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from ._dist_worker import SCENARIOS, worker


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not built")
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(2, os.path.join(tmp, "init"), str(tmp)), nprocs=2, join=True)
    return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(2)]


def _close(a: Any, b: Any) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n != "bank"])
def test_two_ranks_equal_one_process(ranks: list[dict[str, Any]], name: str) -> None:
    one = SCENARIOS[name](0, 1)
    for res in (r[name] for r in ranks):
        _close(res["loss"], one["loss"])  # every rank reports the global batch's loss
        assert res["grads"].keys() == one["grads"].keys()
        for k in one["grads"]:
            _close(res["grads"][k], one["grads"][k])  # DDP's average = one process's gradient


def test_embeddings_receive_every_ranks_gradient(ranks: list[dict[str, Any]]) -> None:
    """lightly's convention: each rank's embeddings get the gradient of every rank's anchors,
    which is world_size x the global loss's gradient."""
    one = SCENARIOS["nt_xent"](0, 1)
    for r, res in enumerate(ranks):
        _close(res["nt_xent"]["z0_grad"], 2 * one["z0_grad"][4 * r : 4 * (r + 1)])


def test_memory_bank_with_gathered_keys(ranks: list[dict[str, Any]]) -> None:
    one = SCENARIOS["bank"](0, 1)
    for res in (r["bank"] for r in ranks):
        for a, b in zip(res["losses"], one["losses"], strict=True):
            _close(a, b)
        for ga, gb in zip(res["grads"], one["grads"], strict=True):
            for k in gb:
                _close(ga[k], gb[k])
        _close(res["bank"], one["bank"])  # the same bank on every rank as in one process
