from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import headkit._kernels.lse as C
from headkit import HeadkitError, InfoNCELoss, NTXentLoss, SupConLoss
from headkit.ops import info_nce, nt_xent, reweight_normalize, sup_con

from ._dense import info_nce_dense, nt_xent_dense, sup_con_dense
from ._optional import Optional
from ._tol import magnitude, tol

lightly_loss = Optional("lightly.loss")


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


@pytest.mark.float_sensitive
def test_nt_xent_matches_lightly_float32() -> None:
    z0 = torch.randn(256, 128).requires_grad_()
    z1 = torch.randn(256, 128).requires_grad_()
    ref = lightly_loss.NTXentLoss(temperature=0.5)(z0, z1)
    ours = NTXentLoss(temperature=0.5)(z0, z1)
    # logits of size 1/T, dot products over 128, log-sum-exps over 511 terms
    n = 128 + 2 * 256
    torch.testing.assert_close(ours, ref, **tol(torch.float32, max(2.0, float(ref.detach())), n))
    for a, b in zip(grads(ours, [z0, z1]), grads(ref, [z0, z1]), strict=True):
        torch.testing.assert_close(a, b, **tol(torch.float32, magnitude(b) * 2.0, n))


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
    n, d = 256, 32
    z0 = torch.randn(n, d, requires_grad=True)
    z1 = torch.randn(n, d, requires_grad=True)
    with small_tiles(1 << 14), _Biggest() as mode:
        nt_xent(z0, z1).backward()
        sup_con(torch.stack([z0, z1], 1), torch.arange(n) % 10).backward()
        info_nce(z0, z1).backward()
    assert mode.biggest <= 1 << 14  # one tile, not (2N)^2 = 256K elements
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
        (lambda a, b: reweight_normalize(a, b[0, 0].exp()), (z0, z1)),
        (lambda a, b: nt_xent(a, b, b[0, 0].sigmoid() + 0.1), (z0, z1)),
        (lambda a, b: info_nce(a, b, torch.tensor(0.2)), (z0, z1)),
    ]:
        torch._dynamo.reset()
        explain = torch._dynamo.explain(fn)(*args)
        assert explain.graph_break_count == 0, explain.break_reasons
        assert explain.graph_count == 1
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(*args), fn(*args))


@pytest.mark.float_sensitive
def test_compiled_backward_matches_eager() -> None:
    """The registered ops (compile route) give the eager route's values and gradients."""
    z0 = torch.randn(32, 8, requires_grad=True)
    z1 = torch.randn(32, 8, requires_grad=True)
    t = torch.tensor(0.3, requires_grad=True)
    lab = torch.arange(32) % 5
    for fn in (
        lambda a, b, c: nt_xent(a, b, 0.2),
        lambda a, b, c: nt_xent(a, b, c),
        lambda a, b, c: sup_con(torch.stack([a, b], 1), lab, c),
        lambda a, b, c: info_nce(a, b, 0.1, negatives=b[:7] * 2),
        lambda a, b, c: (reweight_normalize(a, c + 1) * torch.arange(8.0)).sum(),
    ):
        compiled = torch.compile(fn, fullgraph=True)
        out_c, out_e = compiled(z0, z1, t), fn(z0, z1, t)
        # compiled kernels sum in another order: logits up to 1/0.1, 64 terms, 8-wide dots
        n = 8 + 64
        torch.testing.assert_close(out_c, out_e, **tol(torch.float32, 10 * magnitude(out_e), n))
        g1 = torch.autograd.grad(out_c, [z0, z1, t], allow_unused=True)
        g2 = torch.autograd.grad(out_e, [z0, z1, t], allow_unused=True)
        for a, b in zip(g1, g2, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, **tol(torch.float32, 10 * magnitude(b), n))


# ----------------------------------------------------------------------------- gradients


def _cases(
    t: float | torch.Tensor,
) -> dict[str, tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]]:
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z1 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    lab = torch.tensor([0, 1, 0, 2, 1])
    return {
        "nt_xent": (lambda a, b: nt_xent(a, b, t), (z0, z1)),
        "sup_con": (lambda a, b: sup_con(torch.stack([a, b], 1), lab, t), (z0, z1)),
        "sup_con_v1": (lambda a: sup_con(a, lab, t), (z0,)),
        "info_nce": (lambda a, b: info_nce(a, b, t), (z0, z1)),
        "info_nce_bank": (lambda a, b, c: info_nce(a, b, t, negatives=c), (z0, z1, neg)),
    }


