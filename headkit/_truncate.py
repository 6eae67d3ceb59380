"""`truncate_at`: cut an encoder at a layer, sharing weights and skipping the rest."""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from ._errors import HeadkitError
from ._model import LayerSpec, check_module, resolve, unwrap
from ._pool import Pool, apply_pool, check_pool, needs_prefix, num_prefix_tokens
from ._tap import copy_module_tree

__all__ = ["truncate_at"]


class _Stop(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__("headkit truncation point reached")
        self.value = value


def _stop_hook(module: nn.Module, args: Any, out: Any) -> None:
    raise _Stop(out)


class _PoolModule(nn.Module):
    """Parameter-free pooling step appended to a truncated model."""

    def __init__(self, pool: Pool, npt: int | None, key: LayerSpec) -> None:
        super().__init__()
        self.pool = pool
        self.npt = npt
        self.key = key

    def forward(self, x: Any) -> Any:
        return apply_pool(x, self.pool, self.npt, self.key)


class _TimmTruncated(nn.Module):
    """Mixin for timm models cut with ``prune_intermediate_layers``."""

    _hk_index: int
    _hk_pool: Pool
    _hk_npt: int | None
    _hk_opts: dict[str, Any]

    def forward(self, x: Tensor) -> Any:
        out = self.forward_intermediates(x, **self._hk_opts)[0]  # type: ignore[operator]
        return apply_pool(out, self._hk_pool, self._hk_npt, self._hk_index)


class _HookTruncated(nn.Module):
    """Mixin for models that cannot be traced: run the forward, stop at the cut."""

    _hk_pool: Pool
    _hk_npt: int | None
    _hk_key: LayerSpec
    _hk_base: type[nn.Module]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        try:
            self._hk_base.forward(self, *args, **kwargs)
        except _Stop as stop:
            return apply_pool(stop.value, self._hk_pool, self._hk_npt, self._hk_key)
        raise HeadkitError(
            f"truncate_at: layer {self._hk_key!r} never ran in the forward of {self._hk_base.__name__}"
        )


_SWAPPED: dict[tuple[type, type], type] = {}


def _swapped_class(mixin: type[nn.Module], base: type[nn.Module]) -> type:
    """``Truncated<Base>``: the model's class with a mixin's forward in front (cached)."""
    key = (mixin, base)
    if key not in _SWAPPED:
        _SWAPPED[key] = type(
            f"Truncated{base.__name__}", (mixin, base), {"__module__": base.__module__}
        )
    return _SWAPPED[key]


class _LeafTracer(torch.fx.Tracer):
    """Traces with the cut target and the given modules as leaves; notes which module failed."""

    def __init__(self, target: str, leaves: set[str]) -> None:
        super().__init__()
        self.target = target
        self.leaves = leaves
        self.failed: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name == self.target or module_qualified_name in self.leaves:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:  # the innermost module whose forward could not be traced
                self.failed = self.path_of_module(m)
            raise


def _within(name: str, ancestor: str) -> bool:
    return name == ancestor or name.startswith(ancestor + ".")


def _trace(model: nn.Module, target: str) -> torch.fx.Graph | None:
    """Trace ``model`` with ``target`` as a leaf; a submodule whose forward cannot be traced
    (data-dependent control flow) becomes a leaf too, with the other modules of its class.
    None when the model's own forward cannot be traced."""
    leaves: set[str] = set()
    modules = dict(model.named_modules())
    # optional arguments take their defaults, as in cut(x): a proxy for `mask=None` would take
    # the `mask is not None` branch
    concrete = {
        name: p.default
        for name, p in inspect.signature(model.forward).parameters.items()
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    for _ in range(len(modules) + 1):
        tracer = _LeafTracer(target, leaves)
        try:
            return tracer.trace(model, concrete_args=concrete or None)
        except Exception:
            failed = tracer.failed
            if not failed or failed in leaves or failed == target:
                return None
            leaves.add(failed)
            cls = type(modules[failed])
            leaves.update(
                n
                for n, m in modules.items()
                if type(m) is cls and n and n != target and not _within(target, n)
            )
    return None


def _cut_node(graph: torch.fx.Graph, target: str) -> tuple[torch.fx.Node | None, bool]:
    """The first node that computes ``target`` (or the leaf that holds it), and whether it is
    ``target`` itself and the only call of it."""
    calls = [n for n in graph.nodes if n.op == "call_module"]
    exact = [n for n in calls if n.target == target]
    if exact:
        return exact[0], len(exact) == 1
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


def _fx_route(model: nn.Module, target: str) -> torch.fx.GraphModule | set[str] | None:
    """The exact FX graph cut at ``target`` when it is the same in train and eval mode; else
    the set of modules the forward uses up to the cut in either mode (to prune the rest); None
    when the model's forward cannot be traced."""
    was_training = model.training
    try:
        graphs: list[tuple[torch.fx.Graph, torch.fx.Node, bool]] = []
        for mode in (True, False):
            model.train(mode)
            graph = _trace(model, target)
            if graph is None:
                return None
            node, exact = _cut_node(graph, target)
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
    except Exception:
        return None
    finally:
        model.train(was_training)


class _Cut(nn.Module):
    """Placeholder for a module that lies after the cut."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise HeadkitError(
            f"module {self.name!r} was removed by truncate_at (it lies after the cut)"
        )


def _prune_unused(model: nn.Module, used: set[str]) -> None:
    """Replace every weight-holding module that no used name lies in or under with a `_Cut`.

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
            if holds and not needed(full) and not isinstance(child, _Cut):
                setattr(module, name, _Cut(full))


def _drop_keys_hook(
    dropped: frozenset[str],
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix) :]
        if rel.startswith("module.") and rel not in dropped:
            value = state_dict.pop(key)
            rel = rel[len("module.") :]
            state_dict[prefix + rel] = value
        if rel in dropped:
            del state_dict[prefix + rel]


def truncate_at(model: nn.Module, layer: LayerSpec, *, pool: Pool = None) -> nn.Module:
    """Cut ``model`` at ``layer``: a new module whose forward returns that layer's output.

    The result returns the same values as ``LayerTap(model, [layer], pool=pool)(x)[layer]``,
    shares parameters and buffers with ``model`` (same tensors, no copies), leaves ``model``
    untouched, and neither holds nor computes what comes after the cut. The cheapest exact route
    is used:

    1. timm models with an int index: timm's ``prune_intermediate_layers`` on a copy of the module
       tree, then ``forward_intermediates(..., stop_early=True)``;
    2. an ``nn.Sequential`` cut at a top-level child: the prefix of its children;
    3. a torch.fx graph cut (torch.fx directly, no torchvision), used when the traced graph is the
       same in train and eval mode; submodules whose forward cannot be traced (data-dependent
       control flow) are kept whole as leaves of the graph;
    4. otherwise a copy of the module tree whose forward stops at the layer through a hook. The
       modules the traced forward reaches only after the cut are removed (the layer lies inside
       an untraceable leaf, or the graph differs between train and eval mode); when the model's
       own forward cannot be traced, the compute after the cut is skipped but its parameters
       stay referenced.

    State dicts use the original keys: the truncated module's keys are a subset of the model's,
    and ``load_state_dict`` accepts a full-model checkpoint (keys of the removed part are dropped,
    a DDP ``module.`` prefix is stripped), so a pretrained SSL checkpoint can be cut.

    Args:
        model: the encoder (compile / DDP / DataParallel wrappers are unwrapped).
        layer: one layer spec, as for `LayerTap` (module name or timm int index).
        pool: pooling, as for `LayerTap`.

    Returns:
        The truncated ``nn.Module`` (train / eval mode of the original).

    Raises:
        HeadkitError: unknown layer (closest names listed), index out of range, or a glob that
            matches more than one module.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from headkit import truncate_at
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> cut = truncate_at(net, "1")
        >>> cut(torch.randn(2, 8)).shape
        torch.Size([2, 16])
        >>> sum(p.numel() for p in cut.parameters())
        144
    """
    inner = unwrap(check_module(model, "truncate_at"))
    pool = check_pool(pool)
    targets = resolve(inner, layer)
    if len(targets) != 1:
        raise HeadkitError(
            f"truncate_at needs exactly one layer, but {layer!r} matches {len(targets)}: "
            f"{[t for _, t in targets][:8]}"
        )
    key, target = targets[0]
    npt = num_prefix_tokens(inner)
    out: nn.Module | None = None
    if isinstance(target, int):
        tc: Any = copy_module_tree(inner)
        tc.prune_intermediate_layers(indices=[target], prune_norm=True, prune_head=True)
        tc.__class__ = _swapped_class(_TimmTruncated, type(inner))
        tc._hk_index = target
        tc._hk_pool = pool
        tc._hk_npt = npt
        fi: Any = inner.forward_intermediates
        params = inspect.signature(fi).parameters
        opts: dict[str, Any] = {"indices": [target], "intermediates_only": True}
        if "stop_early" in params:
            opts["stop_early"] = True
        if needs_prefix(pool) and "return_prefix_tokens" in params:
            opts["return_prefix_tokens"] = True
        tc._hk_opts = opts
        out = tc
    elif isinstance(inner, nn.Sequential) and target in inner._modules:
        names = list(inner._modules)
        kept = OrderedDict((n, inner._modules[n]) for n in names[: names.index(target) + 1])
        seq = nn.Sequential(kept)
        if pool is not None:
            seq.add_module("headkit_pool", _PoolModule(pool, npt, key))
        out = seq
    else:
        route = _fx_route(inner, target)
        if isinstance(route, torch.fx.GraphModule):
            gm = route
            if pool is not None:
                gm.add_submodule("headkit_pool", _PoolModule(pool, npt, key))
                node_out = next(n for n in gm.graph.nodes if n.op == "output")
                with gm.graph.inserting_before(node_out):
                    pooled = gm.graph.call_module("headkit_pool", (node_out.args[0],))
                node_out.args = (pooled,)
                gm.recompile()
            out = gm
        else:
            clone: Any = copy_module_tree(inner)
            base = type(inner)
            if route is not None:  # traced, but not to one exact graph: prune what is not used
                _prune_unused(clone, route)
            clone.get_submodule(target).register_forward_hook(_stop_hook)
            clone.__class__ = _swapped_class(_HookTruncated, base)
            clone._hk_pool = pool
            clone._hk_npt = npt
            clone._hk_key = key
            clone._hk_base = base
            out = clone
    out.train(inner.training)
    dropped = frozenset(inner.state_dict()) - frozenset(out.state_dict())
    out.register_load_state_dict_pre_hook(functools.partial(_drop_keys_hook, dropped))
    return out
