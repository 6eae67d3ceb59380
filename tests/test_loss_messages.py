"""A loss's shape error names every input of the call, with its shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from headkit import HeadkitError, InfoNCELoss, NTXentLoss, SupConLoss
from headkit.ops import info_nce, nt_xent, sup_con


def r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


CASES: list[tuple[str, Callable[[], Any], list[str]]] = [
    ("SupConLoss two views of different batch sizes", lambda: SupConLoss()(r(4, 8), r(3, 8)),
     ["out0 (4, 8)", "out1 (3, 8)"]),
    ("SupConLoss two views and labels", lambda: SupConLoss()(r(4, 8), r(3, 8), torch.arange(4)),
     ["out0 (4, 8)", "out1 (3, 8)", "labels (4,)"]),
    ("SupConLoss labels of another batch", lambda: SupConLoss()(r(4, 2, 8), torch.arange(3)),
     ["z (4, 2, 8)", "labels (3,)"]),
    ("SupConLoss views of another width", lambda: SupConLoss()(r(4, 8), r(4, 6), torch.arange(4)),
     ["out0 (4, 8)", "out1 (4, 6)", "labels (4,)"]),
    ("NTXentLoss", lambda: NTXentLoss()(r(4, 8), r(3, 8)), ["out0 (4, 8)", "out1 (3, 8)"]),
    ("NTXentLoss with a bank", lambda: NTXentLoss(memory_bank_size=(16, 8))(r(4, 8), r(4, 7)),
     ["out0 (4, 8)", "out1 (4, 7)"]),
    ("InfoNCELoss", lambda: InfoNCELoss()(r(4, 8), r(3, 8)), ["query (4, 8)", "key (3, 8)"]),
    ("InfoNCELoss bank", lambda: InfoNCELoss()(r(4, 8), r(4, 8), r(5, 7)),
     ["query (4, 8)", "key (4, 8)", "negatives (5, 7)"]),
    ("ops.nt_xent", lambda: nt_xent(r(4, 8), r(4, 9)), ["z0 (4, 8)", "z1 (4, 9)"]),
    ("ops.info_nce", lambda: info_nce(r(4, 8), r(3, 8)), ["query (4, 8)", "key (3, 8)"]),
    ("ops.sup_con", lambda: sup_con(r(4, 8), torch.arange(5)), ["z (4, 8)", "labels (5,)"]),
    ("ops.sup_con 4-D", lambda: sup_con(r(4, 2, 2, 8), torch.arange(4)),
     ["z (4, 2, 2, 8)", "labels (4,)"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "call", "shapes"), CASES, ids=[c[0] for c in CASES])
def test_shape_errors_name_every_input(
    name: str, call: Callable[[], Any], shapes: list[str]
) -> None:
    with pytest.raises(HeadkitError) as err:
        call()
    msg = str(err.value)
    for s in shapes:
        assert s in msg, (s, msg)
    assert msg.count("the call got") == 1, msg


def test_float_column_labels_stay_labels() -> None:
    """(B, 1) float labels next to (B, D) embeddings are labels, not a second view."""
    z = r(6, 8)
    y = torch.tensor([0.0, 0, 1, 1, 2, 2])
    assert torch.equal(SupConLoss()(z, y[:, None]), SupConLoss()(z, y))
