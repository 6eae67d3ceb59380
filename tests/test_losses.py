from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import headkit._contrastive as C
from headkit import HeadkitError, InfoNCELoss, NTXentLoss, SupConLoss
from headkit.ops import info_nce, nt_xent, reweight_normalize, sup_con

from ._dense import info_nce_dense, nt_xent_dense, sup_con_dense

lightly_loss = pytest.importorskip("lightly.loss")


@contextmanager
def small_tiles(elems: int = 64) -> Iterator[None]:
    old = C._TILE_ELEMS
    C._TILE_ELEMS = elems
    try:
        yield
    finally:
        C._TILE_ELEMS = old


def grads(loss: torch.Tensor, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, xs))


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (7, 16, 0.5), (33, 8, 0.1), (64, 128, 0.07)])
@pytest.mark.parametrize("tiles", [False, True])
def test_nt_xent_matches_lightly_float64(n: int, d: int, t: float, tiles: bool) -> None:
    z0 = (torch.randn(n, d, dtype=torch.float64) * 3).requires_grad_()
    z1 = torch.randn(n, d, dtype=torch.float64).requires_grad_()
    ref = lightly_loss.NTXentLoss(temperature=t, memory_bank_size=0)(z0, z1)
    with small_tiles() if tiles else _null():
        ours = nt_xent(z0, z1, t)
        g_ours = grads(ours, [z0, z1])
    g_ref = grads(ref, [z0, z1])
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@contextmanager
def _null() -> Iterator[None]:
    yield


def test_nt_xent_matches_lightly_float32() -> None:
    z0 = torch.randn(256, 128).requires_grad_()
    z1 = torch.randn(256, 128).requires_grad_()
    ref = lightly_loss.NTXentLoss(temperature=0.5)(z0, z1)
    ours = NTXentLoss(temperature=0.5)(z0, z1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    for a, b in zip(grads(ours, [z0, z1]), grads(ref, [z0, z1]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("v", [1, 2, 3])
def test_sup_con_matches_dense(v: int) -> None:
    z = torch.randn(12, v, 10, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 5, 9, 9, 9])  # label 5 is alone
    with small_tiles():
        ours = sup_con(z, labels, 0.1)
        g = grads(ours, [z])
    ref = sup_con_dense(z, labels, 0.1)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(g[0], grads(ref, [z])[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(SupConLoss(0.1)(z, labels), ref, rtol=1e-10, atol=0)


def test_sup_con_2d_is_one_view() -> None:
    z = torch.randn(8, 6, dtype=torch.float64)
    lab = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    torch.testing.assert_close(sup_con(z, lab), sup_con(z[:, None], lab))


@pytest.mark.parametrize("bank", [False, True])
def test_info_nce_matches_dense(bank: bool) -> None:
    q = torch.randn(9, 12, dtype=torch.float64, requires_grad=True)
    k = torch.randn(9, 12, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(40, 12, dtype=torch.float64, requires_grad=True) if bank else None
    with small_tiles():
        ours = info_nce(q, k, 0.2, negatives=neg)
    ref = info_nce_dense(q, k, 0.2, neg)
    xs = [q, k] + ([neg] if neg is not None else [])
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
    for a, b in zip(grads(ours, xs), grads(ref, xs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(InfoNCELoss(0.2)(q, k, neg), ref, rtol=1e-10, atol=0)


def test_info_nce_bank_matches_lightly_memory_bank() -> None:
    q = torch.randn(8, 16, dtype=torch.float64)
    k = torch.randn(8, 16, dtype=torch.float64)
    crit = lightly_loss.NTXentLoss(temperature=0.3, memory_bank_size=(32, 16))
    crit.double()
    crit(q.requires_grad_(), k)  # enqueues k into the (K, D) bank
    bank = torch.nn.functional.normalize(crit.memory_bank.bank.clone(), dim=1)
    crit.memory_bank.bank = bank.clone()  # unit norm in float64 (lightly keeps it as given)
    q2, k2 = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    ref = crit(q2, k2)  # no grad: the bank is read, not updated
    ours = info_nce(q2, k2, 0.3, negatives=bank)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)


def test_nt_xent_vs_dense_reference() -> None:
    z0, z1 = torch.randn(50, 7, dtype=torch.float64), torch.randn(50, 7, dtype=torch.float64)
    torch.testing.assert_close(nt_xent(z0, z1, 0.3), nt_xent_dense(z0, z1, 0.3), rtol=1e-12, atol=0)


def test_gradcheck_float64() -> None:
    with small_tiles(24):
        z0 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
        z1 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.4), (z0, z1))
        z = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
        lab = torch.tensor([0, 1, 0, 2])
        assert torch.autograd.gradcheck(lambda a: sup_con(a, lab, 0.3), (z,))
        neg = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda a, b, c: info_nce(a, b, 0.5, negatives=c), (z0, z1, neg)
        )
        assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, 0.5), (z0, z1))
        h = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
        kappa = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: reweight_normalize(a, b), (h, kappa))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", [0.5, 0.05])
