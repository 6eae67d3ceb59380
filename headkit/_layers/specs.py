"""Layer specs: what a user writes to name a layer, resolved against the model.

A spec is a timm index (int, negative from the end), a dotted module name (a DDP ``module.``
prefix accepted), a glob (``"blocks.*"``), with ``":in"`` for the module's input and ``"@k"`` /
``"@*"`` for a call of a module that runs several times. `parse_targets` turns specs into
`Target`s; `resolve` matches one spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .._errors import HeadkitError, closest
from .model import (
    WRAPPER_PREFIXES,
    Call,
    LayerSpec,
    canonical_name,
    has_index_semantics,
    module_names,
    num_indices,
    strip_wrapper_prefix,
)

__all__ = ["Target", "parse_targets", "resolve"]

_GLOB = re.compile(r"[*?\[]")


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^.]*")
        elif c == "?":
            out.append("[^.]")
        elif c == "[":
            j = pattern.find("]", i)
            if j < 0:
                out.append(re.escape(c))
            else:
                out.append(pattern[i : j + 1])
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _names_hint(model: nn.Module) -> str:
    return "list them all with [name for name, _ in model.named_modules()]"


def resolve(model: nn.Module, spec: object) -> list[tuple[LayerSpec, int | str]]:
    """Expand one layer spec into ``(output key, int index or module name)`` pairs.

    A str is a dotted module name (a ``module.`` prefix is accepted either way) or a glob
    (``*`` within one name segment, ``**`` across segments, ``?``, ``[...]``); a glob's key is
    each matched name. An int is a timm index (negative counts from the end).
    """
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise HeadkitError(
            f"a layer spec must be an int index or a str module name / glob, got {spec!r}"
        )
    if isinstance(spec, int):
        if not has_index_semantics(model):
            top = [n for n, _ in model.named_children()][:8]
            raise HeadkitError(
                f"int layer index {spec} needs a model with timm's forward_intermediates contract; "
                f"{type(model).__name__} has no index semantics. Use module names instead, e.g. "
                f"{top} ({_names_hint(model)})"
            )
        n = num_indices(model)
        if not -n <= spec < n:
            raise HeadkitError(
                f"layer index {spec} is out of range for {type(model).__name__}: valid indices are "
                f"{-n}..{n - 1} ({n} intermediates)"
            )
        return [(spec, spec % n)]
    table = module_names(model)
    names = [n for n, _ in model.named_modules() if n]
    if _GLOB.search(spec):
        rx = _glob_regex(
            next((spec[len(w) :] for w in WRAPPER_PREFIXES if spec.startswith(w)), spec)
        )
        hits = [n for n in names if rx.match(n) or rx.match(canonical_name(n))]
        if not hits:
            raise HeadkitError(
                f"layer pattern {spec!r} matches no module of {type(model).__name__}; "
                f"closest names: {closest(spec.replace('*', ''), names)} ({_names_hint(model)})"
            )
        return [(canonical_name(h), h) for h in hits]
    name = strip_wrapper_prefix(spec, table)
    if name not in table:
        near = closest(name, names)
        raise HeadkitError(
            f"no layer named {spec!r} in {type(model).__name__}; closest: {near} ({_names_hint(model)})"
        )
    return [(spec, table[name])]


_SUFFIX = re.compile(r"^(?P<name>.+?)(?P<pre>:in)?(?:@(?P<call>-?\d+|\*))?\Z")


@dataclass(frozen=True)
class Target:
    """One resolved tap: where it reads and which call of the module.

    Attributes:
        key: the output key (the spec as given, or the matched name for a glob).
        index: a timm index (``forward_intermediates``), or None for a module.
        name: the real module name, or None for an index.
        pre: read the module's input (a forward-pre tap) instead of its output.
        call: which call of a module that runs several times in one forward: an int (negative
            counts from the end), ``"all"`` (a list of every call), or None (the module must run
            once).
    """

    key: LayerSpec
    index: int | None = None
    name: str | None = None
    pre: bool = False
    call: Call = None

    @property
    def slot(self) -> tuple[str, bool]:
        """``(module name, pre)``: what a hook records."""
        assert self.name is not None
        return (self.name, self.pre)

    def describe(self) -> str:
        if self.index is not None:
            return f"index {self.index}"
        where = f"the input of {self.name!r}" if self.pre else repr(self.name)
        if self.call is None:
            return where
        return f"{where} (call {self.call})"


def _check_call(call: object, where: str) -> Call:
    if call is None or call == "all":
        return call
    if isinstance(call, bool) or not isinstance(call, int):
        raise HeadkitError(
            f"{where}: call must be None, an int (negative from the end) or 'all', got {call!r}"
        )
    return call


def parse_targets(model: nn.Module, spec: object, call: object = None) -> list[Target]:
    """Expand one layer spec into `Target`s.

    Spec strings: ``"name"`` (the module's output), ``"name:in"`` (its input, a forward-pre tap:
    the value of a non-module op such as a residual add, read where the next module receives
    it), ``"name@k"`` (call ``k`` of a module that runs several times; ``-1`` the last),
    ``"name@*"`` (every call, as a list), combinable (``"name:in@-1"``) and with globs. ``call``
    is the default for specs without ``@``.
    """
    default = _check_call(call, "LayerTap")
    if isinstance(spec, str) and spec not in module_names(model):
        m = _SUFFIX.match(spec)
        if m and (m.group("pre") or m.group("call") is not None):
            c = m.group("call")
            chosen: Call = default if c is None else ("all" if c == "*" else int(c))
            out = []
            for key, name in resolve(model, m.group("name")):
                k = spec if key == m.group("name") else f"{key}{spec[len(m.group('name')) :]}"
                out.append(Target(k, name=str(name), pre=bool(m.group("pre")), call=chosen))
            return out
    pairs = resolve(model, spec)
    return [
        Target(k, index=t, call=None) if isinstance(t, int) else Target(k, name=t, call=default)
        for k, t in pairs
    ]
