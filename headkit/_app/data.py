"""Images for the command line and the examples: folders and arrays, read lazily.

- image folders (``root/<class>/<image>``), streamed from disk by a `torch.utils.data.Dataset`
  (nothing is read before a batch needs it: folders larger than memory work); the folder walk
  and the pixel reading live in ``images``;
- ``.npz`` files of arrays (``x``/``y``, or ``x_train``/``y_train`` with ``x_test``/``y_test``),
  memory-mapped when stored uncompressed (``np.savez``).

scikit-learn's digits and the demo's task are in ``demo_data``, the seeded draws in ``draws``;
the public names are in `headkit.data`.
"""

from __future__ import annotations

import os
import struct
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .._errors import HeadkitError
from .demo_data import digits
from .draws import stratified_sample, stratified_split
from .images import (
    IMAGE_EXTENSIONS,
    channels_of,
    conversion_message,
    display,
    read_pixels,
    scan_modes,
    skipped_message,
    walk_folder,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ArrayImages",
    "DataFacts",
    "FolderImages",
    "ImageSource",
    "load_images",
    "open_images",
    "stratified_sample",
    "stratified_split",
]


@dataclass(frozen=True)
class DataFacts:
    """What was read, for the user and the JSON report.

    Attributes:
        source: the path (or ``"scikit-learn digits"``).
        kind: ``"folder"``, ``"npz"`` or ``"digits"``.
        n: number of samples available.
        classes: class names (folder names, or the label values as text).
        image_size: ``(H, W)`` of the stored images, or None when they differ.
        channels: channels of the stored images (1 or 3).
        skipped: files and folders left out, relative to the root (folders end with ``/``).
        note: anything else worth saying (pixel scaling, memory-mapping).
        reasons: why each of ``skipped`` was left out (same order).
        modes: Pillow modes of the images and how many of each (folders only).

    Example:
        >>> from headkit.data import load_images
        >>> facts = load_images(None, max_samples=20)[2]
        >>> facts.kind, facts.image_size, facts.channels
        ('digits', (8, 8), 1)
    """

    source: str
    kind: str
    n: int
    classes: list[str]
    image_size: tuple[int, int] | None
    channels: int
    skipped: list[str] = field(default_factory=list)
    note: str = ""
    reasons: list[str] = field(default_factory=list)
    modes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The facts as plain JSON types."""
        return {
            "source": self.source,
            "kind": self.kind,
            "n": self.n,
            "classes": list(self.classes),
            "image_size": list(self.image_size) if self.image_size else None,
            "channels": self.channels,
            "skipped": len(self.skipped),
            "note": self.note,
            "modes": dict(self.modes),
            "converted": conversion_message(self.modes),
        }


class _Images(Dataset[tuple[Tensor, int]]):
    """Common part: resize, channels, normalisation; subclasses read one image."""

    def __init__(
        self,
        labels: list[int],
        *,
        size: tuple[int, int] | None,
        channels: int,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ) -> None:
        self.labels = labels
        self.size = size
        self.channels = channels
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1) if mean else None
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1) if std else None

    def __len__(self) -> int:
        return len(self.labels)

    def _finish(self, img: Tensor) -> Tensor:
        """``(C, H, W)`` float in [0, 1] -> resized, channel-matched, normalised."""
        if self.size is not None and tuple(img.shape[-2:]) != self.size:
            img = F.interpolate(
                img[None], size=self.size, mode="bilinear", align_corners=False, antialias=True
            )[0]
        if img.shape[0] != self.channels:
            if img.shape[0] == 1:
                img = img.expand(self.channels, -1, -1)
            elif self.channels == 1:  # ITU-R BT.601 luma, as Pillow's convert("L")
                luma = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype, device=img.device)
                img = (img * luma.view(3, 1, 1)).sum(0, keepdim=True)
            else:
                raise HeadkitError(
                    f"images have {img.shape[0]} channels, the model expects {self.channels}"
                )
        if self.mean is not None and self.std is not None:
            img = (img - self.mean) / self.std
        return img.contiguous()


class FolderImages(_Images):
    """Images of a folder ``root/<class>/<image>``, read one by one when asked (streamed).

    Sub-folders inside a class folder are searched too, symbolic links followed safely
    (`headkit._images.walk_folder`). Files without an image extension and hidden files are left
    out (listed in `DataFacts.skipped`); a file with an image extension that cannot be decoded
    raises a `HeadkitError` that names it. Every Pillow mode is read at its own scale
    (`headkit._images.read_pixels`: 16-bit grey divided by 65535, palettes expanded, alpha
    dropped) or refused with the file named.
    """

    def __init__(
        self,
        files: list[str],
        labels: list[int],
        *,
        size: tuple[int, int] | None,
        expect_size: tuple[int, int] | None,
        channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(labels, size=size, channels=channels, mean=mean, std=std)
        self.files = files
        self.expect_size = expect_size

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path = self.files[i]
        arr = read_pixels(path, 1 if self.channels == 1 else 3)
        img = torch.from_numpy(arr)
        if (
            self.size is None
            and self.expect_size is not None
            and tuple(img.shape[-2:]) != self.expect_size
        ):
            h, w = self.expect_size
            raise HeadkitError(
                f"image {display(path)!r} is {img.shape[-2]}x{img.shape[-1]} pixels, the others "
                f"{h}x{w}: pass --size N (size=N) to resize every image to NxN"
            )
        return self._finish(img), self.labels[i]


class ArrayImages(_Images):
    """Images held in an array ``(N, C, H, W)`` (numpy, possibly memory-mapped, or a tensor).

    Samples are converted one batch at a time (``__getitems__``), so a memory-mapped array is
    never read whole.
    """

    def __init__(
        self,
        x: Any,
        labels: list[int],
        *,
        scale: float,
        size: tuple[int, int] | None,
        channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(labels, size=size, channels=channels, mean=mean, std=std)
        self.x = x
        self.scale = scale

    def _get(self, idx: list[int]) -> Tensor:
        import numpy as np

        if isinstance(self.x, Tensor):
            raw = self.x[torch.as_tensor(idx)]
        else:
            raw = torch.from_numpy(np.ascontiguousarray(self.x[np.asarray(idx)]))
        return raw.float() * self.scale

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self._finish(self._get([i])[0]), self.labels[i]

    def __getitems__(self, idx: list[int]) -> list[tuple[Tensor, int]]:
        batch = self._get(list(idx))
        return [(self._finish(b), self.labels[i]) for b, i in zip(batch, idx, strict=True)]


# ----------------------------------------------------------------------------- opening sources


@dataclass
class ImageSource:
    """An opened data source: labels, facts and a way to build a `Dataset` for a given input.

    ``test`` is set when the source brings its own test split (``x_test``/``y_test`` in an
    ``.npz``); `dataset` yields ``(image (C, H, W) float in [0, 1], label)``.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from headkit.data import open_images
        >>> path = os.path.join(tempfile.mkdtemp(), "toy.npz")
        >>> x = np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8)
        >>> np.savez(path, x=x, y=np.arange(20) % 2)
        >>> src = open_images(path)
        >>> src.facts.kind, src.facts.n, src.facts.image_size
        ('npz', 20, (8, 8))
        >>> image, label = src.dataset()[0]
        >>> tuple(image.shape), float(image.max()) <= 1.0
        ((1, 8, 8), True)
    """

    facts: DataFacts
    labels: list[int]
    _make: Any
    test: ImageSource | None = None

    def dataset(
        self,
        *,
        size: tuple[int, int] | None = None,
        channels: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> Dataset[tuple[Tensor, int]]:
        """A dataset yielding ``(image (C, H, W) float, label)``; ``size`` resizes every image."""
        ds: Dataset[tuple[Tensor, int]] = self._make(
            size=size,
            channels=channels or self.facts.channels,
            mean=mean,
            std=std,
        )
        return ds


def open_images(path: str | os.PathLike[str]) -> ImageSource:
    """Open an image folder or an ``.npz`` without reading the images.

    Args:
        path: a folder ``root/<class>/<image>`` or an ``.npz`` holding ``x`` (``(N, H, W)``,
            ``(N, H, W, C)`` or ``(N, C, H, W)``, uint8 or floats in [0, 1] or [0, 255]) and
            ``y`` (``(N,)`` integer labels); ``x_train``/``y_train`` with ``x_test``/``y_test``
            bring their own test split.

    Returns:
        An `ImageSource`.

    Raises:
        HeadkitError: a missing path, a single image file, an unreadable or malformed ``.npz``,
            a folder without class sub-folders or without images.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from headkit.data import open_images
        >>> path = os.path.join(tempfile.mkdtemp(), "toy.npz")
        >>> x = np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8)
        >>> np.savez(path, x=x, y=np.arange(20) % 2)
        >>> src = open_images(path)
        >>> src.facts.kind, src.facts.n, src.facts.image_size
        ('npz', 20, (8, 8))
        >>> image, label = src.dataset()[0]
        >>> tuple(image.shape), float(image.max()) <= 1.0
        ((1, 8, 8), True)
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise HeadkitError(
            f"data path {p!r} does not exist: pass an image folder root/<class>/<image> or an .npz"
        )
    if os.path.isdir(p):
        return _open_folder(p)
    if p.lower().endswith(IMAGE_EXTENSIONS):
        raise HeadkitError(
            f"{p!r} is a single image; pass the folder that holds one sub-folder of images per "
            "class (root/<class>/<image>), or an .npz with arrays x and y"
        )
    return _open_npz(p)


