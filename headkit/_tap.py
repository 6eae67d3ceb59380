"""`LayerTap`: any layer of any encoder as the representation, without changing the model."""

from __future__ import annotations

import contextlib
import copy
import inspect
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._errors import HeadkitError, fmt_shape
from ._fx import call_counts
from ._model import (
    Call,
    Hint,
    LayerSpec,
    Target,
    channel_hint,
    check_module,
    declared_layout,
    is_compiled,
    num_prefix_tokens,
    parse_targets,
    unwrap,
    wrappers,
)
from ._pool import (
    Pool,
    PoolContext,
    apply_pool,
    check_batch_first,
    check_pool,
    needs_prefix,
    pick_tensor,
)

__all__ = ["LayerTap", "TapInfo", "copy_module_tree", "feature_info", "strip_tap_hooks"]

Slot = tuple[str, bool]  # (module name, pre)

# call counts of tapped modules seen in complete forwards, per module object: lets tap(x) stop
# early after the right call of a module, and know that a module runs once
_CALLS: weakref.WeakKeyDictionary[nn.Module, dict[bool, int]] = weakref.WeakKeyDictionary()


class _StopForward(Exception):
    """Raised by a hook to end a forward early (caught by `LayerTap`)."""


def _in_backward() -> bool:
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

    state: _TapState

    def __deepcopy__(self, memo: dict[int, Any]) -> _Inert:
        return _Inert()

    def __copy__(self) -> _Inert:
        return _Inert()

    def __reduce__(self) -> tuple[type[_Inert], tuple[()]]:
        return (_Inert, ())


