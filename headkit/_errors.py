"""One error type and the helpers that make messages precise."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["HeadkitError", "closest", "first_line", "fmt_shape"]


class HeadkitError(ValueError):
    """The error headkit raises for bad input.

    A subclass of `ValueError`, so ``except ValueError`` keeps working; the message names the
    bad value and what was expected.

    Example:
        >>> import headkit
        >>> try:
        ...     headkit.MLPHead(0, 8, 4)
        ... except headkit.HeadkitError as err:
        ...     print("input_dim" in str(err))
        True
    """


def closest(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The up to ``n`` entries of ``choices`` closest to ``name`` (substring hits first)."""
    pool = list(dict.fromkeys(choices))
    hits = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if len(hits) < n:
        tail = name.rsplit(".", 1)[-1]
        for c in pool:
            if len(hits) >= n:
                break
            if c not in hits and tail and (tail in c or c.endswith(tail)):
                hits.append(c)
    return hits


def fmt_shape(shape: Iterable[int]) -> str:
    """``(2, 3, 4)``-style text for a shape."""
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (its type's name when it has none), cut to
    ``limit`` characters: for one-line messages that wrap a lower-level error."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]
