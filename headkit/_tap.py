"""`LayerTap`: any layer of any encoder as the representation."""

from __future__ import annotations

import copy
import inspect
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._errors import HeadkitError, fmt_shape
from ._model import LayerSpec, check_module, is_compiled, resolve, unwrap
from ._pool import Pool, apply_pool, check_pool, needs_prefix
from ._pool import num_prefix_tokens as count_prefix_tokens

__all__ = ["LayerTap", "TapInfo", "feature_info"]


class _StopForward(Exception):
    """Raised by the last hook to end a forward early (caught by `LayerTap.__call__`)."""


@dataclass(frozen=True)
class TapInfo:
    """Shape and dtype of one tap, from a dry run on the meta device.

    Attributes:
        shape: output shape, batch dimension included.
        dtype: output dtype.
        layer: the module name or timm index the tap reads.

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
    """Read any layer of any encoder (timm, torchvision, lightly, custom) as a representation.

    Two uses:

    - ``tap(x)`` runs the forward and returns ``{spec: output}`` keyed by the specs as given;
      with ``stop_early=True`` the forward stops after the deepest tapped layer.
    - ``with LayerTap(model, ["layer3"]) as tap: model(x)`` records during the user's own
      forward into ``tap.outputs``.

    Layer specs:

    - a str: a dotted module name as in ``model.named_modules()`` (a DDP ``module.`` prefix is
      accepted either way); the output is the raw output of that module. A glob (``"layer*"``,
      ``"blocks.*"``; ``*`` stays within one name segment, ``**`` crosses them) expands to every
      matching module, each keyed by its name.
    - an int, for models with timm's contract: index ``i`` returns exactly
      ``model.forward_intermediates(x, indices=[i], intermediates_only=True)[0]`` (negative
      indices count from the end). In a ``with`` block, ``model(x)`` of a timm model is run as
      ``model.forward_head(final)`` with ``final, intermediates = model.forward_intermediates(x,
      indices, intermediates_only=False)``: the same output as ``model.forward(x)`` (checked on
      every timm family) with the indexed intermediates recorded on the way.

    Hooks are registered when the tap is built (so a tap set up before ``torch.compile`` is
    traced with no graph break) and removed by ``close()``, on leaving the ``with`` block, and
    on exceptions. Nothing is kept after ``tap(x)`` returns, after ``clear()`` or after exit.
    A tapped module that runs twice in one forward raises instead of being overwritten; a
    tapped module that never ran raises an error naming it.

    Args:
        model: the encoder (``torch.compile``, DDP and DataParallel wrappers are unwrapped;
            ``tap(x)`` on a compiled model runs the original module eagerly).
        layers: list of layer specs (a single spec is accepted too).
        pool: None (raw), ``"avg"`` (mean over spatial or token positions), ``"flatten"``,
            ``"cls"`` (class token), ``"mean"`` (patch tokens only: prefix / register tokens
            excluded using the model's ``num_prefix_tokens``), ``"cls+mean"``, or a callable.
        detach: record without autograd history. Otherwise gradients flow through the outputs.
        stop_early: stop the forward after the last tapped layer in ``tap(x)``.
        num_prefix_tokens: override the number of prefix tokens ``"mean"`` skips.

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
        >>> with LayerTap(net, ["0"]) as tap:
        ...     _ = net(torch.randn(2, 8))
        ...     tap.outputs["0"].shape
        torch.Size([2, 16])
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
    ) -> None:
        model = check_module(model, "LayerTap")
        specs: list[LayerSpec] = [layers] if isinstance(layers, (int, str)) else list(layers)
        if not specs:
            raise HeadkitError("LayerTap needs at least one layer spec, got an empty list")
        self.model = model
        self.inner = unwrap(model)
        self.compiled = is_compiled(model) or (self.inner is not model and is_compiled(self.inner))
        self.pool = check_pool(pool)
        self.detach = bool(detach)
        self.stop_early = bool(stop_early)
        self.npt = (
            num_prefix_tokens if num_prefix_tokens is not None else count_prefix_tokens(self.inner)
        )
        self.specs = specs
        self._targets: list[tuple[LayerSpec, int | str]] = []
        for spec in specs:
            self._targets.extend(resolve(self.inner, spec))
        self.keys: list[LayerSpec] = list(dict.fromkeys(k for k, _ in self._targets))
        self._names = sorted({t for _, t in self._targets if isinstance(t, str)})
        self._indices = sorted({t for _, t in self._targets if isinstance(t, int)})
        self._state = _TapState(self._names, self.detach)
        self._handles: list[RemovableHandle] = []
        self._outputs = _Outputs(self)
        self._patched = False  # inner.forward replaced for int indices in a with-block
        self._saved_forward: Any = None  # an instance-level forward it replaced, if any
        modules = dict(self.inner.named_modules())
        for name in self._names:
            self._handles.append(modules[name].register_forward_hook(_make_hook(self._state, name)))
        if self._names:
            self._handles.append(self.inner.register_forward_pre_hook(_make_root_pre(self._state)))
            self._handles.append(self.inner.register_forward_hook(_make_root_post(self._state)))

    @property
    def _store(self) -> dict[str, Any]:
        return self._state.store

    @property
    def _closed(self) -> bool:
        return self._state.closed

    # ------------------------------------------------------------------ running
    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> dict[LayerSpec, Any]:
        """Run the model on ``x`` and return ``{spec: output}`` (see the class docstring)."""
        self._check_open()
        self.clear()
        model = self.inner
        was_active = self._state.active
        self._state.active = True
        try:
            raw: dict[int | str, Any] = {}
            if self._indices:
                raw.update(self._run_indices(model, x, *args, **kwargs))
            else:
                self._state.stopping = self.stop_early
                self._state.in_forward = True
                try:
                    model(x, *args, **kwargs)
                except _StopForward:
                    pass
                finally:
                    self._state.in_forward = False
            self._check_fired()
            raw.update(self._store)
            return {key: self._finish(key, target, raw[target]) for key, target in self._targets}
        finally:
            self._state.stopping = False
            self._state.active = was_active
            self.clear()

    def _index_options(self, fi: Any, *, only: bool) -> dict[str, Any]:
        params = inspect.signature(fi).parameters
        opts: dict[str, Any] = {"indices": list(self._indices), "intermediates_only": only}
        if "stop_early" in params:
            # the final features need every block; tap(x) alone may stop after the last index
            opts["stop_early"] = only and self.stop_early and not self._names
        if needs_prefix(self.pool) and "return_prefix_tokens" in params:
            opts["return_prefix_tokens"] = True
        return opts

    def _run_indices(
        self, model: nn.Module, x: Any, *args: Any, **kwargs: Any
    ) -> dict[int | str, Any]:
        fi: Any = model.forward_intermediates
        opts = self._index_options(fi, only=True)
        self._state.in_forward = True
        try:
            outs = fi(x, *args, **kwargs, **opts)
        finally:
            self._state.in_forward = False
        return dict(
            zip(
                self._indices,
                _index_outputs(self.inner, self._indices, self.detach, outs),
                strict=True,
            )
        )

    def _patch_forward(self) -> None:
        """Context mode with int indices: run ``model(x)`` through ``forward_intermediates``."""
        model = self.inner
        names = [model.feature_info[i]["module"] for i in self._indices]  # type: ignore[index]
        if self.compiled:
            raise HeadkitError(
                f"int layer indices {self._indices} in a with-block need to run the model's "
                "forward_intermediates, which a compiled model cannot switch to; call tap(x), or "
                f"use module names, e.g. {names}"
            )
        if not callable(getattr(model, "forward_head", None)):
            raise HeadkitError(
                f"int layer indices {self._indices} in a with-block need timm's forward_head on "
                f"{type(model).__name__}; call tap(x), or use module names, e.g. {names}"
            )
        if getattr(model.__dict__.get("forward"), "_headkit_tap", False):
            raise HeadkitError(
                f"another LayerTap with int indices is already recording {type(model).__name__} "
                "in a with-block; tap all the indices with one LayerTap"
            )
        fi: Any = model.forward_intermediates
        head: Any = model.forward_head
        opts = self._index_options(fi, only=False)
        state = self._state  # the closure holds the state, not the tap
        indices = list(self._indices)
        detach = self.detach

        def forward(x: Any) -> Any:
            final, outs = fi(x, **opts)
            if state.active and not state.closed:
                outs = _index_outputs(model, indices, detach, outs)
                state.index_store.update(zip(indices, outs, strict=True))
            return head(final)

        self._saved_forward = model.__dict__.get("forward")
        model.forward = _mark(forward)
        self._patched = True
        # so that running only part of the model (forward_features) is reported, not ignored
        for child in model.children():
            self._handles.append(child.register_forward_pre_hook(_make_ran_hook(state)))

    def _unpatch_forward(self) -> None:
        if not self._patched:
            return
        self._patched = False
        if self._saved_forward is None:
            self.inner.__dict__.pop("forward", None)
        else:
            self.inner.forward = self._saved_forward
        self._saved_forward = None

    def _finish(self, key: LayerSpec, target: int | str, out: Any) -> Any:
        if (
            isinstance(target, str)
            and isinstance(out, Tensor)
            and target in self._state.versions
            and out._version != self._state.versions[target]
        ):
            raise HeadkitError(
                f"LayerTap: the output of {target!r} was modified in place by a later operation "
                "(e.g. ReLU(inplace=True)); tap the module after it instead"
            )
        return apply_pool(out, self.pool, self.npt, key)

    def _check_fired(self) -> None:
        missing = [n for n in self._names if n not in self._store]
        if missing:
            raise self._never_ran(missing)

    def _never_ran(self, missing: list[str]) -> HeadkitError:
        hint = ""
        if self.compiled:
            hint = (
                " The model is compiled: hooks added after its first compiled call never fire in "
                "PyTorch. Build the LayerTap before torch.compile, or call tap(x)."
            )
        if any(isinstance(t, int) and str(t) in missing for _, t in self._targets):
            hint += (
                " In a with-block, int indices are recorded by model(x) (its forward), not by "
                "forward_features or other methods."
            )
        return HeadkitError(
            f"LayerTap: tapped layer(s) {missing} never ran in the forward of "
            f"{type(self.inner).__name__}.{hint}"
        )

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> LayerTap:
        self._check_open()
        if self._indices:
            self._patch_forward()
        self._state.active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        st = self._state
        fired_any = bool(st.counts or st.store or st.index_store or st.any_ran)
        missing = [n for n in self._names if n not in st.store]
        missing += [str(i) for i in self._indices if i not in st.index_store]
        st.active = False
        self.close()  # removes the hooks and restores a patched forward
        if exc_type is None and missing and (fired_any or self.compiled):
            raise self._never_ran(missing)

    @property
    def outputs(self) -> dict[LayerSpec, Any]:
        """Outputs recorded by the last forward, keyed like ``tap(x)``'s result."""
        self._outputs.clear()
        if self._closed:
            return self._outputs
        for key, target in self._targets:
            if isinstance(target, str) and target in self._store:
                self._outputs[key] = self._finish(key, target, self._store[target])
            elif isinstance(target, int) and target in self._state.index_store:
                self._outputs[key] = self._finish(key, target, self._state.index_store[target])
        return self._outputs

    def _missing_error(self, key: LayerSpec) -> Exception:
        if key not in self.keys:
            return KeyError(f"{key!r} is not a tapped layer; tapped: {self.keys}")
        if self._closed:
            return KeyError(
                f"{key!r}: the LayerTap is closed; read tap.outputs inside the with-block"
            )
        target = next(t for k, t in self._targets if k == key)
        return self._never_ran([str(target)])

    def clear(self) -> None:
        """Drop every recorded tensor."""
        self._store.clear()
        self._state.index_store.clear()
        self._state.any_ran = False
        self._state.versions.clear()
        self._state.counts.clear()
        self._outputs.clear()

    def close(self) -> None:
        """Remove the hooks and drop every recorded tensor (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._unpatch_forward()
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
        """Shape and dtype of every tap from a dry run on the meta device (no data, no compute).

        Args:
            input_shape: shape of one input batch, e.g. ``(1, 3, 224, 224)``.
            dtype: dtype of the input.

        Returns:
            ``{spec: TapInfo(shape, dtype, layer)}``.

        Example:
            >>> from torch import nn
            >>> from headkit import LayerTap
            >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
            >>> LayerTap(net, ["0"], pool="avg").describe((2, 3, 32, 32))["0"].shape
            (2, 8)
        """
        self._check_open()
        meta_model = copy_module_tree(self.inner, meta=True)
        tap = LayerTap(
            meta_model,
            self.specs,
            pool=self.pool,
            detach=True,
            stop_early=self.stop_early,
            num_prefix_tokens=self.npt,
        )
        try:
            with torch.no_grad():
                x = torch.empty(tuple(int(s) for s in input_shape), dtype=dtype, device="meta")
                try:
                    outs = tap(x)
                except HeadkitError:
                    raise
                except Exception as err:
                    raise HeadkitError(
                        f"dry run of {type(self.inner).__name__} on the meta device with input "
                        f"{fmt_shape(input_shape)} failed: {type(err).__name__}: {err}"
                    ) from err
        finally:
            tap.close()
        info: dict[LayerSpec, TapInfo] = {}
        for key, target in self._targets:
            o = outs[key]
            t = o[0] if isinstance(o, (tuple, list)) else o
            if not isinstance(t, Tensor):
                raise HeadkitError(f"layer {key!r} returns {type(o).__name__}, not a tensor")
            info[key] = TapInfo(tuple(t.shape), t.dtype, target)
        return info

    def __repr__(self) -> str:
        return (
            f"LayerTap({type(self.inner).__name__}, layers={self.keys}, pool={self.pool!r}, "
            f"detach={self.detach}, stop_early={self.stop_early})"
        )


class _TapState:
    """What the hooks share; the hooks hold this, not the tap, so a dropped tap is collected."""

    def __init__(self, names: list[str], detach: bool) -> None:
        self.names = names
        self.detach = detach
        self.store: dict[str, Any] = {}
        self.index_store: dict[int, Any] = {}  # int taps recorded in a with-block
        self.any_ran = False  # some submodule ran inside the with-block
        self.versions: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.in_forward = False
        self.stopping = False
        self.closed = False
        self.active = False  # recording: inside tap(x) or a with-block


def _mark(fn: Any) -> Any:
    fn._headkit_tap = True
    return fn


def _make_root_pre(state: _TapState) -> Callable[[nn.Module, Any], None]:
    def root_pre(module: nn.Module, args: Any) -> None:
        state.in_forward = True
        state.counts.clear()

    return _mark(root_pre)  # type: ignore[no-any-return]


def _make_ran_hook(state: _TapState) -> Callable[[nn.Module, Any], None]:
    def ran(module: nn.Module, args: Any) -> None:
        if state.active:
            state.any_ran = True

    return _mark(ran)  # type: ignore[no-any-return]


def _make_root_post(state: _TapState) -> Callable[[nn.Module, Any, Any], None]:
    def root_post(module: nn.Module, args: Any, out: Any) -> None:
        state.in_forward = False

    return _mark(root_post)  # type: ignore[no-any-return]


def _make_hook(state: _TapState, name: str) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, out: Any) -> None:
        if state.closed or not state.active:
            return
        if not torch.compiler.is_compiling() and torch._C._current_autograd_node() is not None:
            return  # activation-checkpoint recompute during backward: keep the forward's value
        count = state.counts.get(name, 0) + 1
        state.counts[name] = count
        if count > 1 and state.in_forward:
            raise HeadkitError(
                f"LayerTap: module {name!r} ran {count} times in one forward (shared weights?); "
                "a tap keeps one output per layer. Tap a module that runs once, or its parent"
            )
        if state.detach:
            out = _detach(out)
        state.store[name] = out
        if isinstance(out, Tensor) and not torch.compiler.is_compiling() and not out.is_inference():
            state.versions[name] = out._version
        if state.stopping and len(state.store) == len(state.names):
            raise _StopForward

    return _mark(hook)  # type: ignore[no-any-return]


def _index_outputs(model: nn.Module, indices: list[int], detach: bool, outs: Any) -> list[Any]:
    if not isinstance(outs, (list, tuple)) or len(outs) != len(indices):
        got = len(outs) if isinstance(outs, (list, tuple)) else type(outs).__name__
        raise HeadkitError(
            f"{type(model).__name__}.forward_intermediates returned {got} outputs for indices "
            f"{indices}"
        )
    return [_detach(o) for o in outs] if detach else list(outs)


def strip_tap_hooks(model: nn.Module) -> None:
    """Remove every LayerTap hook from a copied module tree."""
    for m in model.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for hid, fn in list(hooks.items()):
                if getattr(fn, "_headkit_tap", False):
                    del hooks[hid]


def _detach(out: Any) -> Any:
    if isinstance(out, Tensor):
        return out.detach()
    if isinstance(out, tuple):
        return tuple(_detach(o) for o in out)
    if isinstance(out, list):
        return [_detach(o) for o in out]
    if isinstance(out, dict):
        return {k: _detach(v) for k, v in out.items()}
    return out


def copy_module_tree(model: nn.Module, *, meta: bool = False) -> nn.Module:
    """Copy the module tree without copying weights and without this module's tap hooks.

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
) -> dict[LayerSpec, TapInfo]:
    """Shape and dtype of every tap of ``model`` from a dry run on the meta device.

    Same as ``LayerTap(model, layers, pool=pool).describe(input_shape, dtype)``.

    Args:
        model: the encoder.
        layers: layer specs, as for `LayerTap`.
        input_shape: shape of one input batch.
        pool: pooling, as for `LayerTap`.
        dtype: input dtype.

    Returns:
        ``{spec: TapInfo(shape, dtype, layer)}``.

    Example:
        >>> from torch import nn
        >>> from headkit import feature_info
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> feature_info(net, ["0", "2"], (5, 8))["2"].shape
        (5, 4)
    """
    tap = LayerTap(check_module(model, "feature_info"), layers, pool=pool)
    try:
        return tap.describe(input_shape, dtype)
    finally:
        tap.close()
