"""Repository-wide pytest setup: one thread per test process, and every test and every doctest
starts from the same RNG state.

``pytest -n 2`` on 2 cores runs two worker processes; with torch's default of one OpenMP thread
per core each, 4 threads share 2 cores and OpenMP's barriers spin: small ops (a probe step on 100
samples) ran up to 70x slower, and the suite took over half an hour. One thread per process (the
workers, and the subprocesses the tests start, which inherit the environment) keeps it fast. Set
``OMP_NUM_THREADS`` yourself to override.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import random

import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    torch.manual_seed(0)
