"""Reading image files: every Pillow mode to float pixels, and walking class folders safely.

- `read_pixels`: one file to ``(C, H, W)`` float32 in [0, 1], ``C`` = 1 (grey modes) or 3,
  whatever its Pillow mode: 16-bit grey divided by 65535 (never clipped to 8 bits), palettes
  expanded, alpha dropped (premultiplied alpha undone first), CMYK / YCbCr / HSV converted;
  a mode it cannot convert faithfully is refused with the file named.
- `scan_modes`: the modes and sizes of a list of files from their headers (no pixels read),
  so what will be converted is counted and said once, before any work.
- `walk_folder`: ``root/<class>/...`` with symbolic links followed safely: no loop, no file
  twice, no link to the data folder (or above it) as a class, hidden files skipped; everything
  left out is listed with its reason.

Private (``headkit._images``); ``headkit._data`` builds the datasets on it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from .._errors import HeadkitError

__all__ = [
    "IMAGE_EXTENSIONS",
    "conversion_message",
    "display",
    "read_pixels",
    "scan_modes",
    "skipped_message",
    "walk_folder",
]

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)

# mode -> (channels, what is done to it; "" for the plain modes)
_MODES: dict[str, tuple[int, str]] = {
    "L": (1, ""),
    "RGB": (3, ""),
    "1": (1, "1-bit images ({m}) read as 0 and 1"),
    "LA": (1, "grey images with alpha ({m}): alpha dropped"),
    "La": (1, "grey images with premultiplied alpha ({m}): alpha undone and dropped"),
    "P": (3, "palette images ({m}): palette expanded"),
    "PA": (3, "palette images with alpha ({m}): palette expanded, alpha dropped"),
    "RGBA": (3, "colour images with alpha ({m}): alpha dropped"),
    "RGBa": (3, "colour images with premultiplied alpha ({m}): alpha undone and dropped"),
    "RGBX": (3, "padded colour images ({m}): padding dropped"),
    "CMYK": (3, "CMYK images ({m}): converted to RGB as (1 - C)(1 - K)"),
    "YCbCr": (3, "YCbCr images ({m}): converted to RGB (JPEG / BT.601 full range)"),
    "HSV": (3, "HSV images ({m}): converted to RGB"),
    "I;16": (1, "16-bit grey images ({m}) at 1/65535 scale"),
    "I;16B": (1, "16-bit grey images ({m}) at 1/65535 scale"),
    "I;16L": (1, "16-bit grey images ({m}) at 1/65535 scale"),
    "I;16N": (1, "16-bit grey images ({m}) at 1/65535 scale"),
    "I": (1, "32-bit integer grey images ({m}) at 1/65535 scale (values must be 0..65535)"),
    "F": (1, "32-bit float grey images ({m}) as they are (values must be in [0, 1])"),
}

_REFUSE_HINT = "save it as 8-bit or 16-bit grey or RGB (e.g. PNG), or remove it"


def display(name: str) -> str:
    """A file name printable in any locale: bytes that are not UTF-8 become ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def channels_of(mode: str) -> int:
    """1 for the grey modes, 3 for the colour ones (unknown modes: 3)."""
    return _MODES.get(mode, (3, ""))[0]


def _refuse(path: str, why: str) -> HeadkitError:
    return HeadkitError(f"cannot use image {display(path)!r}: {why}; {_REFUSE_HINT}")


def check_mode(path: str, mode: str) -> None:
    """Refuse a mode `read_pixels` does not convert, naming the file."""
    if mode not in _MODES:
        raise _refuse(
            path,
            f"Pillow mode {mode!r} is not converted to RGB by headkit (it reads "
            f"{', '.join(_MODES)})",
        )