@pytest.mark.parametrize("name", ["nt_xent", "sup_con", "sup_con_v1", "info_nce", "info_nce_bank"])
def test_gradcheck_and_gradgradcheck_float64(name: str) -> None:
    """First and second derivatives (create_graph=True) of every loss, tiled."""
    fn, args = _cases(0.4)[name]
    with small_tiles(24):
        assert torch.autograd.gradcheck(fn, args)
        assert torch.autograd.gradgradcheck(fn, args)


def test_reweight_normalize_gradcheck_and_gradgradcheck() -> None:
    h = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    kappa = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: reweight_normalize(a, b), (h, kappa))
    assert torch.autograd.gradgradcheck(lambda a, b: reweight_normalize(a, b), (h, kappa))
    assert torch.autograd.gradgradcheck(lambda a: reweight_normalize(a, 1.3), (h,))


def test_double_backward_gradient_penalty() -> None:
    """A gradient penalty (create_graph=True) equals the one of the dense reference."""
    z0 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    z1 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    out = []
    for fn in (lambda: nt_xent(z0, z1, 0.3), lambda: nt_xent_dense(z0, z1, 0.3)):
        (g,) = torch.autograd.grad(fn(), [z0], create_graph=True)
        pen = g.square().sum()
        out.append((pen.detach(), *torch.autograd.grad(pen, [z0, z1])))
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- temperature


@pytest.mark.parametrize(
    "temperature",
    [np.float32(0.25), np.float64(0.25), np.array(0.25), torch.tensor(0.25), torch.tensor([0.25])],
    ids=["np.float32", "np.float64", "np.0d", "tensor", "tensor1"],
)
def test_temperature_as_numpy_or_tensor(temperature: object) -> None:
    z0, z1 = torch.randn(9, 6, dtype=torch.float64), torch.randn(9, 6, dtype=torch.float64)
    want = nt_xent(z0, z1, 0.25)
    torch.testing.assert_close(nt_xent(z0, z1, temperature), want, rtol=1e-7, atol=0)  # type: ignore[arg-type]
    torch.testing.assert_close(NTXentLoss(temperature)(z0, z1), want, rtol=1e-7, atol=0)  # type: ignore[arg-type]
    torch.testing.assert_close(
        info_nce(z0, z1, temperature),  # type: ignore[arg-type]
        info_nce(z0, z1, 0.25),
        rtol=1e-7,
        atol=0,
    )
    torch.testing.assert_close(
        sup_con(torch.stack([z0, z1], 1), torch.arange(9) % 3, temperature),  # type: ignore[arg-type]
        sup_con(torch.stack([z0, z1], 1), torch.arange(9) % 3, 0.25),
        rtol=1e-7,
        atol=0,
    )


def test_learnable_temperature_matches_dense_float64() -> None:
    """CLIP-style ``logit_scale``: the temperature receives the dense reference's gradient."""
    logit_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    z0 = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    z1 = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    lab = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 4, 4, 0])
    pairs = [
        (lambda t: nt_xent(z0, z1, t), lambda t: nt_xent_dense(z0, z1, t)),
        (lambda t: info_nce(z0, z1, t), lambda t: info_nce_dense(z0, z1, t)),
        (
            lambda t: info_nce(z0, z1, t, negatives=z1[:5]),
            lambda t: info_nce_dense(z0, z1, t, z1[:5]),
        ),
        (
            lambda t: sup_con(torch.stack([z0, z1], 1), lab, t),
            lambda t: sup_con_dense(torch.stack([z0, z1], 1), lab, t),
        ),
    ]
    with small_tiles(40):
        for ours, ref in pairs:
            vals, grads = [], []
            for fn in (ours, ref):
                loss = fn(1 / logit_scale.exp())
                vals.append(loss.detach())
                grads.append(torch.autograd.grad(loss, [logit_scale, z0, z1], allow_unused=True))
            torch.testing.assert_close(vals[0], vals[1], rtol=1e-10, atol=0)
            assert grads[0][0] is not None and grads[0][0].abs() > 0
            for a, b in zip(*grads, strict=True):
                if b is not None:
                    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    with small_tiles(24):
        assert torch.autograd.gradcheck(lambda a, b, c: nt_xent(a, b, c), (z0[:5], z1[:5], t))
        assert torch.autograd.gradcheck(
            lambda a, b, c: sup_con(torch.stack([a, b], 1), lab[:5], c), (z0[:5], z1[:5], t)
        )
        assert torch.autograd.gradgradcheck(lambda a, b, c: info_nce(a, b, c), (z0[:5], z1[:5], t))


