"""Where ``headkit`` writes: output paths checked before any work, atomic writes, a fallback
file when a write fails at the end, and names printable in any locale."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any

from .._errors import HeadkitError, first_line

__all__ = [
    "check_folder",
    "check_outputs",
    "check_store_space",
    "check_writable_file",
    "fallback_path",
    "plot_formats",
    "printable_streams",
    "show",
    "why_not",
    "write_atomic",
    "write_text",
]


def show(path: str) -> str:
    """A path as it can be printed in any locale (undecodable bytes as ``\\xNN``)."""
    from .images import display

    return display(os.fspath(path))


def printable_streams() -> None:
    """Never fail on printing a name: unencodable characters come out escaped."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):  # an unusual stream: leave it
                reconfigure(errors="backslashreplace")


def check_writable_file(flag: str, path: str) -> bool:
    """Check before any work that ``path`` can be written; True when it exists (replaced)."""
    shown = show(path)
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise HeadkitError(f"{flag} {shown!r} is a folder; pass a file name, e.g. {flag} report")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise HeadkitError(f"{flag} {shown!r} exists and is not a regular file; pass a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        what = "is a file, not a folder" if os.path.exists(parent) else "does not exist; create it"
        raise HeadkitError(f"{flag} {shown!r}: the folder {show(parent)!r} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HeadkitError(f"{flag} {shown!r}: the folder {show(parent)!r} is not writable")
    exists = os.path.isfile(path)
    if exists and not os.access(path, os.W_OK):
        raise HeadkitError(f"{flag} {shown!r} exists and is not writable")
    return exists


def check_folder(flag: str, path: str) -> None:
    """A folder that exists and is writable, or can be created in a writable parent."""
    shown = show(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise HeadkitError(f"{flag} {shown!r} is a file; pass a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise HeadkitError(f"{flag} {shown!r} is not writable")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise HeadkitError(
            f"{flag} {shown!r} cannot be created: {show(parent)!r} is not a writable folder"
        )


def plot_formats() -> set[str]:
    """The file types matplotlib writes; an error where matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise HeadkitError(
            '--plot needs matplotlib: pip install "headkit[plot]" (or leave --plot out)'
        ) from None
    return set(Figure().canvas.get_supported_filetypes())


def check_outputs(args: argparse.Namespace) -> dict[str, bool]:
    """Every output path checked before any work: ``{flag: the file exists (replaced)}``."""
    found: dict[str, bool] = {}
    if args.out:
        found["--out"] = check_writable_file("--out", args.out)
    if args.plot:
        found["--plot"] = check_writable_file("--plot", args.plot)
        ext = os.path.splitext(args.plot)[1].lower().lstrip(".")
        kinds = plot_formats()
        if ext not in kinds:
            raise HeadkitError(
                f"--plot {show(args.plot)!r}: matplotlib writes {', '.join(sorted(kinds))}; "
                "end the name with one of them, e.g. sweep.png"
            )
    if args.out and args.plot and os.path.abspath(args.out) == os.path.abspath(args.plot):
        raise HeadkitError(f"--out and --plot are the same file {show(args.out)!r}")
    if args.store:
        check_folder("--store", args.store)
    return found


def check_store_space(store: str, n: int, dims: dict[str, int]) -> str:
    """Refuse before the sweep when the store's free space is below the features' size."""
    import shutil

    need = 4 * n * sum(dims.values())  # float32 rows
    where = store
    while not os.path.exists(where):
        where = os.path.dirname(os.path.abspath(where))
    free = shutil.disk_usage(where).free
    text = f"{need / 2**20:.1f} MiB of features for {n} images, {free / 2**20:.0f} MiB free"
    if need > free:
        raise HeadkitError(
            f"--store {show(store)!r} needs about {text}: free some space, pass another "
            "folder, or lower --max-samples"
        )
    return text


def write_atomic(path: str, write: Any) -> None:
    """``write(temporary path)`` in ``path``'s folder, then rename over ``path`` (atomic): a
    failure never leaves a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    base, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.tmp{ext}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    write_atomic(path, write)


def fallback_path(name: str) -> str:
    """A file in the current folder, or the temporary folder, that does not exist yet."""
    import tempfile

    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in (os.getcwd(), tempfile.gettempdir()):
        path = os.path.join(folder, f"{name}-{stamp}-{os.getpid()}.json")
        if os.access(folder, os.W_OK) and not os.path.exists(path):
            return path
    return os.path.join(tempfile.gettempdir(), f"{name}-{stamp}-{os.getpid()}.json")


def why_not(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return f"{type(err).__name__}: {first_line(err)}"
