"""Triton kernels on the CPU under ``TRITON_INTERPRET=1``: equal to the tiled PyTorch path,
the first-use self-check, the fallback (with one warning that gives the numbers) when a kernel
is deliberately broken or raises, and the ``HEADKIT_TRITON`` switch.

Each case runs in a fresh process: Triton reads ``TRITON_INTERPRET`` at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from headkit import HeadkitError
from headkit._kernels import backend as _backend

pytest.importorskip("triton")

PRELUDE = textwrap.dedent(
    """
    import warnings
    import torch
    import headkit._kernels.backend as B
    import headkit._kernels.lse as L
    from headkit.ops import nt_xent, sup_con, info_nce, reweight_normalize

    def losses(dtype=torch.float32):
        g = torch.Generator().manual_seed(1)
        z0 = torch.randn(37, 24, generator=g).to(dtype).requires_grad_()
        z1 = torch.randn(37, 24, generator=g).to(dtype).requires_grad_()
        neg = torch.randn(50, 24, generator=g).to(dtype).requires_grad_()
        lab = torch.randint(0, 4, (37,), generator=g)
        h = torch.randn(5, 40, generator=g).to(dtype).requires_grad_()
        kap = torch.tensor(1.1, requires_grad=True)
        t = torch.tensor(0.25, requires_grad=True)
        out = []
        for l in [nt_xent(z0, z1, 0.3), nt_xent(z0, z1, t), sup_con(torch.stack([z0, z1], 1), lab, 0.1),
                  info_nce(z0, z1, 0.2), info_nce(z0, z1, 0.2, negatives=neg),
                  (reweight_normalize(h, kap) * torch.arange(40.)).sum()]:
            gs = torch.autograd.grad(l, [z0, z1, neg, h, kap, t], allow_unused=True)
            out.append((l.detach().double(), [None if x is None else x.detach().double() for x in gs]))
        return out

    def same(a, b, rtol, atol):
        for (la, ga), (lb, gb) in zip(a, b):
            torch.testing.assert_close(la, lb, rtol=rtol, atol=atol)
            for x, y in zip(ga, gb):
                assert (x is None) == (y is None)
                if x is not None:
                    torch.testing.assert_close(x, y, rtol=rtol * 10, atol=atol * 10)

    class Spy:
        def __init__(self, mod, name):
            self.calls, self.mod, self.name = 0, mod, name
            self.real = getattr(mod, name)
            setattr(mod, name, self)
        def __call__(self, *a, **k):
            self.calls += 1
            return self.real(*a, **k)
    """
)


def run(body: str, **env: str) -> str:
    full = {**os.environ, "TRITON_INTERPRET": "1", **env}
    full.pop("HEADKIT_DISABLE_TRITON", None)
    if "HEADKIT_TRITON" not in env:
        full.pop("HEADKIT_TRITON", None)
    res = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        env=full,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


def test_kernels_equal_the_pytorch_path() -> None:
    """HEADKIT_TRITON=1 forces the kernels on CPU tensors (interpreted): every loss, both
    temperature forms and reweight_normalize give the PyTorch path's values and gradients."""
    out = run(
        """
        import headkit._kernels.triton as T
        fwd = Spy(T, "lse_forward"); bwd = Spy(T, "lse_backward"); rwn = Spy(T, "rwn_forward")
        a = losses()
        assert fwd.calls >= 5 and bwd.calls >= 5 and rwn.calls == 1, (fwd.calls, bwd.calls)
        import os; os.environ["HEADKIT_TRITON"] = "0"
        n = fwd.calls
        b = losses()
        assert fwd.calls == n and rwn.calls == 1
        same(a, b, 2e-5, 1e-6)
        # half-precision inputs: the kernels round each tile to the input's dtype for the dots
        os.environ["HEADKIT_TRITON"] = "1"
        c = losses(torch.bfloat16)
        os.environ["HEADKIT_TRITON"] = "0"
        d = losses(torch.bfloat16)
        same(c, d, 2e-2, 2e-2)
        print("KERNELS-OK")
        """,
        HEADKIT_TRITON="1",
    )
    assert "KERNELS-OK" in out


def test_self_check_passes_and_the_kernels_are_used() -> None:
    out = run(
        """
        import headkit._kernels.triton as T
        B.TRITON_DEVICE_TYPES.add("cpu")  # treat the interpreted CPU as a Triton device
        fwd = Spy(T, "lse_forward")
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="headkit")
            a = losses()
        assert fwd.calls > 5, fwd.calls  # the check's runs and the losses' runs
        assert all(B._VERDICT.values()) and len(B._VERDICT) >= 2, B._VERDICT
        print("CHECK-OK")
        """
    )
    assert "CHECK-OK" in out