def scan_modes(
    files: Iterable[str],
) -> tuple[Counter[str], set[tuple[int, int]]]:
    """Modes and ``(H, W)`` sizes of ``files`` from their headers only.

    Raises:
        HeadkitError: a file Pillow cannot open, or of a mode that is not converted (named).
    """
    from PIL import Image

    modes: Counter[str] = Counter()
    sizes: set[tuple[int, int]] = set()
    for path in files:
        try:
            with Image.open(path) as im:
                w, h = im.size
                mode = im.mode
        except Exception as err:
            raise HeadkitError(
                f"cannot read image {display(path)!r} ({type(err).__name__}): remove the file "
                "or replace it with a readable image"
            ) from None
        check_mode(path, mode)
        modes[mode] += 1
        sizes.add((h, w))
    return modes, sizes


def conversion_message(modes: Counter[str] | dict[str, int]) -> str:
    """One line on what was converted (empty when every image is plain 8-bit grey or RGB)."""
    parts = []
    for mode, n in sorted(modes.items(), key=lambda kv: (-kv[1], kv[0])):
        what = _MODES.get(mode, (3, ""))[1]
        if what:
            parts.append(f"{n} {what.format(m=mode)}")
    return ("converted " + "; ".join(parts)) if parts else ""


def _unpremultiply(colour: Any, alpha: Any) -> Any:
    import numpy as np

    a = alpha.astype(np.float32)[..., None]
    out = np.where(a > 0, colour.astype(np.float32) / np.maximum(a, 1.0), 0.0)
    return np.minimum(out, 1.0)


def _hsv_to_rgb(hsv: Any) -> Any:
    import numpy as np

    h, s, v = (hsv[..., i].astype(np.float64) / 255.0 for i in range(3))
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int64) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], -1)


def pixels_of(im: Any, path: str) -> Any:
    """An opened Pillow image as ``(H, W, C)`` float32 in [0, 1], ``C`` = 1 or 3."""
    import numpy as np

    mode = im.mode
    check_mode(path, mode)
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" else "RGB")
        mode = im.mode
    raw = np.asarray(im)
    if mode == "1":
        out = raw.astype(np.float32)[..., None]
    elif mode in ("L", "RGB"):
        out = raw.astype(np.float32) / 255.0
        out = out[..., None] if out.ndim == 2 else out
    elif mode in ("LA", "RGBA", "RGBX"):
        out = raw[..., :-1].astype(np.float32) / 255.0
    elif mode in ("La", "RGBa"):
        out = _unpremultiply(raw[..., :-1], raw[..., -1])
    elif mode == "CMYK":
        c = raw.astype(np.float32) / 255.0
        out = (1.0 - c[..., :3]) * (1.0 - c[..., 3:4])
    elif mode == "YCbCr":
        y, cb, cr = (raw[..., i].astype(np.float64) for i in range(3))
        rgb = np.stack(
            [
                y + 1.402 * (cr - 128.0),
                y - 0.344136 * (cb - 128.0) - 0.714136 * (cr - 128.0),
                y + 1.772 * (cb - 128.0),
            ],
            -1,
        )
        out = np.clip(rgb / 255.0, 0.0, 1.0)
    elif mode == "HSV":
        out = _hsv_to_rgb(raw)
    elif mode.startswith("I;16"):
        out = raw.astype(np.float32)[..., None] / 65535.0
    elif mode == "I":
        lo, hi = int(raw.min(initial=0)), int(raw.max(initial=0))
        if lo < 0 or hi > 65535:
            raise _refuse(
                path,
                f"32-bit integer pixels (mode I) from {lo} to {hi}, outside the 16-bit range "
                "0..65535 that headkit scales by 1/65535",
            )
        out = raw.astype(np.float32)[..., None] / 65535.0
    else:  # "F"
        finite = bool(np.isfinite(raw).all())
        top = float(raw.max(initial=0.0)) if finite else 0.0
        bottom = float(raw.min(initial=0.0)) if finite else 0.0
        if not finite or bottom < 0.0 or top > 1.0:
            what = "non-finite values" if not finite else f"values from {bottom:g} to {top:g}"
            raise _refuse(
                path, f"32-bit float pixels (mode F) with {what}; float images must be in [0, 1]"
            )
        out = raw.astype(np.float32)[..., None]
    return np.ascontiguousarray(out, dtype=np.float32)


