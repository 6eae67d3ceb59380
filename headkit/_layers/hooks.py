"""The hook primitives that taps and cuts share.

A tap's hooks are instances of module-level classes that hold a shared `TapState` (not the tap,
so a dropped tap is collected): a model pickles while a tap is open, and a copy of a hook
(``copy.deepcopy`` of the model, pickle, ``torch.save``) is an inert hook that never records into
the tap and never changes the copy's output. `copy_module_tree` copies a module tree without its
weights and without tap hooks (cuts and dry runs build on it).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import sys
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._errors import HeadkitError
from .model import LayerSpec
from .pool import pick_tensor

if TYPE_CHECKING:
    from .tap import LayerTap

__all__ = [
    "CALLS",
    "Enter",
    "Exit",
    "Outputs",
    "Record",
    "RecordPre",
    "Slot",
    "StopForward",
    "TapState",
    "batch_size",
    "copy_module_tree",
    "detach",
    "in_backward",
    "pick_call",
    "ran_twice",
    "strip_tap_hooks",
]

Slot = tuple[str, bool]  # (module name, pre)

# call counts of tapped modules seen in complete forwards, per module object: lets tap(x) stop
# early after the right call of a module, and know that a module runs once
CALLS: weakref.WeakKeyDictionary[nn.Module, dict[bool, int]] = weakref.WeakKeyDictionary()


class StopForward(Exception):
    """Raised by a hook to end a forward early (caught by `LayerTap`)."""


def in_backward() -> bool:
    """True during an activation-checkpoint recompute (inside the backward pass)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_autograd_node() is not None


# ----------------------------------------------------------------------------- hooks
# Hooks are instances of module-level classes: a model pickles while a tap is open. A copy of a
# hook (copy.deepcopy of the model, pickle, torch.save) is an inert hook that never records
# into the tap and never changes the copy's output.


class _Inert:
    """What a tap hook becomes in a copied or unpickled model: does nothing."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __repr__(self) -> str:
        return "headkit inert hook (a copy of a LayerTap hook)"


class _TapHook:
    """Base of the tap hooks: copies and pickles as `_Inert`."""

    state: TapState

    def __deepcopy__(self, memo: dict[int, Any]) -> _Inert:
        return _Inert()

    def __copy__(self) -> _Inert:
        return _Inert()

    def __reduce__(self) -> tuple[type[_Inert], tuple[()]]:
        return (_Inert, ())


class Enter(_TapHook):
    """Forward-pre hook on the root and every ancestor of a tapped module: a forward begins
    when the first of them is entered (per-forward call counts reset)."""

    def __init__(self, state: TapState, root: bool) -> None:
        self.state = state
        self.root = root

    def __call__(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        st = self.state
        if st.closed or not st.active or in_backward():
            return
        if st.depth == 0:
            st.begin(module, args, kwargs, self.root)
        st.depth += 1


class Exit(_TapHook):
    """Forward hook (``always_call``) paired with `Enter`."""

    def __init__(self, state: TapState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: Any, out: Any) -> None:
        st = self.state
        if st.closed or not st.active or in_backward() or st.depth == 0:
            return
        st.depth -= 1
        if st.depth == 0:
            st.end(aborted=sys.exc_info()[0] is not None)


class Record(_TapHook):
    """Forward hook that records a module's output."""

    def __init__(self, state: TapState, slot: Slot) -> None:
        self.state = state
        self.slot = slot

    def __call__(self, module: nn.Module, args: Any, out: Any) -> None:
        st = self.state
        if st.closed or not st.active or in_backward():
            return
        st.record(self.slot, out)


