"""`truncate_at`: cut an encoder at a layer, sharing weights and skipping the rest."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys

from .._errors import HeadkitError
from .fx import trace as _trace
from .fx import within as _within
from .hooks import copy_module_tree, in_backward, pick_call
from .model import (
    Call,
    Hint,
    LayerSpec,
    block_lists,
    channel_hint,
    check_module,
    declared_layout,
    library,
    pad_token_id,
    strip_wrapper_prefix,
    unwrap,
)
from .model import num_prefix_tokens as prefix_tokens_of
from .pool import Pool, PoolContext, apply_pool, check_batch_first, check_pool, needs_prefix
from .run import positional_params, timm_options
from .specs import Target, parse_targets

__all__ = ["Truncated", "truncate_at"]

ROUTES = ("timm", "sequential", "fx", "blocks", "hook")


# ----------------------------------------------------------------------------- stopping


class _CutStop(Exception):
    """Raised by the cut's hook at the chosen call of the layer (caught by `Truncated`)."""

    def __init__(self, value: Any) -> None:
        super().__init__("headkit truncation point reached")
        self.value = value


class _PastCut(Exception):
    """Raised by a removed module if the forward reaches it."""


class _CutState:
    """Per-cut state of the stop hook (pickles and deep-copies with the cut)."""

    def __init__(self, target: str, call: Call) -> None:
        self.target = target
        self.call = call
        self.total: int | None = None  # calls of the layer per forward, once seen
        self.count = 0
        self.stop_at: int | None = None  # the call to stop at (0-based), when known
        self.values: dict[int, Any] = {}
        self.calibrating = False

    def resolve(self) -> None:
        c = self.call
        if isinstance(c, int) and c >= 0:
            self.stop_at = c
        elif self.total is not None:
            self.stop_at = self._index(self.total)
        else:
            self.stop_at = None

    def _index(self, n: int) -> int:
        assert self.call is None or isinstance(self.call, int)
        return pick_call("truncate_at", self.target, self.call, n)


def _exporting() -> bool:
    """Inside ``torch.export`` (where the forward must end normally)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


class _StopHook:
    """Forward hook (or forward-pre hook for ``"name:in"``) at the cut."""

    def __init__(self, state: _CutState, pre: bool) -> None:
        self.state = state
        self.pre = pre

    def __call__(self, module: nn.Module, args: Any, *rest: Any) -> None:
        if in_backward():
            return
        st = self.state
        if self.pre:
            kwargs = rest[0] if rest else {}
            value = (
                args[0]
                if args
                else next((v for v in kwargs.values() if isinstance(v, Tensor)), None)
            )
            if getattr(module, "inplace", False) and isinstance(value, Tensor):
                value = value.clone()
        else:
            value = rest[0]
        n = st.count
        st.count += 1
        if st.stop_at is not None and n == st.stop_at:
            if _exporting():  # an exception through the modules breaks torch.export's tracing
                st.values[n] = value
                return
            raise _CutStop(value)
        if st.calibrating:
            st.values[n] = value


class _EndHook:
    """Forward hook at the end of a cut block list: ends a forward that counts calls."""

    def __init__(self, state: _CutState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: Any, out: Any) -> None:
        if self.state.calibrating and not in_backward():
            raise _PastCut("end of the kept blocks")


class _Removed(nn.Module):
    """Placeholder for a module that lies after the cut."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise _PastCut(self.name)

    def extra_repr(self) -> str:
        return f"{self.name!r} removed by truncate_at"


# ----------------------------------------------------------------------------- the cut


