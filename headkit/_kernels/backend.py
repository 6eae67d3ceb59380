"""Which implementation an op runs: Triton kernels or the tiled PyTorch path.

``HEADKIT_TRITON`` decides:

- unset (auto): Triton for CUDA tensors when Triton imports, after a one-time self-check per
  (op, device, dtype, feature block, dot precision) that runs the kernels on a small input and
  compares them with the PyTorch path. A kernel that raises or disagrees is reported once with a
  `RuntimeWarning` that gives the numbers, and that key uses the PyTorch path from then on.
- ``0``: always the PyTorch path (``HEADKIT_DISABLE_TRITON=1`` is an alias).
- ``1``: Triton wherever it can run (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``),
  without the self-check; an error is raised, not hidden.

This module never imports Triton itself; the kernels live in ``headkit._kernels.triton``.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .._errors import HeadkitError

__all__ = [
    "TRITON_DEVICE_TYPES",
    "CheckResult",
    "block_d",
    "check_verdict",
    "compute_dtype",
    "dot_precision",
    "mark_failed",
    "register_check",
    "reset",
    "triton_available",
    "triton_mode",
    "triton_status",
    "use_triton",
]

# device types the auto mode sends to Triton; tests add "cpu" (with TRITON_INTERPRET=1) to
# exercise the self-check and the fallback on a machine without a GPU
TRITON_DEVICE_TYPES: set[str] = {"cuda"}

# (ok, detail): detail names the failing quantity and its error when not ok
CheckResult = tuple[bool, str]
_CHECKS: dict[str, Callable[[torch.device, torch.dtype, int, str], CheckResult]] = {}
_VERDICT: dict[tuple[str, str, torch.dtype, int, str], bool] = {}


def triton_mode() -> str:
    """``"auto"``, ``"0"`` or ``"1"`` from ``HEADKIT_TRITON`` (``HEADKIT_DISABLE_TRITON=1``: "0")."""
    mode = os.environ.get("HEADKIT_TRITON", "").strip().lower()
    if mode in ("0", "false", "off", "no"):
        return "0"
    if mode in ("1", "true", "on", "yes"):
        return "1"
    if mode not in ("", "auto"):
        raise HeadkitError(f"HEADKIT_TRITON must be 0, 1 or unset, got {mode!r}")
    if os.environ.get("HEADKIT_DISABLE_TRITON", "0") == "1":
        return "0"
    return "auto"


@functools.cache
def triton_available() -> bool:
    """True when Triton imports (the kernels can then run on CUDA, or on the CPU interpreted)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, the dtype itself otherwise (float32/float64)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def block_d(d: int) -> int:
    """Feature block of the Triton kernels: the next power of two >= ``d``, at least 16."""
    return max(16, 1 << max(0, d - 1).bit_length())


def dot_precision(dtype: torch.dtype) -> str:
    """Triton ``input_precision`` that follows PyTorch's float32 matmul setting.

    float32 uses IEEE dot products only where PyTorch would
    (``torch.get_float32_matmul_precision() == "highest"`` and no ``fp32_precision = "tf32"``
    override), TF32 tensor cores otherwise; bfloat16 and float16 always use tensor cores.
    """
    if dtype != torch.float32:
        return "tf32"  # ignored by Triton for 16-bit inputs: they use tensor cores
    override = getattr(torch.backends.cuda.matmul, "fp32_precision", "none")
    if override == "tf32":
        return "tf32"
    if override == "ieee":
        return "ieee"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def register_check(
    op: str, fn: Callable[[torch.device, torch.dtype, int, str], CheckResult]
) -> None:
    """Register the self-check of ``op``: ``fn(device, dtype, block_d, precision)``."""
    _CHECKS[op] = fn


def _key(
    op: str, device: torch.device, dtype: torch.dtype, block_d: int
) -> tuple[str, str, torch.dtype, int, str]:
    return (op, str(device), dtype, block_d, dot_precision(dtype))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        try:
            return f"{device} ({torch.cuda.get_device_name(device)})"
        except Exception:
            return str(device)
    return str(device)


