"""Deprecated home of the layer sweeps: everything moved to the `headkit.probe` package.

Kept only so that modules not yet updated (the CLI and the demo) keep importing; new code
imports from `headkit.probe`. Remove once nothing imports ``headkit._probe``.
"""

from __future__ import annotations

from .probe import *  # noqa: F403
from .probe import __all__ as __all__
