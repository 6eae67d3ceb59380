"""Property tests (hypothesis): the tiled losses equal dense references for any shape, tile and
temperature; the reweighting head follows its formula for any kappa and width."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import headkit._kernels.lse as C
from headkit import ReweightHead
from headkit.ops import info_nce, nt_xent, sup_con

from ._dense import info_nce_dense, nt_xent_dense, sup_con_dense

# The loss is lse - positive logit; logits are at most 1/t in size, so both implementations carry
# an absolute rounding error of a few float64 ulps of 1/t. A relative tolerance alone fails when
# the loss itself is ~1e-7 (a well-separated positive at a low temperature).
_ABS = 1e-12


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 40),
    d=st.integers(1, 24),
    t=st.floats(0.05, 2.0),
    tile=st.sampled_from([16, 64, 1 << 22]),
    seed=st.integers(0, 10_000),
)
def test_tiled_losses_equal_dense(n: int, d: int, t: float, tile: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, max(1, n // 3), (n,), generator=g)
    old = C._TILE_ELEMS
    C._TILE_ELEMS = tile
    try:
        assert math.isclose(
            float(nt_xent(z0, z1, t)), float(nt_xent_dense(z0, z1, t)), rel_tol=1e-9, abs_tol=_ABS
        )
        assert math.isclose(
            float(info_nce(z0, z1, t)), float(info_nce_dense(z0, z1, t)), rel_tol=1e-9, abs_tol=_ABS
        )
        z = torch.stack([z0, z1], 1)
        assert math.isclose(
            float(sup_con(z, labels, t)),
            float(sup_con_dense(z, labels, t)),
            rel_tol=1e-9,
            abs_tol=_ABS,
        )
    finally:
        C._TILE_ELEMS = old


@settings(max_examples=60, deadline=None)
@given(dim=st.integers(1, 300), kappa=st.floats(0.5, 3.0), seed=st.integers(0, 1000))
def test_reweight_head_formula(dim: int, kappa: float, seed: int) -> None:
    head = ReweightHead(dim, kappa=kappa, dtype=torch.float64)
    h = torch.randn(3, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w = torch.tensor([kappa ** (-i) for i in range(dim)], dtype=torch.float64)
    torch.testing.assert_close(head(h), h * w, rtol=1e-10, atol=0)