_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's convert("L")


def read_pixels(path: str, channels: int) -> Any:
    """One image file as ``(C, H, W)`` float32 in [0, 1] (``C`` = 1 when ``channels`` is 1,
    else the image's own 1 or 3; grey is repeated to 3 channels later)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            arr = pixels_of(im, path)
    except HeadkitError:
        raise
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else "unreadable"
        raise HeadkitError(
            f"cannot read image {display(path)!r} ({type(err).__name__}: {first}): "
            "remove the file or replace it with a readable image"
        ) from None
    if channels == 1 and arr.shape[-1] == 3:
        arr = (arr @ np.asarray(_LUMA, dtype=np.float32))[..., None]
    return np.ascontiguousarray(np.moveaxis(arr, -1, 0))


# ----------------------------------------------------------------------------- folders


def _within(outer: str, inner: str) -> bool:
    """``inner`` is ``outer`` or inside it (real paths)."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _key(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def walk_folder(root: str) -> tuple[list[str], list[str], list[int], list[tuple[str, str]]]:
    """Classes, image files, their labels and what was left out (``(relative path, why)``).

    Raises:
        HeadkitError: no class folders, no images, or a class folder without images.

    Symbolic links are followed, safely: each file is taken once (by device and inode; a file
    reached through its own folder wins over a link to it), each folder is read once (no
    loop), and a link to the data folder or to a folder above it is never followed (as a class
    or inside one). Names starting with ``.`` (hidden files and folders, ``.DS_Store``,
    ``._x.png``) are left out. Files are ordered by class, then path.
    """
    root_real = os.path.realpath(root)
    skipped: list[tuple[str, str]] = []
    classes: list[str] = []
    class_dirs: dict[str, str] = {}  # real path -> class name
    # real folders before links, so a link to a class folder never takes its name
    top = sorted(os.scandir(root), key=lambda e: (e.is_symlink(), e.name))
    for e in top:
        is_dir = _is_dir(e)
        if e.name.startswith("."):
            skipped.append((e.name + ("/" if is_dir else ""), "hidden"))
        elif is_dir:
            real = os.path.realpath(e.path)
            if _within(real, root_real):
                skipped.append((e.name + "/", "a link to the data folder or a folder above it"))
            elif real in class_dirs:
                skipped.append((e.name + "/", f"the same folder as class {class_dirs[real]!r}"))
            else:
                class_dirs[real] = e.name
                classes.append(e.name)
        elif _is_file(e):
            skipped.append((e.name, "not in a class folder"))
        else:
            skipped.append((e.name, "a broken link" if e.is_symlink() else "not a regular file"))
    classes.sort()
    if not classes:
        _check_found(root, classes, [], [], skipped)

    seen_dirs: set[tuple[int, int]] = set()
    seen_files: dict[tuple[int, int], str] = {}
    found: list[tuple[int, str, str]] = []  # (class, relative path, path)
    links: list[tuple[int, os.DirEntry[str], str]] = []

    def walk(ci: int, path: str, rel: str, follow: bool) -> None:
        try:
            key = _key(os.stat(path))
        except OSError:
            skipped.append((rel + "/", "unreadable"))
            return
        if key in seen_dirs:
            skipped.append((rel + "/", "a folder already read (through a link)"))
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            skipped.append((rel + "/", "unreadable"))
            return
        for e in entries:
            r = os.path.join(rel, e.name)
            if e.name.startswith("."):
                skipped.append((r + ("/" if _is_dir(e) else ""), "hidden"))
            elif e.is_symlink() and not follow:
                links.append((ci, e, r))
            elif _is_dir(e):
                if e.is_symlink() and _within(os.path.realpath(e.path), root_real):
                    skipped.append((r + "/", "a link to the data folder or a folder above it"))
                else:
                    walk(ci, e.path, r, follow)
            else:
                take(ci, e, r)

    def take(ci: int, e: os.DirEntry[str], r: str) -> None:
        if not _is_file(e):
            skipped.append((r, "a broken link" if e.is_symlink() else "not a regular file"))
        elif not e.name.lower().endswith(IMAGE_EXTENSIONS):
            skipped.append((r, "not an image (by extension)"))
        else:
            key = _key(e.stat())
            if key in seen_files:
                skipped.append((r, f"the same file as {seen_files[key]}"))
            else:
                seen_files[key] = r
                found.append((ci, r, e.path))

    # the real folders first (their files win over links to them), then the links
    for ci, c in enumerate(classes):
        walk(ci, os.path.join(root, c), c, follow=False)
    while links:
        pending, links[:] = list(links), []
        for ci, e, r in pending:
            if _is_dir(e):
                if _within(os.path.realpath(e.path), root_real):
                    skipped.append((r + "/", "a link to the data folder or a folder above it"))
                else:
                    walk(ci, e.path, r, follow=True)
            else:
                take(ci, e, r)
    # a linked class whose every file was already taken through its own folder: left out
    used = {ci for ci, _, _ in found}
    gone = [c for ci, c in enumerate(classes) if ci not in used and os.path.islink(_j(root, c))]
    skipped += [(c + "/", "a link to images already taken") for c in gone]
    keep = {ci: i for i, ci in enumerate(ci for ci, c in enumerate(classes) if c not in gone)}
    classes = [c for c in classes if c not in gone]
    found = sorted((keep[ci], r, p) for ci, r, p in found)
    files, labels = [p for _, _, p in found], [ci for ci, _, _ in found]
    _check_found(root, classes, files, labels, skipped)
    return classes, files, labels, skipped


