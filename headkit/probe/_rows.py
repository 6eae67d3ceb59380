"""Feature rows read in batches: an in-memory tensor or a float32 file on disk.

Every consumer of features (probes, kNN, spectra) reads them through `Rows`, so the same code
serves features that fit in memory and stores that do not: a stored layer is memory-mapped and
the pages a batch touched are handed back to the kernel every few tens of MiB, so the resident
memory of a sweep stays bounded by a batch, whatever the size of the file.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref
from collections.abc import Iterator
from typing import Any, BinaryIO

import torch
from torch import Tensor

from .._errors import HeadkitError

__all__ = ["FileWriter", "Rows", "open_stored", "register_stored"]

# pages a file reader may keep mapped before it hands them back (MADV_DONTNEED)
_RELEASE_BYTES = 32 << 20
_STORED: dict[int, tuple[weakref.ref[Tensor], str]] = {}


def register_stored(t: Tensor, path: str) -> None:
    """Remember that ``t`` is the whole of the float32 file ``path`` (read it back streaming)."""
    key = id(t)
    _STORED[key] = (weakref.ref(t, lambda _: _STORED.pop(key, None)), path)


def open_stored(path: str, n: int, d: int) -> Tensor:
    """The ``(n, d)`` float32 file as a read-only (copy-on-write) memory-mapped tensor."""
    if n * d == 0:
        t = torch.zeros(n, d)
    else:
        t = torch.from_file(path, shared=False, size=n * d, dtype=torch.float32).view(n, d)
    register_stored(t, path)
    return t


class _Mapped:
    """A private read-only mapping of a float32 file whose touched pages are dropped regularly."""

    def __init__(self, path: str, n: int, d: int) -> None:
        self.path, self.n, self.d = path, n, d
        size = n * d * 4
        with open(path, "rb") as fh:
            actual = os.fstat(fh.fileno()).st_size
            if actual < size:
                raise HeadkitError(
                    f"feature file {path!r} has {actual} bytes, expected {size} ({n} x {d} float32)"
                )
            self.mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) if size else None
        self.t = (
            torch.frombuffer(self.mm, dtype=torch.float32).view(n, d)
            if self.mm is not None
            else torch.zeros(n, d)
        )
        self.touched = 0

    @property
    def can_read(self) -> bool:
        """Whether scattered rows are read with positioned reads (``os.preadv``)."""
        return self.mm is not None and hasattr(os, "preadv")

    def read_rows(self, rows: Tensor, out: Tensor) -> None:
        """Rows ``rows`` (CPU int64) into ``out`` (contiguous CPU float32), one positioned
        read per row, in file order.

        Scattered rows are not read through the mapping: a read fault maps the page-cache
        folio around the row, and with large folios 256 random rows of 2 KiB mapped a whole
        64 MiB file (a probe's random batches kept every layer's file resident).
        """
        nb = self.d * 4
        view = out.numpy().data.cast("B")
        order = torch.argsort(rows)
        with open(self.path, "rb", buffering=0) as fh:
            fd = fh.fileno()
            for j, r in zip(order.tolist(), rows[order].tolist(), strict=True):
                got = os.preadv(fd, [view[j * nb : (j + 1) * nb]], r * nb)
                if got != nb:
                    raise HeadkitError(
                        f"feature file {self.path!r}: short read of row {r} ({got} of {nb} bytes)"
                    )

    def touch(self, nbytes: int) -> None:
        self.touched += nbytes
        if self.touched >= _RELEASE_BYTES:
            self.release()

    def release(self) -> None:
        self.touched = 0
        if self.mm is not None and hasattr(mmap, "MADV_DONTNEED"):
            # a private mapping of pages never written: dropping them only unmaps them (they
            # stay in the page cache and are read again on the next access)
            self.mm.madvise(mmap.MADV_DONTNEED)


def _plain_cpu(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()


class Rows:
    """An ``(n, d)`` float32 matrix read in batches, optionally a subset of a bigger one.

    Args:
        data: a 2-D tensor (any device), or the path of a float32 file with ``shape`` given.
        shape: ``(n, d)`` of a file.
        subset: optional ``(m,)`` row indices (CPU int64) this view is restricted to.
    """

    def __init__(
        self,
        data: Tensor | str,
        shape: tuple[int, int] | None = None,
        subset: Tensor | None = None,
    ) -> None:
        self._tensor: Tensor | None = None
        self._file: _Mapped | None = None
        if isinstance(data, Tensor):
            if data.dim() != 2:
                raise HeadkitError(f"features must be (N, D), got shape {tuple(data.shape)}")
            self._tensor = data
            base_n, self.d = int(data.shape[0]), int(data.shape[1])
        else:
            if shape is None:
                raise HeadkitError("a feature file needs its (n, d) shape")
            self._file = _Mapped(data, shape[0], shape[1])
            base_n, self.d = shape
        self.subset = None if subset is None else subset.to("cpu", torch.long)
        self.n = base_n if self.subset is None else int(self.subset.numel())
        self._base_n = base_n

    @classmethod
    def of(cls, t: Tensor) -> Rows:
        """Rows of a tensor; a tensor that is a whole stored file is read from the file."""
        hit = _STORED.get(id(t))
        if hit is not None and hit[0]() is t:
            return cls(hit[1], (int(t.shape[0]), int(t.shape[1])))
        return cls(t)

    @property
    def device(self) -> torch.device:
        """Where the rows live (files: the CPU)."""
        return self._tensor.device if self._tensor is not None else torch.device("cpu")

    @property
    def path(self) -> str | None:
        """The file the rows are read from (None in memory)."""
        return self._file.path if self._file is not None else None

    @property
    def on_disk(self) -> bool:
        """True for rows read from a file."""
        return self._file is not None

    def select(self, idx: Tensor) -> Rows:
        """The rows ``idx`` (positions in this view) as a new view, without copying."""
        idx = idx.to("cpu", torch.long)
        out = Rows.__new__(Rows)
        out._tensor, out._file, out.d, out._base_n = self._tensor, self._file, self.d, self._base_n
        out.subset = idx if self.subset is None else self.subset[idx]
        out.n = int(idx.numel())
        return out

    def _base(self) -> Tensor:
        if self._tensor is not None:
            return self._tensor
        assert self._file is not None
        return self._file.t

    def take(self, idx: Tensor, out: Tensor | None = None) -> Tensor:
        """Rows ``idx`` (positions in this view, int64) as a float32 tensor on `device`."""
        base = self._base()
        rows = idx if self.subset is None else self.subset[idx.to("cpu")]
        rows = rows.to(base.device, torch.long)
        if self._file is not None and self._file.can_read:
            fits = out is not None and _plain_cpu(out) and out.shape == (len(rows), self.d)
            res = out if out is not None and fits else torch.empty(len(rows), self.d)
            self._file.read_rows(rows, res)
            if out is not None and res is not out:
                return out.copy_(res)
            return res
        if out is not None and out.device == base.device and base.dtype == torch.float32:
            torch.index_select(base, 0, rows, out=out)
            res = out
        else:
            res = base.index_select(0, rows).float()
        if self._file is not None:
            self._file.touch(int(rows.numel()) * self.d * 4)
        return res

    def span(self, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` (float32, on `device`; a copy for files)."""
        if self.subset is not None:
            return self.take(torch.arange(start, stop))
        block = self._base()[start:stop].float()
        if self._file is not None:
            block = block.clone()
            self._file.touch((stop - start) * self.d * 4)
        return block

    def block_rows(self, budget: int = 16 << 20, itemsize: int = 4) -> int:
        """Rows per block so that one block of ``itemsize``-byte values stays near ``budget``."""
        return max(64, budget // (itemsize * max(1, self.d)))

    def chunks(self, size: int | None = None) -> Iterator[Tensor]:
        """Consecutive blocks of rows, in order (float32, on `device`).

        ``size`` rows per block (default: about 16 MiB of float32 per block).
        """
        size = max(1, size if size is not None else self.block_rows())
        for s in range(0, self.n, size):
            yield self.span(s, min(self.n, s + size))
        self.release()

    def release(self) -> None:
        """Hand the mapped pages of a file back to the kernel (no-op in memory)."""
        if self._file is not None:
            self._file.release()

    def materialize(self) -> Tensor:
        """All rows as one tensor (a copy for files and subsets)."""
        if self.subset is None and self._tensor is not None:
            return self._tensor.float()
        return self.span(0, self.n)

    def __repr__(self) -> str:
        where = f"file {self._file.path!r}" if self._file is not None else str(self.device)
        return f"Rows({self.n} x {self.d}, {where})"


class FileWriter:
    """The one writer of feature files: float32 rows, read back memory-mapped (`Rows`).

    Two ways to fill a file: ``FileWriter(path)`` appends rows as they come (`write`);
    ``FileWriter(path, n=n, d=d)`` preallocates ``(n, d)`` and places rows at given positions
    (`write_at`, the distributed gather), through a shared mapping that is flushed and dropped
    from memory every 32 MiB.
    """

    def __init__(self, path: str, n: int | None = None, d: int | None = None) -> None:
        self.path = path
        self.n = 0 if n is None else n
        self.d: int | None = d
        self._fh: BinaryIO | None = None
        self._mm: Any = None
        self._t: Tensor | None = None
        self._touched = 0
        if n is None:
            self._fh = open(path, "wb")  # noqa: SIM115 - closed in finish()
            return
        size = n * (d or 0) * 4
        with open(path, "wb") as fh:
            fh.truncate(size)
        if size:
            with open(path, "r+b") as fh:
                self._mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_WRITE)
            self._t = torch.frombuffer(self._mm, dtype=torch.float32).view(n, d or 0)

    def write(self, rows: Tensor) -> None:
        """Append ``rows`` ``(b, d)`` (any device and float dtype; written as float32)."""
        if self._fh is None:
            raise HeadkitError(f"{self.path!r} is closed or preallocated (use write_at)")
        rows = rows.detach().to("cpu", torch.float32).contiguous()
        if self.d is None:
            self.d = int(rows.shape[1])
        elif int(rows.shape[1]) != self.d:
            raise HeadkitError(
                f"rows of width {int(rows.shape[1])} written to {self.path!r} of width {self.d}"
            )
        nbytes = rows.numel() * 4
        if nbytes:
            buf = (ctypes.c_char * nbytes).from_address(rows.data_ptr())
            self._fh.write(buf)
        self.n += int(rows.shape[0])

    def write_at(self, pos: Tensor, rows: Tensor) -> None:
        """Place ``rows`` ``(b, d)`` at rows ``pos`` ``(b,)`` of a preallocated file."""
        if self._t is None or pos.numel() == 0:
            return
        self._t.index_copy_(0, pos, rows)
        self._touched += rows.numel() * 4
        if self._touched >= 32 << 20:
            self._drop()

    def _drop(self) -> None:
        self._touched = 0
        if self._mm is not None:
            self._mm.flush()
            if hasattr(mmap, "MADV_DONTNEED"):
                self._mm.madvise(mmap.MADV_DONTNEED)

    def finish(self) -> tuple[str, int, int]:
        """Close the file; returns ``(path, n, d)``."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._mm is not None:
            self._drop()
            self._t = None
            self._mm.close()
            self._mm = None
        return self.path, self.n, self.d or 0

    def abort(self) -> None:
        """Close and delete the file."""
        self.finish()
        if os.path.exists(self.path):
            os.remove(self.path)
