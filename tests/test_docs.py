"""Every code block of the README and of docs/ runs as written.

Blocks are found with mktestdocs (``grab_code_blocks``); every page is collected, whoever owns
it, so a block that breaks shows up here.

- ``python`` blocks: each runs on its own (a reader copies one block, not a page), in a fresh
  namespace, in an empty temporary folder; every name a block uses must be defined in it.
- ``bash`` blocks: each command (backslash continuations joined, ``# comments`` dropped) is
  sorted by what it starts with (`_POLICY`). ``headkit sweep`` and ``headkit --version`` run as
  written in a folder that holds the files the docs name: ``images/`` (a small image folder:
  3 classes x 8 images of 32x32 px), ``digits.npz`` (scikit-learn's digits, ``x`` and ``y``) and
  any ``--checkpoint FILE``, created as a Lightning-style checkpoint of the ``--model`` given.
  ``headkit demo`` runs with ``--smoke`` (the full demo takes minutes; CI runs it in smoke mode
  too). Install and setup commands are run by CI itself (``.ci/run``, whose first block is the
  README's test command); example scripts by ``examples/run_all_smoke.sh``. A command that fits
  no rule fails the test: decide how it is tested and add it to `_POLICY`.
- Other fences (``text``, ``yaml``, ...) are output or configuration and are not run; a
  fence with no language or an unknown one fails (a forgotten ``python`` would go untested).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import mktestdocs  # the dev extra installs it: a missing tool must fail, not skip the docs
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
RUN_LANGS = ("python", "py")
SHELL_LANGS = ("bash", "sh", "shell", "console")
QUIET_LANGS = ("text", "yaml", "toml", "json", "ini", "diff", "mermaid", "pycon", "txt")

# what each bash command is, by its start: "run" (as written), "smoke" (with --smoke),
# or a reason it is not run here
_POLICY: list[tuple[str, str]] = [
    ("headkit demo", "smoke"),
    ("headkit sweep", "run"),
    ("headkit --version", "run"),
    ("headkit --help", "run"),
    ("headkit sweep --help", "run"),
    ("python3 -m venv", "setup: run by CI (.ci/run)"),
    ("python -m venv", "setup: run by CI (.ci/run)"),
    ("pip install", "setup: run by CI (.ci/run)"),
    (". .venv/bin/activate", "setup: run by CI (.ci/run)"),
    ("pytest", "the test command itself: run by CI (.ci/run)"),
    ("bash .ci/run", "CI itself"),
    ("bash scripts/get_data.sh", "run by CI (.ci/run)"),
    ("mkdocs", "run by CI (.ci/run: mkdocs build --strict)"),
    ("python examples/", "run by examples/run_all_smoke.sh"),
    ("for s in examples/", "run by examples/run_all_smoke.sh"),
    ("torchrun", "run by examples/run_all_smoke.sh"),
    ("bash examples/run_all_smoke.sh", "run by CI (.ci/run)"),
    ("python benchmarks/", "a benchmark: run by hand, results in benchmarks/RESULTS.md"),
]


def _blocks(langs: tuple[str, ...]) -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        text = (ROOT / page).read_text()
        i = 0
        for lang in langs:
            for code in mktestdocs.grab_code_blocks(text, lang=lang):
                out.append((page, i, code))
                i += 1
    return out


def _commands(code: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        out.append(re.split(r"\s+#\s", line, maxsplit=1)[0].strip())
    return out


def _rule(cmd: str) -> str | None:
    # the longest matching start wins ("headkit sweep --help" over "headkit sweep")
    hits = [(len(k), v) for k, v in _POLICY if cmd == k or cmd.startswith(k + " ")]
    if not hits:
        hits = [(len(k), v) for k, v in _POLICY if cmd.startswith(k)]
    return max(hits)[1] if hits else None


PY = _blocks(RUN_LANGS)
SH = [(p, i, c) for p, i, code in _blocks(SHELL_LANGS) for c in _commands(code)]


def test_every_page_is_collected() -> None:
    assert "README.md" in PAGES and "docs/index.md" in PAGES
    assert len(PY) >= 5, "no python blocks found: is mktestdocs working?"


@pytest.mark.parametrize("page", PAGES)
def test_every_fence_has_a_known_language(page: str) -> None:
    text = (ROOT / page).read_text()
    fences = re.findall(r"^\s*```+\s*([^\s`]*)", text, flags=re.M)
    # fences alternate opening / closing; the closing ones carry no language
    langs = [f for j, f in enumerate(fences) if j % 2 == 0]
    known = RUN_LANGS + SHELL_LANGS + QUIET_LANGS
    bad = [lang or "(none)" for lang in langs if lang.split("{")[0] not in known]
    assert not bad, f"{page}: code fences with no or an unknown language: {bad}"


@pytest.mark.parametrize(("page", "index", "code"), PY, ids=[f"{p}-python{i}" for p, i, _ in PY])
def test_python_block_runs(
    page: str, index: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    try:
        exec(compile(code, f"{page} (python block {index})", "exec"), {"__name__": "__main__"})
    except Exception as err:
        pytest.fail(f"{page}, python block {index} fails: {type(err).__name__}: {err}\n{code}")


def _fixtures(folder: Path, cmd: str) -> None:
    import numpy as np
    from PIL import Image

    images = folder / "images"
    if not images.exists():
        g = np.random.default_rng(0)
        for c in range(3):
            (images / f"class{c}").mkdir(parents=True)
            for k in range(8):
                arr = (g.random((32, 32, 3)) * 80 + 60 * c).astype(np.uint8)
                Image.fromarray(arr).save(images / f"class{c}" / f"{k}.png")
    if not (folder / "digits.npz").exists():
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        np.savez(
            folder / "digits.npz", x=(x.reshape(-1, 8, 8) * 16).clip(0, 255).astype(np.uint8), y=y
        )
    args = shlex.split(cmd)
    if "--checkpoint" in args and "--model" in args:
        from headkit._app.zoo import build_model

        ckpt = folder / args[args.index("--checkpoint") + 1]
        if not ckpt.exists():
            model, _ = build_model(args[args.index("--model") + 1])
            sd = {f"backbone.{k}": v for k, v in model.state_dict().items()}
            torch.save({"state_dict": sd, "epoch": 1}, ckpt)


@pytest.mark.parametrize(
    ("page", "index", "cmd"), SH, ids=[f"{p}-bash{i}-{c[:40]}" for p, i, c in SH]
)
def test_shell_command(page: str, index: int, cmd: str, tmp_path: Path) -> None:
    rule = _rule(cmd)
    assert rule is not None, (
        f"{page}: no rule for the command {cmd!r}; decide how it is tested (tests/test_docs.py)"
    )
    if rule not in ("run", "smoke"):
        pytest.skip(rule)
    args = shlex.split(cmd)
    if rule == "smoke":
        args.append("--smoke")
        args.append("--no-progress")
    _fixtures(tmp_path, cmd)
    env = {**os.environ, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "headkit", *args[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, (
        f"{page}: `{cmd}` exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    )