def mark_failed(
    op: str, device: torch.device, dtype: torch.dtype, block_d: int, detail: str
) -> None:
    """Record that ``op`` failed for this key and warn once; later calls use PyTorch."""
    key = _key(op, device, dtype, block_d)
    if _VERDICT.get(key) is False:
        return
    _VERDICT[key] = False
    warnings.warn(
        f"headkit: the Triton kernel of {op} on {_device_name(device)}, {dtype}, "
        f"block D={block_d}, dot precision {key[4]}: {detail}. Using the tiled PyTorch path "
        "for this device and dtype from now on (HEADKIT_TRITON=1 forces Triton, "
        "HEADKIT_TRITON=0 skips it and this check).",
        RuntimeWarning,
        stacklevel=3,
    )


def use_triton(
    op: str, device: torch.device, dtype: torch.dtype, block_d: int, supported: bool = True
) -> bool:
    """Whether ``op`` runs the Triton kernels (runs the self-check on first use).

    Args:
        op: op name, as given to `register_check`.
        device: device of the inputs.
        dtype: the dtype the kernel computes its dot products in (selects the kernel variant).
        block_d: the feature block the kernel would use (part of the check's key).
        supported: False when the kernels do not cover this input (float64, too wide).
    """
    mode = triton_mode()
    if mode == "0" or not supported or device.type == "meta":
        return False
    if mode == "1":
        if device.type != "cuda" and not (device.type == "cpu" and _interpreting()):
            return False
        if not triton_available():
            raise HeadkitError(
                "HEADKIT_TRITON=1 asks for the Triton kernels, but triton does not import; "
                "install triton or unset HEADKIT_TRITON"
            )
        return True
    if device.type not in TRITON_DEVICE_TYPES:
        return False
    if device.type == "cpu" and not _interpreting():
        return False
    if not triton_available():
        return False
    key = _key(op, device, dtype, block_d)
    verdict = _VERDICT.get(key)
    if verdict is None:
        try:
            ok, detail = _CHECKS[op](device, dtype, block_d, key[4])
        except Exception as err:  # a kernel that does not compile or crashes
            ok, detail = False, f"raised {type(err).__name__}: {err}"
        if ok:
            _VERDICT[key] = True
        else:
            mark_failed(op, device, dtype, block_d, detail)
        verdict = ok
    return verdict


def triton_status() -> dict[str, object]:
    """Which path the ops take here: ``{"available": bool, "mode": "auto" | "0" | "1",
    "verdicts": {(op, device, dot dtype, block D, precision): Triton used}}``.

    The verdicts are those of the self-checks run so far in this process (empty before the
    first op on a CUDA tensor).

    Example:
        >>> from headkit.ops import triton_status
        >>> sorted(triton_status())
        ['available', 'mode', 'verdicts']
    """
    return {"available": triton_available(), "mode": triton_mode(), "verdicts": dict(_VERDICT)}


def reset() -> None:
    """Forget every self-check verdict (tests)."""
    _VERDICT.clear()


def rel_err(x: Tensor, ref: Tensor) -> float:
    """Largest absolute error of ``x`` against ``ref``, relative to ``ref``'s largest magnitude."""
    x, ref = x.double(), ref.double()
    if not bool(torch.isfinite(x).all()):
        return math.inf
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1.0)) if ref.numel() else 0.0


def check_verdict(errs: dict[str, float], tol: float, shape: str) -> CheckResult:
    """A self-check's verdict from ``{quantity: relative error}``: failed, with the worst
    quantity named, when it exceeds ``tol``; ``shape`` describes the check's input."""
    what, worst = max(errs.items(), key=lambda kv: kv[1])
    if worst > tol:
        return False, (
            f"disagrees with the PyTorch path on a {shape} check: max relative error "
            f"{worst:.3g} in {what}, tolerance {tol:.0e}"
        )
    return True, ""
