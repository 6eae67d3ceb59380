"""Optional dependencies for tests, imported per test: a test that uses one skips where it is
missing, and the other tests of its file still run."""

from __future__ import annotations

from typing import Any

import pytest


class Optional:
    """A module imported on first attribute access, with `pytest.importorskip`."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # introspection (doctest collection, copy): not a use
            raise AttributeError(attr)
        return getattr(pytest.importorskip(self._name), attr)