class RecordPre(_TapHook):
    """Forward-pre hook that records a module's input (its first positional argument, else its
    first tensor keyword argument)."""

    def __init__(self, state: TapState, slot: Slot, clone: bool) -> None:
        self.state = state
        self.slot = slot
        self.clone = clone

    def __call__(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        st = self.state
        if st.closed or not st.active or in_backward():
            return
        value: Any = (
            args[0] if args else next((v for v in kwargs.values() if isinstance(v, Tensor)), None)
        )
        if value is None:
            raise HeadkitError(
                f"LayerTap: {self.slot[0]!r} was called without an input to read (no positional "
                "argument and no tensor keyword argument)"
            )
        if self.clone and isinstance(value, Tensor):
            value = value.clone()  # the module changes its input in place
        st.record(self.slot, value)


# ----------------------------------------------------------------------------- state


class TapState:
    """What the hooks share; the hooks hold this, not the tap, so a dropped tap is collected."""

    def __init__(self, tap: LayerTap) -> None:
        self.modules: dict[Slot, nn.Module] = {}
        self.detach = tap.detach
        self.closed = False
        self.active = False
        self.depth = 0
        self.stopping = False  # tap(x): raise StopForward once every target is complete
        self.no_stop = False  # set when a stop would lose gradients (reentrant checkpoint)
        # a full forward that only learns call counts: keep copies, as a stopped forward would
        # return the values before any later in-place change
        self.clone = False
        self.grad_at_start = False
        self.root_ran = False
        self.any_ran = False
        self.completed = False  # the last forward ran to its end
        self.counts: dict[Slot, int] = {}
        self.values: dict[Slot, dict[int, Any]] = {}
        self.versions: dict[tuple[Slot, int], int] = {}
        self.suspects: set[Slot] = set()
        # what to keep per slot: every call, or these call indices
        self.keep_all: set[Slot] = set()
        self.keep: dict[Slot, set[int]] = {}
        self.once: set[Slot] = set()  # call=None: a second call is an error
        self.need: dict[Slot, int] = {}  # tap(x): calls needed before stopping
        # the call
        self.batch: int | None = None
        self.mask: Tensor | None = None
        self.input_ids: Tensor | None = None
        self.text = False
        self.mask_names: tuple[bool, bool] = (False, False)
        self.signature: inspect.Signature | None = None

    def clear(self) -> None:
        self.counts.clear()
        self.values.clear()
        self.versions.clear()
        self.suspects.clear()
        self.root_ran = False
        self.any_ran = False
        self.completed = False
        self.batch = None
        self.mask = None
        self.input_ids = None
        self.text = False

    def begin(self, module: nn.Module, args: Any, kwargs: Any, root: bool) -> None:
        self.clear()
        self.root_ran = root
        self.grad_at_start = torch.is_grad_enabled()
        self.batch = batch_size(args, kwargs)
        if root:
            self._capture(args, kwargs)

    def _capture(self, args: Any, kwargs: dict[str, Any]) -> None:
        has_mask, has_ids = self.mask_names
        if not (has_mask or has_ids):
            return
        bound: dict[str, Any] = dict(kwargs)
        if args and self.signature is not None:
            with contextlib.suppress(TypeError):
                bound = dict(self.signature.bind_partial(*args, **kwargs).arguments)
        mask = bound.get("attention_mask")
        self.mask = mask if isinstance(mask, Tensor) else None
        ids = bound.get("input_ids")
        self.input_ids = ids if isinstance(ids, Tensor) else None
        self.text = self.input_ids is not None

    def end(self, aborted: bool) -> None:
        if aborted or not self.root_ran:
            return
        self.completed = True
        for slot, module in self.modules.items():
            calls = CALLS.setdefault(module, {})
            calls[slot[1]] = self.counts.get(slot, 0)

    def record(self, slot: Slot, out: Any) -> None:
        self.any_ran = True
        n = self.counts.get(slot, 0)
        self.counts[slot] = n + 1
        if slot not in self.keep_all and n not in self.keep.get(slot, ()):
            return
        if self.detach:
            out = detach(out)
        elif self.grad_at_start and not torch.is_grad_enabled():
            # reentrant activation checkpointing (or a no_grad block inside the model): the
            # output may carry no gradient; checked when it is read (a checkpointed block's own
            # output gets its gradient when the checkpoint returns: never stop, never copy)
            self.suspects.add(slot)
            self.no_stop = True
        if self.clone and slot not in self.suspects:
            out = _map_tensors(out, torch.Tensor.clone)
        self.values.setdefault(slot, {})[n] = out
        t, _ = pick_tensor(out)
        if isinstance(t, Tensor) and not torch.compiler.is_compiling() and not t.is_inference():
            self.versions[(slot, n)] = t._version
        if self.stopping and not self.no_stop and self._complete():
            raise StopForward

    def _complete(self) -> bool:
        return all(self.counts.get(s, 0) >= n for s, n in self.need.items())


def pick_call(
    who: str, name: str, call: int | None, n: int, note: str = "", *, static: bool = False
) -> int:
    """The position of call ``call`` (negative: from the end) among the ``n`` calls of module
    ``name`` in one forward; ``call=None`` is the only call, and raises when there are several
    (a shared or weight-tied module: ``note`` may say where it is registered). ``static``: ``n``
    was read from the model's structure, not counted in a forward."""
    ran = "runs" if static else "ran"
    if call is None:
        if n > 1:
            raise HeadkitError(
                f"{who}: module {name!r} {ran} {n} times in one forward (a shared or weight-tied "
                f"module{note}); say which call to cut at: call=0 (the first), call=-1 (the "
                f"last), or '{name}@-1'"
            )
        return 0
    k = call + n if call < 0 else call
    if not 0 <= k < n:
        raise HeadkitError(
            f"{who}: call {call} of {name!r}, which {ran} {n} time(s) in one forward"
        )
    return k


def ran_twice(slot: Slot, n: int) -> HeadkitError:
    name, pre = slot
    what = f"{name}:in" if pre else name
    return HeadkitError(
        f"LayerTap: module {name!r} ran {n} times in one forward (a shared or weight-tied "
        f"module), and the tap did not say which call to read. Choose one: call=0 (the first), "
        f"call=-1 (the last), call='all' (a list of every call), or per layer '{what}@-1' / "
        f"'{what}@*'"
    )


def batch_size(args: Any, kwargs: dict[str, Any]) -> int | None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, Tensor) and v.dim() >= 1:
            return int(v.shape[0])
    return None