def test_broken_kernel_falls_back_with_one_warning() -> None:
    """A kernel that computes wrong logits is caught by the first-use check: one warning with
    the numbers, then the PyTorch path (equal results)."""
    out = run(
        """
        import triton, triton.language as tl
        import headkit._kernels.triton as T
        B.TRITON_DEVICE_TYPES.add("cpu")
        real_tile = T._tile

        @triton.jit
        def broken_tile(q, k, rm, rn, A, N, ql, kl, sf, pi, inv_t, PREC: tl.constexpr,
                        DOT: tl.constexpr, POS_MODE: tl.constexpr, HAS_SELF: tl.constexpr):
            s, valid, pos = real_tile(q, k, rm, rn, A, N, ql, kl, sf, pi, inv_t, PREC, DOT,
                                      POS_MODE, HAS_SELF)
            return s * 1.5, valid, pos

        T._tile = broken_tile
        fwd = Spy(T, "lse_forward")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = losses()
            a2 = losses()
        msgs = [str(w.message) for w in caught if "Triton kernel" in str(w.message)]
        assert len(msgs) == 1, msgs  # once per device and dtype
        assert "contrastive_lse" in msgs[0] and "max relative error" in msgs[0], msgs[0]
        print(msgs[0])
        assert fwd.calls == 3, fwd.calls  # only the check's three runs
        import os; os.environ["HEADKIT_TRITON"] = "0"
        ref = losses()
        same(a[:5], ref[:5], 1e-12, 1e-12)  # the contrastive losses: the PyTorch path exactly
        same(a2[:5], ref[:5], 1e-12, 1e-12)
        same(a[5:], ref[5:], 2e-5, 1e-6)  # reweight_normalize kept its (passing) kernel
        print("FALLBACK-OK")
        """
    )
    assert "FALLBACK-OK" in out
    assert "tolerance" in out


@pytest.fixture
def cpu_as_triton_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process: CPU tensors count as a Triton device (no kernel is launched here)."""
    monkeypatch.setattr(_backend, "TRITON_DEVICE_TYPES", {"cuda", "cpu"})
    monkeypatch.setattr(_backend, "_interpreting", lambda: True)
    monkeypatch.setattr(_backend, "_VERDICT", {})
    monkeypatch.delenv("HEADKIT_TRITON", raising=False)
    monkeypatch.delenv("HEADKIT_DISABLE_TRITON", raising=False)


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("out of resources: shared memory")


def test_raising_kernel_falls_back_with_one_warning(
    cpu_as_triton_device: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headkit._kernels.triton as T
    from headkit.ops import nt_xent

    key = ("contrastive_lse", "cpu", torch.float32, 16, _backend.dot_precision(torch.float32))
    _backend._VERDICT[key] = True  # its self-check passed; the kernel fails on a later input
    monkeypatch.setattr(T, "lse_forward", _boom)
    z0, z1 = torch.randn(9, 16), torch.randn(9, 16)
    with pytest.warns(RuntimeWarning, match="raised RuntimeError: out of resources") as rec:
        out = nt_xent(z0, z1)
        out2 = nt_xent(z0, z1)
    assert len([w for w in rec if "Triton kernel" in str(w.message)]) == 1
    assert _backend._VERDICT[key] is False
    monkeypatch.setenv("HEADKIT_TRITON", "0")
    torch.testing.assert_close(out, nt_xent(z0, z1), rtol=0, atol=0)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)


def test_forced_triton_does_not_hide_errors(
    cpu_as_triton_device: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headkit._kernels.triton as T
    from headkit.ops import nt_xent

    monkeypatch.setattr(T, "lse_forward", _boom)
    monkeypatch.setenv("HEADKIT_TRITON", "1")
    with pytest.raises(RuntimeError, match="out of resources"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8))


@pytest.mark.parametrize("env", [{"HEADKIT_TRITON": "0"}, {"HEADKIT_DISABLE_TRITON": "1"}])
def test_switch_off(
    cpu_as_triton_device: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    import headkit._kernels.triton as T
    from headkit.ops import nt_xent

    monkeypatch.setattr(T, "lse_forward", _boom)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nt_xent(torch.randn(4, 8), torch.randn(4, 8))  # never reaches the (raising) kernel
    assert not _backend._VERDICT
    assert not _backend.use_triton("contrastive_lse", torch.device("cuda"), torch.float32, 64)


def test_mode_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADKIT_DISABLE_TRITON", raising=False)
    for value, mode in [("0", "0"), ("1", "1"), ("", "auto"), ("auto", "auto"), ("off", "0")]:
        monkeypatch.setenv("HEADKIT_TRITON", value)
        assert _backend.triton_mode() == mode
    monkeypatch.setenv("HEADKIT_TRITON", "maybe")
    with pytest.raises(HeadkitError, match="HEADKIT_TRITON"):
        _backend.triton_mode()
    monkeypatch.delenv("HEADKIT_TRITON")
    monkeypatch.setenv("HEADKIT_DISABLE_TRITON", "1")
    assert _backend.triton_mode() == "0"


def test_without_triton_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """No triton: auto mode uses PyTorch everywhere; HEADKIT_TRITON=1 says what is missing."""
    monkeypatch.setattr(_backend, "triton_available", lambda: False)
    monkeypatch.delenv("HEADKIT_TRITON", raising=False)
    monkeypatch.delenv("HEADKIT_DISABLE_TRITON", raising=False)
    cuda = torch.device("cuda")
    assert not _backend.use_triton("contrastive_lse", cuda, torch.float32, 128)
    monkeypatch.setenv("HEADKIT_TRITON", "1")
    with pytest.raises(HeadkitError, match="triton does not import"):
        _backend.use_triton("contrastive_lse", cuda, torch.float32, 128)


def test_dot_precision_follows_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert _backend.dot_precision(torch.float32) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert _backend.dot_precision(torch.float32) == "tf32"
        torch.set_float32_matmul_precision("medium")
        assert _backend.dot_precision(torch.float32) == "tf32"
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = True
        assert _backend.dot_precision(torch.float32) == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = False
        assert _backend.dot_precision(torch.float32) == "ieee"
    finally:
        torch.set_float32_matmul_precision(old)
        torch.backends.cuda.matmul.allow_tf32 = False