def _check_found(
    root: str, classes: list[str], files: list[str], labels: list[int], left_out: list[Any]
) -> None:
    """A folder without class folders, without images, or with an empty class is an error."""
    skipped = [p for p, _ in left_out]
    where = display(root)
    if not classes:
        if any(n.lower().endswith(IMAGE_EXTENSIONS) for n in skipped):
            raise HeadkitError(
                f"{where!r} holds images but no class sub-folders: put each class's images in "
                "its own folder, root/<class>/<image>"
            )
        raise HeadkitError(
            f"{where!r} has no class sub-folders of images (expected root/<class>/<image>)"
        )
    if not files:
        raise HeadkitError(
            f"no images under {where!r} (extensions {', '.join(IMAGE_EXTENSIONS)}); "
            f"found {len(skipped)} other files"
        )
    empty = [c for ci, c in enumerate(classes) if ci not in set(labels)]
    if empty:
        raise HeadkitError(
            f"class folders without images under {where!r}: {[display(c) for c in empty[:5]]}"
            + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            + ": remove them or add images"
        )


def _j(a: str, b: str) -> str:
    return os.path.join(a, b)


def _is_dir(e: os.DirEntry[str]) -> bool:
    try:
        return e.is_dir()
    except OSError:
        return False


def _is_file(e: os.DirEntry[str]) -> bool:
    try:
        return e.is_file()
    except OSError:
        return False


def skipped_message(facts: Any) -> str:
    """One line on the files left out of a folder, grouped by reason (names printable in any
    locale)."""
    reasons = facts.reasons or ["not an image (by extension)"] * len(facts.skipped)
    groups: dict[str, list[str]] = {}
    for name, why in zip(facts.skipped, reasons, strict=False):
        groups.setdefault(why, []).append(display(name))
    parts = []
    for why, names in groups.items():
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        parts.append(f"{len(names)} {why}: {', '.join(names[:3])}{more}")
    return f"left out {len(facts.skipped)} file(s) under {display(facts.source)!r}: " + "; ".join(
        parts
    )
