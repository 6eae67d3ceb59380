"""Smoke runs on stand-in data (no registry data): they run, print no verdicts and no raw lists."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERDICT = re.compile(r"\b(AGREES|DISAGREES|INCONCLUSIVE)\b")
RAW_LIST = re.compile(r"\[('|\d+\.\d{4,})")  # a printed Python list of strings or raw floats


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    ["examples/paper/1_linear_theory.py", "benchmarks/bench_layer_choice.py"],
)
def test_smoke_on_standin_data(script: str, tmp_path: object) -> None:
    env = {
        **os.environ,
        "HEADKIT_DATA": str(tmp_path),  # empty: no registry data, so stand-in images
        "PYTHONPATH": ROOT,
        "MPLBACKEND": "Agg",
    }
    out = subprocess.run(
        [sys.executable, script, "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "SMOKE RUN" in text
    assert not VERDICT.search(out.stdout), VERDICT.search(out.stdout)
    assert not RAW_LIST.search(out.stdout), RAW_LIST.search(out.stdout)
    assert not os.path.exists(os.path.join(str(tmp_path), "runs"))  # smoke runs cache nothing