def _open_folder(root: str) -> ImageSource:
    classes, files, labels, left_out = walk_folder(root)  # raises where nothing usable
    modes, sizes = scan_modes(files)  # headers only: a bad file is named before any work
    size = next(iter(sizes)) if len(sizes) == 1 else None
    channels = max(channels_of(m) for m in modes)
    facts = DataFacts(
        source=root,
        kind="folder",
        n=len(files),
        classes=classes,
        image_size=size,
        channels=channels,
        skipped=[p for p, _ in left_out],
        note="streamed from disk",
        reasons=[why for _, why in left_out],
        modes=dict(modes),
    )

    def make(
        *,
        size: tuple[int, int] | None,
        channels: int,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ) -> FolderImages:
        return FolderImages(
            files,
            labels,
            size=size,
            expect_size=facts.image_size,
            channels=channels,
            mean=mean,
            std=std,
        )

    return ImageSource(facts, labels, make)


def _npz_member(path: str, key: str) -> Any:
    """Memory-map array ``key`` of an uncompressed ``.npz``; None when that is not possible."""
    import numpy as np

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    if fortran or dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset)


def _open_npz(path: str) -> ImageSource:
    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:
        raise HeadkitError(
            f"cannot read {path!r} as an .npz of arrays ({type(err).__name__}): pass an image "
            "folder root/<class>/<image> or an .npz with arrays x and y"
        ) from None
    if not hasattr(data, "files"):
        raise HeadkitError(
            f"{path!r} holds one array, not an .npz with arrays x and y (save with np.savez(path, x=..., y=...))"
        )
    keys = set(data.files)
    pairs = [("x", "y"), ("images", "labels"), ("x_train", "y_train"), ("X", "Y")]
    found = next(((a, b) for a, b in pairs if a in keys and b in keys), None)
    if found is None:
        raise HeadkitError(
            f"{path!r} needs arrays 'x' (images) and 'y' (labels); it has {sorted(keys)}"
        )
    source = _npz_split(path, data, *found)
    if found == ("x_train", "y_train") and {"x_test", "y_test"} <= keys:
        source.test = _npz_split(path, data, "x_test", "y_test", source.facts.classes)
    return source