class _Enter(_TapHook):
    """Forward-pre hook on the root and every ancestor of a tapped module: a forward begins
    when the first of them is entered (per-forward call counts reset)."""

    def __init__(self, state: _TapState, root: bool) -> None:
        self.state = state
        self.root = root

    def __call__(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        st = self.state
        if st.closed or not st.active or _in_backward():
            return
        if st.depth == 0:
            st.begin(module, args, kwargs, self.root)
        st.depth += 1


class _Exit(_TapHook):
    """Forward hook (``always_call``) paired with `_Enter`."""

    def __init__(self, state: _TapState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: Any, out: Any) -> None:
        st = self.state
        if st.closed or not st.active or _in_backward() or st.depth == 0:
            return
        st.depth -= 1
        if st.depth == 0:
            st.end(aborted=sys.exc_info()[0] is not None)


class _Record(_TapHook):
    """Forward hook that records a module's output."""

    def __init__(self, state: _TapState, slot: Slot) -> None:
        self.state = state
        self.slot = slot

    def __call__(self, module: nn.Module, args: Any, out: Any) -> None:
        st = self.state
        if st.closed or not st.active or _in_backward():
            return
        st.record(self.slot, out)


class _RecordPre(_TapHook):
    """Forward-pre hook that records a module's input (its first positional argument, else its
    first tensor keyword argument)."""

    def __init__(self, state: _TapState, slot: Slot, clone: bool) -> None:
        self.state = state
        self.slot = slot
        self.clone = clone

    def __call__(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        st = self.state
        if st.closed or not st.active or _in_backward():
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


class _TapState:
    """What the hooks share; the hooks hold this, not the tap, so a dropped tap is collected."""

    def __init__(self, tap: LayerTap) -> None:
        self.modules: dict[Slot, nn.Module] = {}
        self.detach = tap.detach
        self.closed = False
        self.active = False
        self.depth = 0
        self.stopping = False  # tap(x): raise _StopForward once every target is complete
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
        self.batch = _batch_size(args, kwargs)
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
            calls = _CALLS.setdefault(module, {})
            calls[slot[1]] = self.counts.get(slot, 0)

    def record(self, slot: Slot, out: Any) -> None:
        self.any_ran = True
        n = self.counts.get(slot, 0)
        self.counts[slot] = n + 1
        if slot not in self.keep_all and n not in self.keep.get(slot, ()):
            return
        if self.detach:
            out = _detach(out)
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
            raise _StopForward

    def _complete(self) -> bool:
        return all(self.counts.get(s, 0) >= n for s, n in self.need.items())


def _ran_twice(slot: Slot, n: int) -> HeadkitError:
    name, pre = slot
    what = f"{name}:in" if pre else name
    return HeadkitError(
        f"LayerTap: module {name!r} ran {n} times in one forward (a shared or weight-tied "
        f"module), and the tap did not say which call to read. Choose one: call=0 (the first), "
        f"call=-1 (the last), call='all' (a list of every call), or per layer '{what}@-1' / "
        f"'{what}@*'"
    )


def _batch_size(args: Any, kwargs: dict[str, Any]) -> int | None:
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


def _detach(out: Any) -> Any:
    return _map_tensors(out, torch.Tensor.detach)


# ----------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class TapInfo:
    """Shape and dtype of one tap, from a dry run on the meta device.

    Attributes:
        shape: output shape, batch dimension included (of the pooled output when pooled).
        dtype: output dtype.
        layer: the module name or timm index the tap reads.
        element: which part of a module output that is not a tensor was read, e.g.
            ``"element 0 of a tuple of 2"`` (Hugging Face blocks), or None.
        num_prefix_tokens: the prefix tokens a token pool skips at this layer (None: unknown).
        pre: the tap reads the module's input (a ``"name:in"`` spec).

    Example:
        >>> from torch import nn
        >>> from headkit import feature_info
        >>> info = feature_info(nn.Sequential(nn.Linear(3, 5)), ["0"], (2, 3))["0"]
        >>> info.shape, info.dtype
        ((2, 5), torch.float32)
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    layer: int | str
    element: str | None = None
    num_prefix_tokens: int | None = None
    pre: bool = False


class _Outputs(dict[LayerSpec, Any]):
    """The recorded outputs; a missing key explains why it is missing."""

    def __init__(self, tap: LayerTap) -> None:
        super().__init__()
        self._tap = weakref.ref(tap)

    def __missing__(self, key: LayerSpec) -> Any:
        tap = self._tap()
        if tap is None:
            raise KeyError(key)
        raise tap._missing_error(key)


class LayerTap:
    """Read any layer of any encoder (timm, torchvision, Hugging Face, open_clip, lightly,
    custom) as a representation, without changing the model.

    Three uses:

    - ``tap(*args, **kwargs)`` runs the model with exactly those arguments (``tap(x)``,
      ``tap(**inputs)``, ``tap(pixel_values=x)``) and returns ``{spec: output}`` keyed by the
      specs as given; with ``stop_early=True`` the forward stops after the last tapped call.
    - ``out, feats = tap.run(*args, **kwargs)``: the model's own output and the taps, from one
      full forward (timm int indices included: ``forward_head(forward_intermediates(...))``,
      bit-identical to ``model(x)``).
    - ``with LayerTap(model, ["layer3"]) as tap: model(x)`` records during the user's own
      forward into ``tap.outputs``.

    Layer specs:

    - a str: a dotted module name as in ``model.named_modules()`` (a DDP ``module.`` prefix
      and FSDP's inserted names are accepted either way); its output as the module returns it.
      A glob (``"layer*"``, ``"blocks.*"``; ``*`` stays within one name segment, ``**``
      crosses them) expands to every matching module, each keyed by its name.
      ``"name:in"`` reads the module's input (a forward-pre tap): the value of an operation
      that is not a module, such as a ViT block's residual sum, read where the next module
      receives it (``"blocks.3.norm2:in"`` is ``x + attn(norm1(x))``).
      ``"name@k"`` reads call ``k`` of a module that runs several times in one forward (ALBERT's
      shared layer, a weight-tied block; negative from the end), ``"name@*"`` every call as a
      list.
    - an int, for models with timm's contract: index ``i`` returns exactly
      ``model.forward_intermediates(x, indices=[i], intermediates_only=True)[0]`` (negative
      indices count from the end). ``model(x)`` does not run ``forward_intermediates``, so ints
      work in ``tap(x)`` and ``tap.run(x)``, not in a ``with`` block.

    A module that runs several times in one forward raises (naming the count) unless ``call=``
    or ``@`` says which call to read, in every use. ``tap(x)`` learns how often a tapped module
    runs from its first complete forward (kept per module) and stops early from then on.

    Wrappers: ``tap(x)`` on a DDP model runs DDP's own forward bookkeeping around the (early
    stopped) forward, so gradients of a loss on the taps are synchronised across ranks (DDP
    needs ``find_unused_parameters=True`` for a loss on a lower layer; without it ``tap(x)``
    raises instead of leaving gradients unsynchronised). FSDP models run the whole forward
    through FSDP. A compiled model runs eagerly in ``tap(x)``.

    Hooks are instances of module-level classes, registered when the tap is built (so a tap set
    up before ``torch.compile`` is traced with no graph break) and removed by ``close()``, on
    leaving the ``with`` block, and on exceptions. ``copy.deepcopy``, pickling or ``torch.save``
    of the model while a tap is open give a model whose copies of the hooks are inert: they never
    record into the tap and never change its output. Nothing is kept after ``tap(x)`` returns,
    after ``clear()`` or after exit.

    Args:
        model: the encoder (``torch.compile``, DDP, DataParallel and FSDP wrappers are seen
            through).
        layers: list of layer specs (a single spec is accepted too).
        pool: None (raw), ``"avg"`` (mean over spatial or token positions), ``"flatten"``,
            ``"cls"`` (class token), ``"mean"`` (patch tokens only: prefix / register tokens
            excluded, their number read from the model), ``"cls+mean"``, or a callable. Token
            means honour the ``attention_mask`` passed with the call. Outputs that are tuples or
            ``ModelOutput``s are pooled on their first tensor (`feature_info` says so).
        detach: record without autograd history. Otherwise gradients flow through the outputs.
        stop_early: stop the forward after the last tapped call in ``tap(x)``.
        num_prefix_tokens: the number of prefix tokens ``"mean"`` skips, where the model does
            not say (it is read from the model otherwise).
        call: which call of a module that runs several times to read, for specs without ``@``:
            None (it must run once), an int (negative from the end) or ``"all"``.
        batch_first: the layout of 3-D outputs for the pools: True ``(B, T, C)``, False
            ``(T, B, C)``. None: as the model declares it (timm and Hugging Face models are
            batch-first; else the ``batch_first`` of the ``nn.MultiheadAttention`` /
            ``nn.TransformerEncoderLayer`` / RNN / open_clip modules inside the layer;
            batch-first when no module of the model says ``batch_first=False``). Never guessed
            from sizes: a 3-D output whose layout the model does not declare is refused, asking
            for this argument.

    Shapes:
        ``tap(x)`` -> dict of tensors: ``(B, C, H, W)`` / ``(B, T, C)`` raw, ``(B, C)`` pooled.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from headkit import LayerTap
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> out = LayerTap(net, ["1"])(torch.randn(2, 8))
        >>> out["1"].shape
        torch.Size([2, 16])
        >>> with LayerTap(net, ["0", "2:in"]) as tap:
        ...     _ = net(torch.randn(2, 8))
        ...     tap.outputs["0"].shape, tap.outputs["2:in"].shape
        (torch.Size([2, 16]), torch.Size([2, 16]))
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[LayerSpec] | LayerSpec,
        *,
        pool: Pool = None,
        detach: bool = False,
        stop_early: bool = True,
        num_prefix_tokens: int | None = None,
        call: Call = None,
        batch_first: bool | None = None,
    ) -> None:
        model = check_module(model, "LayerTap")
        specs: list[LayerSpec] = [layers] if isinstance(layers, (int, str)) else list(layers)
        if not specs:
            raise HeadkitError("LayerTap needs at least one layer spec, got an empty list")
        if num_prefix_tokens is not None and (
            isinstance(num_prefix_tokens, bool)
            or not isinstance(num_prefix_tokens, int)
            or num_prefix_tokens < 0
        ):
            raise HeadkitError(
                f"num_prefix_tokens must be a non-negative int or None, got {num_prefix_tokens!r}"
            )
        self.model = model
        self.inner = unwrap(model)
        self.wrappers = wrappers(model)
        self.compiled = is_compiled(model) or (self.inner is not model and is_compiled(self.inner))
        self.pool = check_pool(pool)
        self.detach = bool(detach)
        self.stop_early = bool(stop_early)
        self.npt_override = num_prefix_tokens
        self.batch_first = check_batch_first(batch_first)
        self.call = call
        self.specs = specs
        self.targets: list[Target] = []
        for spec in specs:
            self.targets.extend(parse_targets(self.inner, spec, call))
        self.keys: list[LayerSpec] = list(dict.fromkeys(t.key for t in self.targets))
        self._indices = sorted({t.index for t in self.targets if t.index is not None})
        self._slots: list[Slot] = list(
            dict.fromkeys(t.slot for t in self.targets if t.index is None)
        )
        self._state = _TapState(self)
        self._handles: list[RemovableHandle] = []
        self._outputs = _Outputs(self)
        self._ctx_cache: dict[LayerSpec, tuple[int | None, Hint | None, bool | None]] = {}
        self._fsdp = _has_fsdp(model)
        self._through = self._fsdp or (
            not self.compiled and any(isinstance(w, nn.DataParallel) for w in self.wrappers)
        )
        self._traced = False
        modules = dict(self.inner.named_modules())
        st = self._state
        for slot in self._slots:
            st.modules[slot] = modules[slot[0]]
        self._plan_keep()
        params = _signature_params(self.inner)
        st.mask_names = ("attention_mask" in params, "input_ids" in params)
        if any(st.mask_names):
            with contextlib.suppress(TypeError, ValueError):
                st.signature = inspect.signature(self.inner.forward)
        cfg: Any = getattr(self.inner, "config", None)
        pad = getattr(cfg, "pad_token_id", None)
        self._pad_id = pad if isinstance(pad, int) else None
        if self._slots:
            self._register(modules)

    # ------------------------------------------------------------------ hooks
    def _register(self, modules: dict[str, nn.Module]) -> None:
        st = self._state
        ancestors: dict[str, None] = {"": None}
        for name, _ in self._slots:
            parts = name.split(".")
            for d in range(1, len(parts) + 1):
                ancestors[".".join(parts[:d])] = None
        for name in ancestors:
            self._handles.append(
                modules[name].register_forward_pre_hook(
                    _Enter(st, root=name == ""), with_kwargs=True
                )
            )
        for slot in self._slots:
            name, pre = slot
            m = modules[name]
            if pre:
                hook = _RecordPre(st, slot, clone=bool(getattr(m, "inplace", False)))
                self._handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                self._handles.append(m.register_forward_hook(_Record(st, slot)))
        for name in ancestors:
            self._handles.append(modules[name].register_forward_hook(_Exit(st), always_call=True))

    def _plan_keep(self) -> None:
        """Which calls of each slot the hooks keep (for every use)."""
        st = self._state
        st.keep_all.clear()
        st.keep.clear()
        st.once.clear()
        for t in self.targets:
            if t.index is not None:
                continue
            slot = t.slot
            if t.call is None:
                st.once.add(slot)
                st.keep.setdefault(slot, set()).add(0)
            elif t.call == "all" or (isinstance(t.call, int) and t.call < 0):
                st.keep_all.add(slot)
            else:
                st.keep.setdefault(slot, set()).add(int(t.call))

    def _plan_stop(self) -> bool:
        """For tap(x): the calls each slot needs before the forward may stop; False when a
        complete forward is needed (a count not known yet)."""
        st = self._state
        st.need.clear()
        self._static_counts()
        for t in self.targets:
            if t.index is not None:
                continue
            slot = t.slot
            seen = _CALLS.get(st.modules[slot], {}).get(slot[1])
            if t.call is None:
                if seen is None:
                    return False
                if seen > 1:
                    raise _ran_twice(slot, seen)
                need = 1
            elif t.call == "all" or t.call < 0:
                if seen is None:
                    return False
                need = seen
            else:
                need = t.call + 1
            st.need[slot] = max(st.need.get(slot, 0), need)
        return True

    def _static_counts(self) -> None:
        """Call counts from a torch.fx trace, for the modules whose count is not known yet."""
        st = self._state
        unknown = [s for s in self._slots if s[1] not in _CALLS.get(st.modules[s], {})]
        if not unknown or self._traced:
            return
        self._traced = True
        was_active, st.active = st.active, False  # the tracer runs the hooks with proxies
        try:
            counts = call_counts(self.inner, {name for name, _ in unknown})
        finally:
            st.active = was_active
        for name, pre in unknown:
            if name in counts:
                _CALLS.setdefault(st.modules[(name, pre)], {})[pre] = counts[name]

    @property
    def _closed(self) -> bool:
        return self._state.closed

    # ------------------------------------------------------------------ running
    def __call__(self, *args: Any, **kwargs: Any) -> dict[LayerSpec, Any]:
        """Run the model with these arguments and return ``{spec: output}`` (see the class)."""
        self._check_open()
        self.clear()
        st = self._state
        was_active = st.active
        st.active = True
        try:
            raw = self._forward(args, kwargs, stop=self.stop_early, with_output=False)[1]
            return self._finish_all(raw)
        finally:
            st.stopping = False
            st.no_stop = False
            st.active = was_active
            st.depth = 0
            self.clear()

    def run(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[LayerSpec, Any]]:
        """Run the whole model once and return ``(its output, {spec: tap output})``.

        The output is the model's own (``model(*args, **kwargs)``, through DDP / FSDP); with
        timm int indices it is ``model.forward_head(final)`` with ``final, intermediates =
        model.forward_intermediates(x, indices)``, the same as ``model(x)``. Use it to train on
        the output and read (or add a loss on) lower layers in the same forward.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from headkit import LayerTap
            >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
            >>> out, feats = LayerTap(net, ["1"]).run(torch.randn(2, 8))
            >>> out.shape, feats["1"].shape
            (torch.Size([2, 4]), torch.Size([2, 16]))
        """
        self._check_open()
        self.clear()
        st = self._state
        was_active = st.active
        st.active = True
        try:
            output, raw = self._forward(args, kwargs, stop=False, with_output=True)
            return output, self._finish_all(raw)
        finally:
            st.active = was_active
            st.depth = 0
            self.clear()

    def _forward(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, stop: bool, with_output: bool
    ) -> tuple[Any, dict[Target | int, Any]]:
        st = self._state
        fsdp = self._fsdp
        stop = stop and not fsdp and not self._indices
        if stop and not self._plan_stop():
            stop = False
            st.clone = True  # learning the call counts: a full forward, values as if stopped
        for w in self.wrappers:
            if isinstance(w, nn.DataParallel) and len(w.device_ids or []) > 1:
                raise HeadkitError(
                    "LayerTap cannot read a DataParallel model on several GPUs (each replica "
                    "would record a slice of the batch); use DistributedDataParallel, or tap "
                    "model.module on one device"
                )
        ddp = next(
            (w for w in self.wrappers if isinstance(w, nn.parallel.DistributedDataParallel)),
            None,
        )
        if ddp is not None:
            self._check_ddp(ddp, partial=not with_output)

        def body(a: tuple[Any, ...], k: dict[str, Any]) -> tuple[Any, dict[Target | int, Any]]:
            output: Any = None
            raw: dict[Target | int, Any] = {}
            # one invocation from here to the end: hooks on inner modules never start another
            st.begin(self.inner, a, k, root=True)
            st.depth = 1
            stopped = aborted = False
            try:
                if self._indices:
                    output, inter = self._run_indices(a, k, with_output)
                    raw.update(inter)
                else:
                    st.stopping = stop
                    try:
                        # FSDP / DataParallel: through the wrapper (unsharding, device moves)
                        output = self.model(*a, **k) if self._through else self.inner(*a, **k)
                    except _StopForward:
                        stopped = True
            except BaseException:
                aborted = True
                raise
            finally:
                st.stopping = False
                st.clone = False
                st.depth = 0
                st.end(aborted=aborted or stopped or bool(self._indices))
            self._check_fired()
            raw.update(self._select(self.targets))
            return output, raw

        if ddp is None:
            return body(args, kwargs)
        return _through_ddp(ddp, body, args, kwargs)

    def _check_ddp(self, ddp: nn.Module, *, partial: bool) -> None:
        grad = torch.is_grad_enabled() and not self.detach
        sync = bool(getattr(ddp, "require_backward_grad_sync", True))
        unused = bool(getattr(ddp, "find_unused_parameters", False)) or bool(
            getattr(ddp, "static_graph", False)
        )
        if grad and sync and partial and not unused:
            raise HeadkitError(
                "LayerTap(ddp_model)(x) with gradients: a loss on a tapped layer trains only the "
                "layers up to it, and DDP without find_unused_parameters=True would leave their "
                "gradients unsynchronised. Wrap with DistributedDataParallel(model, "
                "find_unused_parameters=True), or cut first: DDP(truncate_at(model, layer)); "
                "for features without gradients pass detach=True or use torch.no_grad()"
            )
        if not (
            callable(getattr(ddp, "_pre_forward", None))
            and callable(getattr(ddp, "_post_forward", None))
        ):
            raise HeadkitError(
                "this PyTorch's DistributedDataParallel has no _pre_forward/_post_forward, which "
                "tap(x) needs to keep DDP's gradient synchronisation; use the with-block: "
                "with LayerTap(ddp_model, layers) as tap: ddp_model(x)"
            )

    def _run_indices(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], with_output: bool
    ) -> tuple[Any, dict[Target | int, Any]]:
        model = self.inner
        fi: Any = model.forward_intermediates
        params = inspect.signature(fi).parameters
        opts: dict[str, Any] = {
            "indices": list(self._indices),
            "intermediates_only": not with_output,
        }
        if "stop_early" in params:
            # named taps need the forward past the indices: only stop when there are none
            opts["stop_early"] = (not with_output) and self.stop_early and not self._slots
        if needs_prefix(self.pool) and "return_prefix_tokens" in params:
            opts["return_prefix_tokens"] = True
        output: Any = None
        if with_output:
            head: Any = getattr(model, "forward_head", None)
            if not callable(head):
                raise HeadkitError(
                    f"tap.run with int indices needs timm's forward_head on {type(model).__name__}"
                )
            final, outs = fi(*args, **kwargs, **opts)
            output = head(final)
        else:
            outs = fi(*args, **kwargs, **opts)
        values = _index_outputs(model, self._indices, self.detach, outs)
        return output, dict(zip(self._indices, values, strict=True))

    # ------------------------------------------------------------------ reading
    def _select(self, targets: list[Target]) -> dict[Target | int, Any]:
        """The recorded value of every named target (the right call), checked."""
        st = self._state
        out: dict[Target | int, Any] = {}
        for t in targets:
            if t.index is not None:
                continue
            slot = t.slot
            n = st.counts.get(slot, 0)
            vals = st.values.get(slot, {})
            if t.call is None:
                if n > 1:
                    raise _ran_twice(slot, n)
                picks = [0]
            elif t.call == "all":
                picks = list(range(n))
            else:
                k = t.call + n if t.call < 0 else t.call
                if not 0 <= k < n:
                    raise HeadkitError(
                        f"LayerTap: {t.describe()} asks for call {t.call}, but {slot[0]!r} ran "
                        f"{n} time(s) in this forward"
                    )
                picks = [k]
            got = []
            for k in picks:
                if k not in vals:
                    raise self._never_ran([t.key])
                got.append(self._checked(t, k, vals[k]))
            out[t] = got if t.call == "all" else got[0]
        return out

    def _checked(self, t: Target, call: int, value: Any) -> Any:
        st = self._state
        slot = t.slot
        tensor, _ = pick_tensor(value)
        if isinstance(tensor, Tensor):
            v = st.versions.get((slot, call))
            if v is not None and tensor._version != v:
                raise HeadkitError(
                    f"LayerTap: the output of {slot[0]!r} was modified in place by a later "
                    "operation (e.g. ReLU(inplace=True) or +=); tap the module after it "
                    f"instead, or its input with '{slot[0]}:in' on the next module"
                )
            if slot in st.suspects and tensor.is_floating_point() and not tensor.requires_grad:
                raise HeadkitError(
                    f"LayerTap: {slot[0]!r} ran under torch.no_grad inside a forward that began "
                    "with gradients enabled (reentrant activation checkpointing, "
                    "torch.utils.checkpoint(..., use_reentrant=True), or a no_grad block in the "
                    "model), so its output carries no gradient and a loss on it would add none. "
                    "Use use_reentrant=False (Hugging Face: model.gradient_checkpointing_enable("
                    "gradient_checkpointing_kwargs={'use_reentrant': False}), or "
                    "activation_checkpointing_enable({'use_reentrant': False})), tap the "
                    "checkpointed block itself, or pass detach=True to read features only"
                )
        return value

    def _pool_ctx(self, t: Target) -> PoolContext:
        st = self._state
        if t.key not in self._ctx_cache:
            if t.index is not None:
                npt: int | None = 0
                hint = None
                layout: bool | None = True
            else:
                assert t.name is not None
                npt = (
                    self.npt_override
                    if self.npt_override is not None
                    else num_prefix_tokens(self.inner, t.name)
                )
                hint = channel_hint(st.modules[t.slot], pre=t.pre)
                layout = declared_layout(self.inner, t.name)
            if self.batch_first is not None:
                layout = self.batch_first
            self._ctx_cache[t.key] = (npt, hint, layout)
        npt, hint, layout = self._ctx_cache[t.key]
        return PoolContext(
            npt=npt,
            mask=st.mask,
            batch=st.batch,
            text=st.text,
            pad_id=self._pad_id,
            input_ids=st.input_ids,
            hint=hint,
            npt_given=self.npt_override is not None,
            batch_first=layout,
        )

    def _finish_all(self, raw: dict[Target | int, Any]) -> dict[LayerSpec, Any]:
        out: dict[LayerSpec, Any] = {}
        for t in self.targets:
            value = raw[t.index] if t.index is not None else raw[t]
            out[t.key] = self._finish(t, value)
        return out

    def _finish(self, t: Target, value: Any) -> Any:
        if self.pool is None:
            return apply_pool(value, None, t.index if t.index is not None else t.key)
        ctx = self._pool_ctx(t)
        key: object = t.index if t.index is not None else t.key
        if t.call == "all" and t.index is None:
            return [apply_pool(v, self.pool, key, ctx) for v in value]
        return apply_pool(value, self.pool, key, ctx)

    def _check_fired(self) -> None:
        st = self._state
        missing = [t.key for t in self.targets if t.index is None and st.counts.get(t.slot, 0) == 0]
        if missing:
            raise self._never_ran(missing)

    def _never_ran(self, missing: list[LayerSpec]) -> HeadkitError:
        hint = ""
        if self.compiled:
            hint = (
                " The model is compiled: hooks added after its first compiled call never fire in "
                "PyTorch. Build the LayerTap before torch.compile, or call tap(x)."
            )
        return HeadkitError(
            f"LayerTap: tapped layer(s) {missing} never ran in the forward of "
            f"{type(self.inner).__name__}.{hint}"
        )

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> LayerTap:
        self._check_open()
        if self._indices:
            names = _index_names(self.inner, self._indices)
            raise HeadkitError(
                f"int layer indices {self._indices} in a with-block: timm's intermediates come "
                "from forward_intermediates, which model(x) does not run. Use "
                "out, feats = tap.run(x) (the model's output, identical to model(x), and the "
                f"intermediates from one forward), or the module names {names} (their raw "
                "outputs) in the with-block"
            )
        for w in self.wrappers:
            if isinstance(w, nn.DataParallel) and len(w.device_ids or []) > 1:
                raise HeadkitError(
                    "LayerTap cannot record a DataParallel model on several GPUs (each replica "
                    "records a slice of the batch); use DistributedDataParallel"
                )
        self._state.active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        st = self._state
        fired_any = bool(st.counts or st.any_ran or st.root_ran)
        missing = [t.key for t in self.targets if t.index is None and not st.counts.get(t.slot)]
        twice = [(s, st.counts[s]) for s in st.once if st.counts.get(s, 0) > 1]
        st.active = False
        self.close()
        if exc_type is None and twice:
            raise _ran_twice(*twice[0])
        if exc_type is None and missing and (fired_any or self.compiled):
            raise self._never_ran(missing)

    @property
    def outputs(self) -> dict[LayerSpec, Any]:
        """Outputs recorded by the last forward in a ``with`` block, keyed like ``tap(x)``'s."""
        self._outputs.clear()
        if self._closed:
            return self._outputs
        st = self._state
        if not any(st.counts.get(t.slot) for t in self.targets if t.index is None):
            return self._outputs
        ran = [t for t in self.targets if t.index is None and st.counts.get(t.slot)]
        selected = self._select(ran)
        for t in ran:
            self._outputs[t.key] = self._finish(t, selected[t])
        return self._outputs

    def _missing_error(self, key: LayerSpec) -> Exception:
        if key not in self.keys:
            return KeyError(f"{key!r} is not a tapped layer; tapped: {self.keys}")
        if self._closed:
            return KeyError(
                f"{key!r}: the LayerTap is closed; read tap.outputs inside the with-block"
            )
        return self._never_ran([key])

    def clear(self) -> None:
        """Drop every recorded tensor."""
        self._state.clear()
        self._outputs.clear()

    def close(self) -> None:
        """Remove the hooks and drop every recorded tensor (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()
        self._state.closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise HeadkitError("this LayerTap is closed (its hooks were removed); build a new one")

    def __del__(self) -> None:
        try:
            for h in self._handles:
                h.remove()
        except Exception:
            pass

    # ------------------------------------------------------------------ dry run
    def describe(
        self, input_shape: Sequence[int], dtype: torch.dtype = torch.float32
    ) -> dict[LayerSpec, TapInfo]:
        """Shape and dtype of every tap from a dry run on the meta device (no data, no compute;
        models the meta device cannot run, such as Hugging Face text models, run a copy in eval
        mode on zeros).

        Args:
            input_shape: shape of one input batch, e.g. ``(1, 3, 224, 224)`` (passed as the
                model's first positional argument; ``dtype=torch.long`` for token ids).
            dtype: dtype of the input.

        Returns:
            ``{spec: TapInfo}``; `TapInfo.element` says when a tuple output was pooled on its
            first element.

        Example:
            >>> from torch import nn
            >>> from headkit import LayerTap
            >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
            >>> LayerTap(net, ["0"], pool="avg").describe((2, 3, 32, 32))["0"].shape
            (2, 8)
        """
        self._check_open()
        shape = tuple(int(s) for s in input_shape)
        try:
            outs, raws = self._dry_run(shape, dtype, meta=True)
        except HeadkitError:
            raise
        except Exception as meta_err:
            # some models call .item() or branch on values (Hugging Face attention masks): run
            # a copy in eval mode on a constant input instead (the same parameters, nothing updated)
            try:
                outs, raws = self._dry_run(shape, dtype, meta=False)
            except HeadkitError:
                raise
            except Exception as err:
                raise HeadkitError(
                    f"dry run of {type(self.inner).__name__} with input {fmt_shape(shape)} "
                    f"failed on the meta device ({type(meta_err).__name__}: {meta_err}) and on "
                    f"zeros ({type(err).__name__}: {err})"
                ) from err
        info: dict[LayerSpec, TapInfo] = {}
        for t in self.targets:
            o = outs[t.key]
            r = raws[t.key]
            if isinstance(o, list) and t.call == "all":
                o, r = o[0], r[0]
            tensor, _ = pick_tensor(o)
            if isinstance(o, tuple) and len(o) == 2 and t.index is not None:
                tensor = o[0]
            if not isinstance(tensor, Tensor):
                raise HeadkitError(f"layer {t.key!r} returns {type(o).__name__}, not a tensor")
            _, element = pick_tensor(r) if t.index is None else (None, None)
            npt = self._pool_ctx(t).npt if t.index is None else 0
            layer: int | str = t.index if t.index is not None else str(t.name)
            info[t.key] = TapInfo(tuple(tensor.shape), tensor.dtype, layer, element, npt, t.pre)
        return info

    def _dry_run(
        self, shape: tuple[int, ...], dtype: torch.dtype, *, meta: bool
    ) -> tuple[dict[LayerSpec, Any], dict[LayerSpec, Any]]:
        model = copy_module_tree(self.inner, meta=meta)
        if not meta:
            model.eval()  # a copy of the module tree: the user's modules keep their mode
        tap = LayerTap(
            model,
            self.specs,
            pool=self.pool,
            detach=True,
            stop_early=self.stop_early,
            num_prefix_tokens=self.npt_override,
            call=self.call,
            batch_first=self.batch_first,
        )
        raw_tap = LayerTap(model, self.specs, detach=True, call=self.call) if self.pool else tap
        try:
            with torch.no_grad():
                if meta:
                    x = torch.empty(shape, dtype=dtype, device="meta")
                else:
                    first = next(iter(self.inner.parameters()), None)
                    device = first.device if first is not None else None
                    fill = 0
                    if not dtype.is_floating_point:  # token ids: any id but padding
                        fill = 2 if self._pad_id == 1 else 1
                    x = torch.full(shape, fill, dtype=dtype, device=device)
                outs = tap(x)
                raws = raw_tap(x) if raw_tap is not tap else outs
        finally:
            tap.close()
            raw_tap.close()
        return outs, raws

    def __repr__(self) -> str:
        return (
            f"LayerTap({type(self.inner).__name__}, layers={self.keys}, pool={self.pool!r}, "
            f"detach={self.detach}, stop_early={self.stop_early})"
        )


# ----------------------------------------------------------------------------- helpers


def _signature_params(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _has_fsdp(model: nn.Module) -> bool:
    """FSDP (1 or 2) anywhere: its forward bookkeeping must not be cut short."""
    if "torch.distributed.fsdp" not in sys.modules:
        return False
    fsdp = sys.modules["torch.distributed.fsdp"]
    kinds = tuple(
        k
        for k in (
            getattr(fsdp, "FullyShardedDataParallel", None),
            getattr(fsdp, "FSDPModule", None),
        )
        if isinstance(k, type)
    )
    return bool(kinds) and any(isinstance(m, kinds) for m in model.modules())


def _through_ddp(
    ddp: nn.Module,
    body: Callable[[tuple[Any, ...], dict[str, Any]], tuple[Any, dict[Target | int, Any]]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[Any, dict[Target | int, Any]]:
    """Run ``body`` inside DDP's own forward bookkeeping, with the taps (and the output, if
    any) as what DDP sees as the forward's result: gradients of a loss on them are
    synchronised, and parameters the forward never reached are marked unused."""
    d: Any = ddp
    with torch.autograd.profiler.record_function("DistributedDataParallel.forward"):
        args, kwargs = d._pre_forward(*args, **kwargs)
        inside = getattr(d, "_inside_ddp_forward", None)
        plain = getattr(d, "_use_python_reducer", False) or getattr(
            d, "_delay_all_reduce_all_params", False
        )
        ctx = inside() if callable(inside) and not plain else contextlib.nullcontext()
        with ctx:
            output, raw = body(args, kwargs)
        keys = list(raw)
        result = d._post_forward((output, [raw[k] for k in keys]))
    output, values = result
    return output, dict(zip(keys, values, strict=True))


def _index_names(model: nn.Module, indices: list[int]) -> list[str]:
    fi: Any = getattr(model, "feature_info", None)
    out = []
    for i in indices:
        try:
            out.append(str(fi[i]["module"]))
        except Exception:
            out.append(f"<index {i}>")
    return out


def _index_outputs(model: nn.Module, indices: list[int], detach: bool, outs: Any) -> list[Any]:
    if not isinstance(outs, (list, tuple)) or len(outs) != len(indices):
        got = len(outs) if isinstance(outs, (list, tuple)) else type(outs).__name__
        raise HeadkitError(
            f"{type(model).__name__}.forward_intermediates returned {got} outputs for indices "
            f"{indices}"
        )
    return [_detach(o) for o in outs] if detach else list(outs)


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


def feature_info(
    model: nn.Module,
    layers: Sequence[LayerSpec] | LayerSpec,
    input_shape: Sequence[int],
    *,
    pool: Pool = None,
    dtype: torch.dtype = torch.float32,
    num_prefix_tokens: int | None = None,
    call: Call = None,
    batch_first: bool | None = None,
) -> dict[LayerSpec, TapInfo]:
    """Shape and dtype of every tap of ``model`` from a dry run on the meta device.

    Same as ``LayerTap(model, layers, pool=pool).describe(input_shape, dtype)``. `TapInfo`
    also says which element of a tuple output a pool reads (Hugging Face blocks) and how many
    prefix tokens a token pool skips.

    Args:
        model: the encoder.
        layers: layer specs, as for `LayerTap`.
        input_shape: shape of one input batch.
        pool: pooling, as for `LayerTap`.
        dtype: input dtype (``torch.long`` for token ids).
        num_prefix_tokens: as for `LayerTap`.
        call: as for `LayerTap`.
        batch_first: the layout of 3-D outputs, as for `LayerTap`.

    Returns:
        ``{spec: TapInfo}``.

    Example:
        >>> from torch import nn
        >>> from headkit import feature_info
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> feature_info(net, ["0", "2"], (5, 8))["2"].shape
        (5, 4)
    """
    tap = LayerTap(
        check_module(model, "feature_info"),
        layers,
        pool=pool,
        num_prefix_tokens=num_prefix_tokens,
        call=call,
        batch_first=batch_first,
    )
    try:
        return tap.describe(input_shape, dtype)
    finally:
        tap.close()