@pytest.mark.float_sensitive
def test_learnable_temperature_trains_in_the_module() -> None:
    temp = torch.nn.Parameter(torch.tensor(0.5))
    crit = NTXentLoss(temperature=temp)
    assert [p for p in crit.parameters()] == [temp]
    z0, z1 = torch.randn(16, 8), torch.randn(16, 8)
    crit(z0, z1).backward()
    assert temp.grad is not None and temp.grad.abs() > 0
    # a constant tensor is a buffer: it moves with the module
    const = NTXentLoss(temperature=torch.tensor(0.5)).double()
    assert const.temperature.dtype == torch.float64  # type: ignore[union-attr]
    want = crit(z0, z1).detach()
    torch.testing.assert_close(const(z0, z1), want, **tol(torch.float32, 2 * float(want), 8 + 32))


def test_negative_temperature_as_lightly() -> None:
    """lightly accepts any temperature with abs >= 1e-8 (its tests use -1.0)."""
    z0 = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    z1 = torch.randn(7, 5, dtype=torch.float64)
    ref = lightly_loss.NTXentLoss(temperature=-1.0)(z0, z1)
    ours = NTXentLoss(temperature=-1.0)(z0, z1)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(
        torch.autograd.grad(ours, z0)[0], torch.autograd.grad(ref, z0)[0], rtol=1e-9, atol=1e-12
    )


# ----------------------------------------------------------------------------- edge cases


def test_batch_of_one_is_zero_with_zero_gradients_as_lightly() -> None:
    z0 = torch.randn(1, 8, requires_grad=True)
    z1 = torch.randn(1, 8, requires_grad=True)
    t = torch.tensor(0.2, requires_grad=True)
    ref = lightly_loss.NTXentLoss()(z0, z1)
    assert ref.item() == 0.0
    for loss in (
        nt_xent(z0, z1),
        NTXentLoss()(z0, z1),
        nt_xent(z0, z1, t),
        info_nce(z0, z1),
        sup_con(torch.stack([z0, z1], 1), torch.tensor([3]), t),
        SupConLoss()(z0, z1),
    ):
        assert loss.item() == 0.0 and loss.requires_grad
        grads = torch.autograd.grad(loss, [z0, z1], allow_unused=True)
        for g in grads:
            assert g is not None and torch.equal(g, torch.zeros_like(g))
    loss = nt_xent(z0, z1, t)
    loss.backward()  # a trailing batch of one trains without error
    assert t.grad is not None and t.grad.item() == 0.0


def test_sup_con_float_labels() -> None:
    z = torch.randn(6, 2, 5, dtype=torch.float64)
    ints = torch.tensor([0, 1, 1, 2, 0, 2])
    want = sup_con(z, ints)
    for labels in (ints.double(), ints.float(), ints.half(), ints[:, None].float()):
        torch.testing.assert_close(sup_con(z, labels), want, rtol=0, atol=0)
    with pytest.raises(HeadkitError, match=r"non-integer value 1\.5 at index 2"):
        sup_con(z, torch.tensor([0.0, 1.0, 1.5, 2.0, 0.0, 2.0]))
    with pytest.raises(HeadkitError, match="nan"):
        sup_con(z, torch.tensor([0.0, 1.0, float("nan"), 2.0, 0.0, 2.0]))


def test_sup_con_lightly_call_form() -> None:
    """lightly's SupConLoss(out0, out1, labels) call and rescale argument."""
    out0, out1 = torch.randn(8, 10, dtype=torch.float64), torch.randn(8, 10, dtype=torch.float64)
    lab = torch.Tensor([0, 1, 1, 2, 2, 2, 0, 3])
    want = sup_con(torch.stack([out0, out1], 1), lab.long(), 0.5)
    torch.testing.assert_close(SupConLoss(0.5)(out0, out1, lab), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        SupConLoss(0.5, rescale=True)(out0, out1, lab), 0.5 * want, rtol=1e-12, atol=0
    )
    # without labels: SimCLR's loss
    torch.testing.assert_close(
        SupConLoss(0.5)(out0, out1), nt_xent(out0, out1, 0.5), rtol=1e-12, atol=0
    )


