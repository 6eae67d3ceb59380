"""The package layout: no import circles in headkit/, no import from a lower layer to a higher one,
no file over 800 lines, examples and benchmarks on the public API only."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "headkit"

# layer of each top-level part of headkit/ (a module may import its own layer or lower ones):
# errors <- kernels, dist, layers <- losses, heads, probe <- app, integrations <- public modules
LAYERS = {
    "headkit._errors": 0,
    "headkit._version": 0,
    "headkit._kernels": 1,
    "headkit._dist": 1,
    "headkit._layers": 1,
    "headkit._losses": 2,
    "headkit.heads": 2,
    "headkit.probe": 2,
    "headkit._app": 3,
    "headkit.integrations": 3,
    "headkit.ops": 4,
    "headkit.data": 4,
    "headkit.cli": 4,
    "headkit.__main__": 4,
    "headkit": 5,
}


def _modname(p: pathlib.Path) -> str:
    parts = list(p.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(p: pathlib.Path, mods: set[str]) -> set[str]:
    """Modules of headkit/ that ``p`` imports at run time (imports under TYPE_CHECKING left out;
    lazy imports inside functions count: they run too)."""
    m = _modname(p)
    tree = ast.parse(p.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for sub in node.body for n in ast.walk(sub))
    base = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                b = base[: len(base) - (node.level - 1)]
                mod = ".".join(b + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the module pkg.sub; `from pkg import name`, pkg
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in mods and t != m)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_modname(p): p for p in PKG.rglob("*.py")}
    mods = set(files)
    graph: dict[str, set[str]] = {}
    for m, p in files.items():
        deps = _imports(p, mods)
        # a package's __init__ importing its own children is the package, not a circle
        graph[m] = {d for d in deps if not (p.name == "__init__.py" and d.startswith(m + "."))}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(mod: str) -> int:
    best = max((k for k in LAYERS if mod == k or mod.startswith(k + ".")), key=len)
    return LAYERS[best]


def test_cycle_finder_finds_a_circle() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, f"import circles in headkit/: {cycles}"


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in _graph() if not any(m == k or m.startswith(k + ".") for k in LAYERS)]
    assert not unplaced, f"modules of headkit/ outside the layer table: {unplaced}"


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    bad = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in _graph().items()
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_file_over_800_lines(path: pathlib.Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= 800, f"{path.relative_to(ROOT)} has {n} lines (at most 800)"


def test_examples_and_benchmarks_use_the_public_api() -> None:
    bad = []
    for folder in ("examples", "benchmarks"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(p.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for n in names:
                    parts = n.split(".")
                    if parts[0] == "headkit" and any(x.startswith("_") for x in parts[1:]):
                        bad.append(f"{p.relative_to(ROOT)}:{node.lineno} imports {n}")
    assert not bad, "\n".join(bad)