def test_half_precision_accurate(dtype: torch.dtype, t: float) -> None:
    z0 = (torch.randn(128, 64) * 300).to(dtype)
    z1 = (z0.float() + 30 * torch.randn(128, 64)).to(dtype)
    ref = nt_xent(z0.double(), z1.double(), t)
    out = nt_xent(z0, z1, t)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert abs(out.item() - ref.item()) < 1e-4 * max(1.0, abs(ref.item()))
    lab = torch.arange(128) % 5
    zz = torch.stack([z0, z1], 1)
    torch.testing.assert_close(
        sup_con(zz, lab, t).double(), sup_con(zz.double(), lab, t), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        info_nce(z0, z1, t).double(), info_nce(z0.double(), z1.double(), t), rtol=1e-5, atol=1e-5
    )
    z0.requires_grad_()
    nt_xent(z0, z1, t).backward()
    assert z0.grad is not None and torch.isfinite(z0.grad.float()).all()


class _Biggest(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.biggest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.biggest = max(self.biggest, t.numel())
        return out


def test_never_builds_the_similarity_matrix() -> None:
    n, d = 512, 32
    z0 = torch.randn(n, d, requires_grad=True)
    z1 = torch.randn(n, d, requires_grad=True)
    with small_tiles(1 << 16), _Biggest() as mode:
        nt_xent(z0, z1).backward()
        sup_con(torch.stack([z0, z1], 1), torch.arange(n) % 10).backward()
        info_nce(z0, z1).backward()
    assert mode.biggest <= 1 << 16  # one tile, not (2N)^2 = 1M elements
    with _Biggest() as ref:
        lightly_loss.NTXentLoss()(z0, z1).backward()
    assert ref.biggest >= (2 * n) ** 2 // 2


def test_no_graph_breaks() -> None:
    import torch._dynamo

    z0, z1 = torch.randn(16, 8), torch.randn(16, 8)
    lab = torch.arange(16) % 3
    for fn, args in [
        (lambda a, b: nt_xent(a, b, 0.5), (z0, z1)),
        (lambda a, b: info_nce(a, b, 0.1), (z0, z1)),
        (lambda a, b: info_nce(a, b, 0.1, negatives=torch.cat([a, b])), (z0, z1)),
        (lambda a, b: sup_con(torch.stack([a, b], 1), lab, 0.1), (z0, z1)),
        (lambda a, b: reweight_normalize(a, 1.05), (z0, z1)),
    ]:
        torch._dynamo.reset()
        explain = torch._dynamo.explain(fn)(*args)
        assert explain.graph_break_count == 0, explain.break_reasons
        assert explain.graph_count == 1
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(*args), fn(*args))


