from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest

import headkit
import headkit.cli
import headkit.data
import headkit.ops
import headkit.probe

ROOT = os.path.dirname(os.path.dirname(__file__))


def public_objects() -> list[tuple[str, object]]:
    out = []
    for mod in (headkit, headkit.ops, headkit.probe, headkit.heads, headkit.data, headkit.cli):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or name.startswith("__") or name == "PRESETS":
                continue
            out.append((f"{mod.__name__}.{name}", obj))
    return out


@pytest.mark.parametrize(("name", "obj"), public_objects(), ids=[n for n, _ in public_objects()])
def test_every_public_name_is_documented(name: str, obj: object) -> None:
    doc = inspect.getdoc(obj) or ""
    assert len(doc) > 40, f"{name} has no real docstring"
    if inspect.isfunction(obj) or (inspect.isclass(obj) and not issubclass(obj, Exception)):
        assert "Example" in doc, f"{name}'s docstring has no example"
    with open(os.path.join(ROOT, "docs", "api.md")) as fh:
        api = fh.read()
    short = name.split(".")[-1]
    assert short in api, f"{name} is missing from docs/api.md"


def test_all_names_import() -> None:
    for mod in (headkit, headkit.ops, headkit.probe, headkit.heads, headkit.data, headkit.cli):
        for name in mod.__all__:
            assert hasattr(mod, name), f"{mod.__name__}.{name}"


def test_import_headkit_imports_no_optional_dependency() -> None:
    code = (
        "import sys, headkit, headkit.ops, headkit.probe, headkit.heads\n"
        "bad = [m for m in ('timm', 'lightly', 'torchvision', 'matplotlib', 'sklearn', 'pytorch_lightning', 'lightning', 'triton') if m in sys.modules]\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_py_typed_shipped() -> None:
    assert os.path.exists(os.path.join(os.path.dirname(headkit.__file__), "py.typed"))