def _map_tensors(out: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(out, Tensor):
        return fn(out)
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return type(out)(*(_map_tensors(o, fn) for o in out))
    if isinstance(out, tuple):
        return tuple(_map_tensors(o, fn) for o in out)
    if isinstance(out, list):
        return [_map_tensors(o, fn) for o in out]
    if isinstance(out, dict):
        d = copy.copy(out)
        for k, v in out.items():
            d[k] = _map_tensors(v, fn)
        return d
    return out


def detach(out: Any) -> Any:
    return _map_tensors(out, torch.Tensor.detach)


def _is_tap_hook(fn: object) -> bool:
    return isinstance(fn, (_TapHook, _Inert))


def _is_hf_capture_hook(fn: object) -> bool:
    return getattr(fn, "__module__", "") == "transformers.utils.output_capturing"


def strip_tap_hooks(model: nn.Module) -> None:
    """Remove every LayerTap hook (and Hugging Face's output-capture closures, which do not
    pickle and are reinstalled when needed) from a copied module tree."""
    for m in model.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for hid, fn in list(hooks.items()):
                if _is_tap_hook(fn) or _is_hf_capture_hook(fn):
                    del hooks[hid]
                    for extra in (
                        m._forward_hooks_with_kwargs,
                        m._forward_hooks_always_called,
                        m._forward_pre_hooks_with_kwargs,
                    ):
                        extra.pop(hid, None)
        if "_output_capturing_hooks_installed" in m.__dict__:
            del m.__dict__["_output_capturing_hooks_installed"]


def copy_module_tree(model: nn.Module, *, meta: bool = False) -> nn.Module:
    """Copy the module tree without copying weights and without tap hooks.

    With ``meta=False`` the copy shares every parameter and buffer (the same tensors); with
    ``meta=True`` they are replaced by empty meta tensors (for dry runs).
    """
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = (
            nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            if meta
            else p
        )
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta") if meta else b
    clone = copy.deepcopy(model, memo)
    strip_tap_hooks(clone)
    return clone


class Outputs(dict[LayerSpec, Any]):
    """The recorded outputs; a missing key explains why it is missing."""

    def __init__(self, tap: LayerTap) -> None:
        super().__init__()
        self._tap = weakref.ref(tap)

    def __missing__(self, key: LayerSpec) -> Any:
        tap = self._tap()
        if tap is None:
            raise KeyError(key)
        raise tap._missing_error(key)