def test_mixed_dtypes_promote() -> None:
    z0, z1 = torch.randn(6, 4), torch.randn(6, 4, dtype=torch.float64)
    out = nt_xent(z0, z1, 0.3)
    torch.testing.assert_close(out.double(), nt_xent(z0.double(), z1, 0.3), rtol=1e-12, atol=0)


def test_eager_route_does_not_import_dynamo() -> None:
    """The first call of a loss must not import torch._dynamo (about 160 MiB resident)."""
    code = (
        "import sys, torch, headkit\n"
        "from headkit.ops import nt_xent, sup_con, info_nce, reweight_normalize\n"
        "z0 = torch.randn(32, 8, requires_grad=True); z1 = torch.randn(32, 8, requires_grad=True)\n"
        "nt_xent(z0, z1).backward(); info_nce(z0, z1).backward()\n"
        "sup_con(torch.stack([z0, z1], 1), torch.arange(32) % 4).backward()\n"
        "reweight_normalize(z0, 1.1).sum().backward()\n"
        "headkit.NTXentLoss(memory_bank_size=(64, 8))(z0, z1).backward()\n"
        "assert 'torch._dynamo' not in sys.modules, 'eager route imported torch._dynamo'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------- distributed checks


def test_gather_distributed_without_torch_distributed_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    for make in (
        lambda: NTXentLoss(gather_distributed=True),
        lambda: SupConLoss(gather_distributed=True),
        lambda: InfoNCELoss(gather_distributed=True),
        lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 3), gather_distributed=True),
    ):
        with pytest.raises(ValueError, match=r"torch\.distributed is not available"):
            make()
    with pytest.raises(ValueError):
        lightly_loss.NTXentLoss(gather_distributed=True)


def test_gather_distributed_without_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """No process group: one process (as lightly), unless a launcher set WORLD_SIZE > 1."""
    z0, z1 = torch.randn(6, 4), torch.randn(6, 4)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    crit = NTXentLoss(gather_distributed=True)
    torch.testing.assert_close(crit(z0, z1), nt_xent(z0, z1))
    torch.testing.assert_close(
        crit(z0, z1), lightly_loss.NTXentLoss(gather_distributed=True)(z0, z1)
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    for call in (
        lambda: crit(z0, z1),
        lambda: info_nce(z0, z1, gather_distributed=True),
        lambda: sup_con(torch.stack([z0, z1], 1), None, gather_distributed=True),
    ):
        with pytest.raises(HeadkitError, match=r"WORLD_SIZE=2.*not initialised"):
            call()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(5, 3)), "same shape"),
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 3), 0.0), "temperature"),
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 3), 1e-9), "temperature"),
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 3), float("nan")), "temperature"),
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 3), "0.5"), "temperature"),  # type: ignore[arg-type]
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(4, 3), torch.ones(2)), "temperature"),
        (lambda: nt_xent(torch.randn(4), torch.randn(4)), r"\(B, D\)"),
        (lambda: nt_xent(torch.randn(0, 3), torch.randn(0, 3)), "empty"),
        (lambda: NTXentLoss(temperature=0), "temperature"),
        (lambda: NTXentLoss(memory_bank_size=-1), "non-negative"),
        (lambda: NTXentLoss(memory_bank_size=16), r"size=\(16, dim\)"),
        (lambda: NTXentLoss(memory_bank_size=(16, 4, 2)), "num_features, dim"),
        (
            lambda: sup_con(torch.randn(4, 2, 3), torch.tensor([0, 1, 0])),
            r"labels must have shape \(4,\)",
        ),
        (lambda: sup_con(torch.randn(4, 1, 3), torch.arange(4)), "no anchor has a positive"),
        (lambda: sup_con(torch.randn(1, 1, 3), torch.arange(1)), "at least 2"),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 5)), "same shape"),
        (
            lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), negatives=torch.randn(5, 4)),
            "negatives",
        ),
        (lambda: reweight_normalize(torch.randn(3, 4), 0.0), "kappa"),
    ],
)
def test_bad_input(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
    with pytest.raises(HeadkitError):
        call()  # type: ignore[operator]
