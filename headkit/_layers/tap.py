"""`LayerTap`: any layer of any encoder as the representation, without changing the model."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .._errors import HeadkitError, fmt_shape
from .fx import call_counts
from .hooks import (
    CALLS,
    Enter,
    Exit,
    Outputs,
    Record,
    RecordPre,
    Slot,
    StopForward,
    TapState,
    copy_module_tree,
    ran_twice,
)
from .model import (
    Call,
    Hint,
    LayerSpec,
    TapInfo,
    channel_hint,
    check_module,
    declared_layout,
    is_compiled,
    num_prefix_tokens,
    pad_token_id,
    unwrap,
    wrappers,
)
from .pool import (
    Pool,
    PoolContext,
    apply_pool,
    check_batch_first,
    check_pool,
    needs_prefix,
    pick_tensor,
)
from .run import has_fsdp, index_names, run_indices, signature_params, through_ddp
from .specs import Target, parse_targets

__all__ = ["LayerTap"]

# ----------------------------------------------------------------------------- public types


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
            excluded, their number read from the model), ``"cls+mean"``, ``"auto"`` (the pool
            that fits the model: ``"mean"`` where it has prefix tokens, else ``"avg"``; the
            same rule as ``headkit sweep``), or a callable. Token
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
        self.pool = check_pool(pool, self.inner)
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
        self._state = TapState(self)
        self._handles: list[RemovableHandle] = []
        self._outputs = Outputs(self)
        self._ctx_cache: dict[LayerSpec, tuple[int | None, Hint | None, bool | None]] = {}
        self._fsdp = has_fsdp(model)
        self._through = self._fsdp or (
            not self.compiled and any(isinstance(w, nn.DataParallel) for w in self.wrappers)
        )
        self._traced = False
        modules = dict(self.inner.named_modules())
        st = self._state
        for slot in self._slots:
            st.modules[slot] = modules[slot[0]]
        self._plan_keep()
        params = signature_params(self.inner)
        st.mask_names = ("attention_mask" in params, "input_ids" in params)
        if any(st.mask_names):
            with contextlib.suppress(TypeError, ValueError):
                st.signature = inspect.signature(self.inner.forward)
        self._pad_id = pad_token_id(self.inner)
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
                    Enter(st, root=name == ""), with_kwargs=True
                )
            )
        for slot in self._slots:
            name, pre = slot
            m = modules[name]
            if pre:
                hook = RecordPre(st, slot, clone=bool(getattr(m, "inplace", False)))
                self._handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                self._handles.append(m.register_forward_hook(Record(st, slot)))
        for name in ancestors:
            self._handles.append(modules[name].register_forward_hook(Exit(st), always_call=True))

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
            seen = CALLS.get(st.modules[slot], {}).get(slot[1])
            if t.call is None:
                if seen is None:
                    return False
                if seen > 1:
                    raise ran_twice(slot, seen)
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
        unknown = [s for s in self._slots if s[1] not in CALLS.get(st.modules[s], {})]
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
                CALLS.setdefault(st.modules[(name, pre)], {})[pre] = counts[name]

    @property
    def _closed(self) -> bool:
        return self._state.closed

    # ------------------------------------------------------------------ running
    def __call__(self, *args: Any, **kwargs: Any) -> dict[LayerSpec, Any]:
        """Run the model with these arguments and return ``{spec: output}`` (see the class)."""
        with self._session():
            raw = self._forward(args, kwargs, stop=self.stop_early, with_output=False)[1]
            return self._finish_all(raw)

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        """One call of the tap: open, recording, and left clean whatever happens."""
        self._check_open()
        self.clear()
        st = self._state
        was_active = st.active
        st.active = True
        try:
            yield
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
        with self._session():
            output, raw = self._forward(args, kwargs, stop=False, with_output=True)
            return output, self._finish_all(raw)

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
                    except StopForward:
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
        return through_ddp(ddp, body, args, kwargs)

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
        # named taps need the forward past the indices: only stop when there are none
        stop = (not with_output) and self.stop_early and not self._slots
        output, values = run_indices(
            self.inner,
            self._indices,
            args,
            kwargs,
            with_output=with_output,
            stop_early=stop,
            prefix=needs_prefix(self.pool),
            detach_outputs=self.detach,
        )
        return output, {i: v for i, v in values.items()}

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
                    raise ran_twice(slot, n)
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
            names = index_names(self.inner, self._indices)
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
            raise ran_twice(*twice[0])
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