class _DropKeys:
    """``load_state_dict`` pre-hook of a cut: full-model checkpoints load (keys of the removed
    part dropped and recorded, a DDP ``module.`` or compile ``_orig_mod.`` prefix stripped)."""

    def __init__(self, own: frozenset[str], dropped: frozenset[str]) -> None:
        self.own = own
        self.dropped = dropped

    @property
    def known(self) -> frozenset[str]:
        """Every key of the uncut model below the cut's prefix."""
        return self.own | self.dropped

    def __call__(
        self,
        module: nn.Module,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        skipped: list[str] = []
        for key in list(state_dict):
            if not key.startswith(prefix):
                continue
            rel = strip_wrapper_prefix(key[len(prefix) :], self.known)
            if prefix + rel != key:
                state_dict[prefix + rel] = state_dict.pop(key)
                key = prefix + rel
            if rel in self.dropped:
                del state_dict[key]
                skipped.append(rel)
        if isinstance(module, Truncated):
            module.last_skipped = sorted(skipped)


class _LoadResult(_IncompatibleKeys):
    """``load_state_dict``'s result, with the keys of the removed part that were skipped."""

    skipped_keys: list[str]

    def __repr__(self) -> str:
        base = super().__repr__()
        if not self.skipped_keys:
            return base
        return f"{base[:-1]}, skipped_keys={len(self.skipped_keys)} keys of the removed part>"

    __str__ = __repr__


_NO_INPUT: Any = type("_NoInput", (), {"__repr__": lambda self: "<no input>"})()


class Truncated(nn.Module):
    """A model cut at a layer by `truncate_at`: one wrapper type for every route.

    It shares the model's parameters and buffers (the same tensors), keeps their original
    names (``state_dict``, ``named_parameters``, ``load_state_dict`` use the model's keys), and
    pickles, deep-copies, ``torch.save``s and loads (``torch.load(weights_only=False)``).
    ``load_state_dict`` takes a full-model checkpoint (with or without a DDP ``module.``
    prefix): the keys of the removed part are skipped (listed in the result's
    ``skipped_keys`` and in ``last_skipped``), any other mismatch is an error.

    Attributes:
        route: how the cut was made: ``"timm"`` (``prune_intermediate_layers`` and
            ``forward_intermediates``), ``"sequential"`` (a prefix of an ``nn.Sequential``),
            ``"fx"`` (a torch.fx graph cut), ``"blocks"`` (a Hugging Face / open_clip block list
            cut after the layer's block, the forward stopped at the layer), ``"hook"`` (the
            model's forward stopped at the layer by a hook).
        layer: the layer spec as given.
        kept_params: parameters the cut holds.
        total_params: parameters of the model it was cut from.
        dropped_keys: state-dict keys of the model that the cut does not hold.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from headkit import truncate_at
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> cut = truncate_at(net, "1")
        >>> cut.route, cut.kept_params, cut.total_params
        ('sequential', 144, 212)
        >>> sorted(cut.dropped_keys)
        ['2.bias', '2.weight']
    """

    last_skipped: list[str]
    _impl: Any

    def __init__(
        self,
        impl: nn.Module,
        *,
        route: str,
        layer: LayerSpec,
        target: Target,
        pool: Pool,
        npt: int | None,
        hint: Hint | None,
        total_params: int,
        original_keys: frozenset[str],
        runner: Any = None,
        state: _CutState | None = None,
        arg_names: tuple[str, ...] = (),
        pad_id: int | None = None,
        training: bool = True,
        npt_given: bool = False,
        layout: bool | None = True,
    ) -> None:
        super().__init__()
        # the implementation's modules, parameters and buffers ARE the cut's (one dict each):
        # the cut's names are the model's, and .to() / .half() reach the implementation
        self.__dict__["_impl"] = impl
        self.__dict__["_modules"] = impl._modules
        self.__dict__["_parameters"] = impl._parameters
        self.__dict__["_buffers"] = impl._buffers
        self.__dict__["_non_persistent_buffers_set"] = impl._non_persistent_buffers_set
        self.route = route
        self.layer = layer
        self.target = target
        self.pool = pool
        self.npt = npt
        self.npt_given = npt_given
        self.hint = hint
        self.layout = layout
        self.total_params = total_params
        self.runner = runner
        self.state = state
        self.arg_names = arg_names
        self.pad_id = pad_id
        self.last_skipped = []
        own = frozenset(self.state_dict())
        self.dropped_keys = original_keys - own
        self.register_load_state_dict_pre_hook(_DropKeys(own, self.dropped_keys))  # type: ignore[no-untyped-call]
        self.train(training)

    @property
    def kept_params(self) -> int:
        """Number of parameters the cut holds."""
        return sum(p.numel() for p in self.parameters())

    def train(self, mode: bool = True) -> Truncated:
        super().train(mode)
        self._impl.training = mode
        return self

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> _IncompatibleKeys:
        self.last_skipped = []
        res = super().load_state_dict(dict(state_dict), strict=strict, assign=assign)
        out = _LoadResult(res.missing_keys, res.unexpected_keys)
        out.skipped_keys = list(self.last_skipped)
        return out

    def extra_repr(self) -> str:
        return (
            f"route={self.route!r}, layer={self.layer!r}, kept {self.kept_params:,} of "
            f"{self.total_params:,} parameters"
        )

    def forward(self, x: Any = _NO_INPUT, *args: Any, **kwargs: Any) -> Any:
        """The layer's output (pooled as asked) for the model's inputs.

        The first input is named ``x`` (any model's first positional input), so a dynamic batch
        exports as ``torch.export.export(cut, (x,), dynamic_shapes={"x": {0: Dim("batch")}})``.
        """
        if x is not _NO_INPUT:
            args = (x, *args)
        impl = self._impl
        if self.route == "timm":
            out = impl.forward_intermediates(*args, **kwargs, **self.runner)[0]
            return apply_pool(out, self.pool, self.target.index)
        if self.route in ("sequential", "fx"):
            out = impl(*args, **kwargs)
        else:
            out = self._run_hooked(args, kwargs)
        if self.pool is None:
            return out
        return apply_pool(out, self.pool, self.layer, self._pool_ctx(args, kwargs))

    def _run_hooked(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        st = self.state
        assert st is not None
        st.count = 0
        st.values = {}
        st.resolve()
        st.calibrating = st.stop_at is None
        try:
            self._impl(*args, **kwargs)
        except _CutStop as stop:
            return stop.value
        except _PastCut:
            pass
        finally:
            calibrating, st.calibrating = st.calibrating, False
        if not calibrating and st.stop_at is not None and st.stop_at in st.values:
            value = st.values.pop(st.stop_at)  # torch.export: the forward ran to its end
            st.values = {}
            return value
        if not calibrating:
            raise HeadkitError(
                f"truncate_at: {self.target.describe()} ran {st.count} time(s), not the call to "
                "cut at; the forward reached the end"
            )
        if st.count == 0:
            raise HeadkitError(
                f"truncate_at: layer {self.layer!r} never ran in the forward of the model"
            )
        st.total = st.count
        k = st._index(st.count)
        value = st.values[k]
        st.values = {}
        return value

    def _pool_ctx(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> PoolContext:
        bound = dict(zip(self.arg_names, args, strict=False))
        bound.update(kwargs)
        mask = bound.get("attention_mask")
        ids = bound.get("input_ids")
        # the batch size stays symbolic (no int()): a dynamic batch exports and traces
        batch = next(
            (v.shape[0] for v in (*args, *kwargs.values()) if isinstance(v, Tensor) and v.dim()),
            None,
        )
        return PoolContext(
            npt=self.npt,
            mask=mask if isinstance(mask, Tensor) else None,
            batch=batch,
            text=isinstance(ids, Tensor),
            pad_id=self.pad_id,
            input_ids=ids if isinstance(ids, Tensor) else None,
            hint=self.hint,
            npt_given=self.npt_given,
            batch_first=self.layout,
        )


# ----------------------------------------------------------------------------- torch.fx


def _cut_node(graph: torch.fx.Graph, t: Target) -> tuple[torch.fx.Node | None, bool]:
    """The node to cut at (the chosen call of the target, or its input for a pre tap, or the
    leaf that holds the target), and whether it is exact."""
    target = str(t.name)
    calls = [n for n in graph.nodes if n.op == "call_module"]
    exact = [n for n in calls if n.target == target]
    if exact:
        call = None if t.call is None else int(t.call)
        k = pick_call("truncate_at", target, call, len(exact), static=True)
        node = exact[k]
        if t.pre:
            first = node.args[0] if node.args else None
            if not isinstance(first, torch.fx.Node):
                return None, False
            return first, True
        return node, True
    holder = [n for n in calls if _within(target, str(n.target))]
    return (holder[0] if holder else None), False


def _fx_cut(model: nn.Module, graph: torch.fx.Graph, node: torch.fx.Node) -> torch.fx.GraphModule:
    out = next(n for n in graph.nodes if n.op == "output")
    out.args = (node,)
    # shape asserts after the cut (torch._assert is impure) would keep later layers alive
    after = False
    for n in list(graph.nodes):
        if n is node:
            after = True
        elif after and n.op == "call_function" and n.target is torch._assert:
            graph.erase_node(n)
    gm = torch.fx.GraphModule(model, graph, class_name=f"Truncated{type(model).__name__}")
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm


def _used_before(graph: torch.fx.Graph, node: torch.fx.Node) -> set[str]:
    """Modules and attributes the forward reaches up to ``node`` (in execution order)."""
    used: set[str] = set()
    for n in graph.nodes:
        if n.op in ("call_module", "get_attr"):
            used.add(str(n.target))
        if n is node:
            break
    return used


def _fx_route(model: nn.Module, t: Target) -> torch.fx.GraphModule | set[str] | None:
    """The exact FX graph cut at the target when it is the same in train and eval mode; else
    the set of modules the forward uses up to the cut in either mode (to prune the rest); None
    when the model's forward cannot be traced."""
    target = str(t.name)
    was_training = model.training
    try:
        graphs: list[tuple[torch.fx.Graph, torch.fx.Node, bool]] = []
        for mode in (True, False):
            model.train(mode)
            graph = _trace(model, target)
            if graph is None:
                return None
            node, exact = _cut_node(graph, t)
            if node is None:
                return None
            graphs.append((graph, node, exact))
        # before _fx_cut, which cuts the graphs in place and drops what does not feed the cut
        used = set().union(*(_used_before(g, n) for g, n, _ in graphs))
        if all(exact for _, _, exact in graphs):
            cuts = [_fx_cut(model, g, n) for g, n, _ in graphs]
            if cuts[0].code == cuts[1].code:
                return cuts[1]
        return used
    except HeadkitError:
        raise
    except Exception:
        return None
    finally:
        model.train(was_training)


def _prune_unused(model: nn.Module, used: set[str]) -> None:
    """Replace every weight-holding module that no used name lies in or under with a placeholder.

    Parameter-free modules stay: the tracer inlines them, so they never appear as used.
    """

    def needed(path: str) -> bool:
        return any(_within(u, path) or _within(path, u) for u in used)

    for path, module in list(model.named_modules()):
        if path and not needed(path):
            continue
        for name, child in list(module.named_children()):
            full = f"{path}.{name}" if path else name
            holds = any(True for _ in child.parameters()) or any(True for _ in child.buffers())
            if holds and not needed(full) and not isinstance(child, _Removed):
                setattr(module, name, _Removed(full))


# ----------------------------------------------------------------------------- block lists


def _cut_blocks(clone: nn.Module, inner: nn.Module, target: str) -> str | None:
    """Hugging Face / open_clip: cut the block list after the block that holds ``target`` (or
    empty it when ``target`` comes before it), and remove the other towers. Returns the name of
    the module whose end is the end of the cut forward (the last kept block, or the target), or
    None when the target is not in a block list's reach."""
    lists = block_lists(inner)
    order = [n for n, _ in inner.named_modules()]
    for lst in lists:
        if _within(lst, target) and lst != target:
            continue  # the target holds the list (e.g. "encoder"): nothing to cut
        if _within(target, lst):
            rest = target[len(lst) + 1 :]
            if not rest:
                return None
            keep = int(rest.split(".")[0]) + 1 if rest.split(".")[0].isdigit() else None
            if keep is None:
                return None
        elif target in order and lst in order and order.index(target) < order.index(lst):
            keep = 0
        else:
            continue
        holder = clone.get_submodule(lst)
        if isinstance(holder, nn.ModuleList):
            kept = list(holder.children())[:keep]
            parent_name, _, attr = lst.rpartition(".")
            parent = clone.get_submodule(parent_name) if parent_name else clone
            setattr(parent, attr, nn.ModuleList(kept))
        elif isinstance(holder, nn.Sequential):
            for name in list(holder._modules)[keep:]:
                del holder._modules[name]
        else:
            return None
        # the other towers (a CLIP model's text tower when the cut is in the image tower)
        for other in lists:
            top = other.split(".")[0]
            if (
                other != lst
                and not _within(target, top)
                and not _within(lst, top)
                and isinstance(clone._modules.get(top), nn.Module)
            ):
                setattr(clone, top, _Removed(top))
        return f"{lst}.{keep - 1}" if keep else target
    return None


# ----------------------------------------------------------------------------- entry point


def truncate_at(
    model: nn.Module,
    layer: LayerSpec,
    *,
    pool: Pool = None,
    num_prefix_tokens: int | None = None,
    call: Call = None,
    batch_first: bool | None = None,
) -> Truncated:
    """Cut ``model`` at ``layer``: a new module whose forward returns that layer's output.

    The result returns the same values as ``LayerTap(model, [layer], pool=pool)(x)[layer]``,
    shares parameters and buffers with ``model`` (same tensors, no copies), leaves ``model``
    untouched, and neither holds nor computes what comes after the cut. The cheapest exact route
    is used (`Truncated.route` says which):

    1. ``"timm"``, timm models with an int index: timm's ``prune_intermediate_layers`` on a copy
       of the module tree, then ``forward_intermediates(..., stop_early=True)``;
    2. ``"sequential"``, an ``nn.Sequential`` cut at a top-level child: the prefix of its
       children;
    3. ``"blocks"``, Hugging Face and open_clip encoders: the block list (``encoder.layer``,
       ``encoder.layers``, ``layers``, ``transformer.resblocks``, ...) cut after the block that
       holds the layer, the other towers of a two-tower model removed, and the forward stopped at
       the layer;
    4. ``"fx"``, a torch.fx graph cut (torch.fx directly, no torchvision), used when the traced
       graph is the same in train and eval mode; submodules whose forward cannot be traced are
       kept whole as leaves of the graph;
    5. ``"hook"``, otherwise: a copy of the module tree whose forward stops at the layer. The
       modules the traced forward reaches only after the cut are removed; when the model's own
       forward cannot be traced, the compute after the cut is skipped but its parameters stay.

    A module that runs several times in one forward (ALBERT's shared layer) needs ``call=`` (or
    ``"name@k"``), as in `LayerTap`; ``"name:in"`` cuts at a module's input.

    The result is a `Truncated` module: state dicts use the original keys, ``load_state_dict``
    accepts a full-model checkpoint (keys of the removed part skipped and reported, a DDP
    ``module.`` prefix stripped, any other mismatch an error), and it pickles, deep-copies and
    ``torch.save``s.

    Args:
        model: the encoder (compile / DDP / DataParallel / FSDP wrappers are unwrapped).
        layer: one layer spec, as for `LayerTap` (module name, ``"name:in"``, ``"name@k"`` or
            timm int index).
        pool: pooling, as for `LayerTap`.
        num_prefix_tokens: as for `LayerTap`.
        call: which call of a module that runs several times, as for `LayerTap`.
        batch_first: the layout of a 3-D output for the pool, as for `LayerTap` (None: as the
            model declares it; a layout it does not declare is refused, never guessed).

    Returns:
        The `Truncated` module (train / eval mode of the original).

    Raises:
        HeadkitError: a non-module, unknown layer (closest names listed), index out of range, a
            glob that matches more than one module, or a module that runs several times without
            ``call=``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from headkit import truncate_at
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> cut = truncate_at(net, "1")
        >>> cut(torch.randn(2, 8)).shape
        torch.Size([2, 16])
        >>> cut.kept_params
        144
    """
    inner = unwrap(check_module(model, "truncate_at"))
    pool = check_pool(pool, inner)
    batch_first = check_batch_first(batch_first)
    if call == "all":
        raise HeadkitError("truncate_at returns one output: call must be None or an int, not 'all'")
    targets = parse_targets(inner, layer, call)
    if len(targets) != 1:
        raise HeadkitError(
            f"truncate_at needs exactly one layer, but {layer!r} matches {len(targets)}: "
            f"{[t.name for t in targets][:8]}"
        )
    t = targets[0]
    if t.call == "all":
        raise HeadkitError(f"truncate_at returns one output; {layer!r} asks for every call")
    total = sum(p.numel() for p in inner.parameters())
    original_keys = frozenset(inner.state_dict())
    common: dict[str, Any] = {
        "layer": layer,
        "target": t,
        "pool": pool,
        "total_params": total,
        "original_keys": original_keys,
        "arg_names": positional_params(inner),
        "pad_id": pad_token_id(inner),
        "training": inner.training,
    }
    if t.index is not None:
        clone: Any = copy_module_tree(inner)
        clone.prune_intermediate_layers(indices=[t.index], prune_norm=True, prune_head=True)
        opts = timm_options(
            inner, [t.index], with_output=False, stop_early=True, prefix=needs_prefix(pool)
        )
        return Truncated(clone, route="timm", npt=0, hint=None, runner=opts, **common)
    name = str(t.name)
    module = inner.get_submodule(name)
    npt = num_prefix_tokens if num_prefix_tokens is not None else prefix_tokens_of(inner, name)
    common["npt"] = npt
    common["npt_given"] = num_prefix_tokens is not None
    common["hint"] = channel_hint(module, pre=t.pre)
    common["layout"] = batch_first if batch_first is not None else declared_layout(inner, name)
    # every route works on a copy of the module tree (the same parameters and buffers): the
    # cut's train()/eval() and hooks never reach the user's modules
    clone = copy_module_tree(inner)
    if isinstance(clone, nn.Sequential) and name in clone._modules:
        return Truncated(_sequential(clone, t), route="sequential", **common)
    lib = library(inner)
    end = _cut_blocks(clone, inner, name) if lib in ("transformers", "open_clip") else None
    if end is not None:
        return _hooked(clone, t, "blocks", common, end=end)
    route = _fx_route(clone, t)
    if isinstance(route, torch.fx.GraphModule):
        return Truncated(route, route="fx", **common)
    if route is not None:  # traced, but not to one exact graph: prune what is not used
        _prune_unused(clone, route)
    return _hooked(clone, t, "hook", common)


def _sequential(inner: nn.Sequential, t: Target) -> nn.Sequential:
    names = list(inner._modules)
    mods = list(inner._modules.values())
    target = inner._modules[str(t.name)]
    positions = [i for i, m in enumerate(mods) if m is target]
    where = f", registered under {[names[i] for i in positions]}" if len(positions) > 1 else ""
    call = None if t.call is None else int(t.call)
    k = pick_call("truncate_at", str(t.name), call, len(positions), where, static=True)
    pos = positions[k]
    end = pos if t.pre else pos + 1
    kept: OrderedDict[str, nn.Module] = OrderedDict()
    for n in names[:end]:
        m = inner._modules[n]
        assert m is not None
        kept[n] = m
    return nn.Sequential(kept)


def _hooked(
    clone: nn.Module, t: Target, route: str, common: dict[str, Any], end: str | None = None
) -> Truncated:
    name = str(t.name)
    state = _CutState(name, t.call if t.call != "all" else None)
    module = clone.get_submodule(name)
    if isinstance(module, _Removed):
        raise HeadkitError(f"truncate_at: layer {name!r} lies in a removed part of the model")
    hook = _StopHook(state, pre=t.pre)
    if t.pre:
        module.register_forward_pre_hook(hook, with_kwargs=True)
    else:
        module.register_forward_hook(hook)
    if end is not None:
        # every call of the layer has happened when the last kept block ends: the forward that
        # counts the calls stops there (the rest of the model may not run on a cut block list)
        clone.get_submodule(end).register_forward_hook(_EndHook(state))
    return Truncated(clone, route=route, state=state, **common)
