"""The ``headkit`` command as a function: ``main(["sweep", ...])`` is ``headkit sweep ...``.

`main` takes the command's arguments (``demo``, ``sweep``; see ``headkit --help``) and returns
its exit status.

Returns the exit status: 0 on success, 2 with one line on standard error for bad input.

Example:
    >>> from headkit.cli import main
    >>> main(["sweep", "--model", "timm:resnet18", "--data", "/no/such/folder"])
    2
"""

from __future__ import annotations

from ._app.cli import main

__all__ = ["main"]