def _npz_split(
    path: str, data: Any, xk: str, yk: str, classes: list[str] | None = None
) -> ImageSource:
    import numpy as np

    try:
        x = _npz_member(path, xk)
    except Exception:
        x = None
    mapped = x is not None
    if x is None:
        x = data[xk]
    y = np.asarray(data[yk]).reshape(-1)
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise HeadkitError(f"{path!r}: labels {yk!r} must be integers, got {y.dtype}")
    if x.ndim == 3:
        layout = "NHW"
    elif x.ndim == 4 and x.shape[1] in (1, 3):
        layout = "NCHW"
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        layout = "NHWC"
    else:
        raise HeadkitError(
            f"{path!r}: {xk} must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3; "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise HeadkitError(
            f"{path!r}: {xk} has {x.shape[0]} images but {yk} has {y.shape[0]} labels"
        )
    if np.issubdtype(x.dtype, np.integer):
        top = float(np.iinfo(x.dtype).max) if x.dtype == np.uint8 else 0.0
        if top == 0.0:
            top = float(_chunked_max(x))
            top = 255.0 if top <= 255 else top
        scale, note = 1.0 / top, f"integer pixels scaled by 1/{top:g}"
    elif np.issubdtype(x.dtype, np.floating):
        top = float(_chunked_max(x))
        if top <= 1.0:
            scale, note = 1.0, "float pixels in [0, 1]"
        elif top <= 255.0:
            scale, note = 1.0 / 255.0, "float pixels in [0, 255] scaled by 1/255"
        else:
            raise HeadkitError(
                f"{path!r}: {xk} holds values up to {top:g}; pixels must be in [0, 1] or [0, 255]"
            )
    else:
        raise HeadkitError(f"{path!r}: {xk} has dtype {x.dtype}; expected integers or floats")
    if layout == "NHW":
        x = x[:, None]
    elif layout == "NHWC":
        x = np.moveaxis(x, -1, 1) if mapped else np.ascontiguousarray(np.moveaxis(x, -1, 1))
    labels = [int(v) for v in y]
    if classes is None:
        classes = [str(c) for c in sorted(set(labels))]
    else:
        extra = sorted({str(v) for v in labels} - set(classes))
        if extra:
            raise HeadkitError(f"{path!r}: {yk} has labels the training labels lack: {extra[:5]}")
    remap = {int(c): i for i, c in enumerate(classes)}
    labels = [remap[v] for v in labels]
    facts = DataFacts(
        source=path if xk in ("x", "images", "X") else f"{path}[{xk}]",
        kind="npz",
        n=int(x.shape[0]),
        classes=classes,
        image_size=(int(x.shape[-2]), int(x.shape[-1])),
        channels=int(x.shape[1]),
        note=note + ("; memory-mapped" if mapped else ""),
    )

    def make(
        *,
        size: tuple[int, int] | None,
        channels: int,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ) -> ArrayImages:
        return ArrayImages(x, labels, scale=scale, size=size, channels=channels, mean=mean, std=std)

    return ImageSource(facts, labels, make)


def _chunked_max(x: Any, chunk: int = 4096) -> float:
    top = float("-inf")
    for s in range(0, x.shape[0], chunk):
        top = max(top, float(x[s : s + chunk].max()))
    return top


# ----------------------------------------------------------------------------- in memory


def load_images(
    path: str | os.PathLike[str] | None = None,
    size: int | tuple[int, int] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor, DataFacts]:
    """Images ``(N, C, H, W)`` in [0, 1], labels ``(N,)`` and `DataFacts`, all in memory.

    For small data (the demo, the examples); the CLI streams instead (`open_images`).

    Args:
        path: an image folder or an ``.npz`` (see `open_images`); None: scikit-learn's digits.
        size: resize every image to ``size`` (an int means square); None keeps their own size
            (images of different sizes then raise).
        max_samples: a seeded stratified draw of this many samples (`stratified_sample`).
        seed: seed of the draw.

    Returns:
        ``(images, labels, facts)``.

    Example:
        >>> from headkit.data import load_images
        >>> x, y, facts = load_images(None, size=16, max_samples=30, seed=0)
        >>> tuple(x.shape), tuple(y.shape), facts.source
        ((30, 1, 16, 16), (30,), 'scikit-learn digits')
    """
    hw: tuple[int, int] | None = None
    if size is not None:
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if path is None:
        x, y = digits()
        facts = DataFacts(
            "scikit-learn digits", "digits", int(x.shape[0]), [str(i) for i in range(10)], (8, 8), 1
        )
        if max_samples is not None:
            keep = stratified_sample(y, max_samples, seed)
            x, y = x[keep], y[keep]
        if hw is not None:
            x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
        return x, y, facts
    src = open_images(path)
    _warn_skipped(src.facts)
    ds = src.dataset(size=hw)
    idx = (
        stratified_sample(src.labels, max_samples, seed)
        if max_samples is not None
        else torch.arange(len(src.labels))
    )
    items = [ds[int(i)] for i in idx]
    x = torch.stack([im for im, _ in items])
    y = torch.tensor([lab for _, lab in items], dtype=torch.long)
    return x, y, src.facts


def _warn_skipped(facts: DataFacts) -> None:
    if facts.skipped:
        warnings.warn(skipped_message(facts), stacklevel=3)
    if conversion_message(facts.modes):
        warnings.warn(f"{display(facts.source)}: {conversion_message(facts.modes)}", stacklevel=3)