def test_compiled_backward_matches_eager() -> None:
    z0 = torch.randn(32, 8, requires_grad=True)
    z1 = torch.randn(32, 8, requires_grad=True)
    compiled = torch.compile(lambda a, b: nt_xent(a, b, 0.2), fullgraph=True)
    g1 = grads(compiled(z0, z1), [z0, z1])
    g2 = grads(nt_xent(z0, z1, 0.2), [z0, z1])
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(5, 3)), "same shape"),
        (lambda: nt_xent(torch.randn(1, 3), torch.randn(1, 3)), "at least 2"),
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 3), 0.0), "temperature"),
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 3), -1.0), "temperature"),
        (lambda: nt_xent(torch.randn(4), torch.randn(4)), r"\(B, D\)"),
        (lambda: NTXentLoss(temperature=0), "temperature"),
        (
            lambda: sup_con(torch.randn(4, 2, 3), torch.tensor([0, 1, 0])),
            r"labels must have shape \(4,\)",
        ),
        (lambda: sup_con(torch.randn(4, 2, 3), torch.tensor([0.0, 1, 0, 1])), "integer"),
        (lambda: sup_con(torch.randn(4, 1, 3), torch.arange(4)), "no anchor has a positive"),
        (lambda: sup_con(torch.randn(1, 1, 3), torch.arange(1)), "at least 2"),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 5)), "same shape"),
        (
            lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), negatives=torch.randn(5, 4)),
            "negatives",
        ),
        (lambda: info_nce(torch.randn(1, 3), torch.randn(1, 3)), "N >= 2"),
        (lambda: reweight_normalize(torch.randn(3, 4), 0.0), "kappa"),
    ],
)
def test_bad_input(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
    with pytest.raises(HeadkitError):
        call()  # type: ignore[operator]


TRITON_SCRIPT = textwrap.dedent(
    """
    import torch
    import headkit._contrastive as C
    from headkit.ops import nt_xent, sup_con, info_nce, reweight_normalize
    from headkit._triton import lse_forward_triton
    assert C._use_triton(torch.randn(2, 8)), "Triton path not taken"
    torch.manual_seed(0)
    def run(force):
        import os
        os.environ["HEADKIT_FORCE_TRITON"] = "1" if force else "0"
        g = torch.Generator().manual_seed(1)
        z0 = torch.randn(37, 24, generator=g).requires_grad_()
        z1 = torch.randn(37, 24, generator=g).requires_grad_()
        neg = torch.randn(50, 24, generator=g).requires_grad_()
        lab = torch.randint(0, 4, (37,), generator=g)
        h = torch.randn(5, 40, generator=g).requires_grad_()
        kap = torch.tensor(1.1, requires_grad=True)
        losses = [nt_xent(z0, z1, 0.3), sup_con(torch.stack([z0, z1], 1), lab, 0.1),
                  info_nce(z0, z1, 0.2), info_nce(z0, z1, 0.2, negatives=neg),
                  (reweight_normalize(h, kap) * torch.arange(40.)).sum()]
        out = []
        for l in losses:
            gs = torch.autograd.grad(l, [z0, z1, neg, h, kap], allow_unused=True)
            out.append((l.detach(), [None if x is None else x.detach() for x in gs]))
        return out
    a, b = run(True), run(False)
    # and against the dense reference, which builds the full similarity matrix
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(37, 24, generator=g); z1 = torch.randn(37, 24, generator=g)
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    logits = (z @ z.T / 0.3).masked_fill(torch.eye(74, dtype=torch.bool), float("-inf"))
    dense = F.cross_entropy(logits, torch.cat([torch.arange(37, 74), torch.arange(37)]))
    torch.testing.assert_close(a[0][0], dense, rtol=2e-5, atol=1e-6)
    for (la, ga), (lb, gb) in zip(a, b):
        torch.testing.assert_close(la, lb, rtol=2e-5, atol=1e-6)
        for x, y in zip(ga, gb):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    print("TRITON-INTERPRET-OK")
    """
)


def test_triton_kernels_under_interpreter() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "HEADKIT_FORCE_TRITON": "1"}
    res = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "TRITON-INTERPRET-OK" in res.stdout
