"""torch.fx helpers: trace a model with chosen modules as leaves (for cuts and call counts)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx
from torch import nn

__all__ = ["call_counts", "trace", "within"]


class LeafTracer(torch.fx.Tracer):
    """Traces with the targets and the given modules as leaves; notes which module failed."""

    def __init__(self, targets: set[str] | None = None, leaves: set[str] | None = None) -> None:
        # defaults: GraphModule re-creates its tracer class without arguments when unpickled
        super().__init__()
        self.targets = targets or set()
        self.leaves = leaves or set()
        self.failed: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.targets or module_qualified_name in self.leaves:
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
            # m.forward, not the hook-running call: tracing never runs a user's (or a tap's)
            # hooks with proxies
            return super().call_module(m, m.forward, args, kwargs)
        except Exception:
            if self.failed is None:  # the innermost module whose forward could not be traced
                self.failed = self.path_of_module(m)
            raise


def within(name: str, ancestor: str) -> bool:
    return name == ancestor or name.startswith(ancestor + ".")


def trace(model: nn.Module, target: str | Iterable[str]) -> torch.fx.Graph | None:
    """Trace ``model`` with ``target`` as a leaf; a submodule whose forward cannot be traced
    (data-dependent control flow) becomes a leaf too, with the other modules of its class.
    None when the model's own forward cannot be traced."""
    targets = {target} if isinstance(target, str) else set(target)
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
        tracer = LeafTracer(targets, leaves)
        try:
            return tracer.trace(model, concrete_args=concrete or None)
        except Exception:
            failed = tracer.failed
            if not failed or failed in leaves or failed in targets:
                return None
            leaves.add(failed)
            cls = type(modules[failed])
            leaves.update(
                n
                for n, m in modules.items()
                if type(m) is cls
                and n
                and n not in targets
                and not any(within(t, n) for t in targets)
            )
    return None


def call_counts(model: nn.Module, names: Iterable[str]) -> dict[str, int]:
    """How many times each named module runs in one forward, from a torch.fx trace of the
    model in its current mode; only the names the trace sees as calls (modules inside an
    untraceable submodule, or a model that cannot be traced at all, are left out)."""
    wanted = set(names)
    # a name inside another one is traced in a second pass (a leaf hides what is inside it)
    outer = {n for n in wanted if not any(n != o and within(n, o) for o in wanted)}
    out: dict[str, int] = {}
    if wanted - outer:
        out.update(call_counts(model, wanted - outer))
    try:
        graph = trace(model, outer)
    except Exception:
        return out
    if graph is None:
        return out
    counts = dict.fromkeys(outer, 0)
    leaves: set[str] = set()
    for n in graph.nodes:
        if n.op == "call_module":
            t = str(n.target)
            if t in counts:
                counts[t] += 1
            else:
                leaves.add(t)
    # a target inside a leaf (an untraceable submodule) may run any number of times in it
    out.update({k: v for k, v in counts.items() if v > 0 or not any(within(k, x) for x in leaves)})
    return out
