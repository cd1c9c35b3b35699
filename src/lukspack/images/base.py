"""The one reader interface every input format implements.

A DiskImage is the virtual disk a container describes: `virtual_size` bytes, read with
`read_into(offset, buf)`, which fills buf completely (unallocated ranges read as zeros without
touching the file). `extents()` lists which ranges hold data, so sparse sources cost what their
data costs. The pipeline never knows which format it reads.

A reader may be given a `window` (offset, size): the image is then that byte range of the file (a
disk inside an OVA tar, read in place); every file offset a reader uses is relative to it.
`check_unchanged()` raises SourceChanged when a file the image reads was truncated, grew or was
written to since it was opened; `read_into` checks once per CHECK_EVERY bytes it reads (every
engine chunk; not every 4 KiB read of `check`), a short read checks before it says "past the
end", and the engine, `convert`, `decrypt`, `verify --source` and `check` once more after the
last read, before anything is committed or reported, so what a source held while it changed
never becomes an output (a sparse RAW that shrinks would otherwise read as zeros past its new
end).
`warnings` holds one-line notes about the source that are not errors (a RAW file with no partition
table); the CLI prints them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lukspack.errors import FormatError, SourceChanged
from lukspack.images.source import ByteSource, as_source

CHECK_EVERY = 4 << 20  # bytes read_into reads between two checks that the source is unchanged


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    allocated: bool  # False: reads as zeros and costs no I/O


class BlockRuns:
    """Runs of equally allocated fixed-size blocks (a VHD or VHDX BAT), found once with numpy;
    extents(start, end) then costs a bisect and one step per run it crosses."""

    def __init__(self, allocated: np.ndarray, block_size: int) -> None:
        self.block_size = block_size
        cuts = np.flatnonzero(allocated[1:] != allocated[:-1]) + 1
        self.starts: list[int] = [0, *cuts.tolist()]  # first block of each run
        self.first_allocated = bool(allocated[0]) if len(allocated) else False
        self.blocks = len(allocated)

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        bs, starts = self.block_size, self.starts
        i = bisect.bisect_right(starts, start // bs) - 1
        pos = start
        while pos < end and i < len(starts):
            nxt = starts[i + 1] * bs if i + 1 < len(starts) else max(end, self.blocks * bs)
            stop = min(end, nxt)
            yield Extent(pos, stop - pos, self.first_allocated ^ bool(i & 1))
            pos, i = stop, i + 1


class DiskImage:
    """Base class; subclasses set format_name, virtual_size and implement _read_allocated."""

    format_name = "?"

    def __init__(self, path: str, fd: int | ByteSource,
                 window: tuple[int, int] | None = None) -> None:
        self.path = path
        self.source = as_source(fd, path)  # where the bytes come from (a file, or remote)
        self.fd = self.source.fd
        self.windowed = window is not None
        if window is None:
            self.base = 0
            self.file_size = self.source.size
        else:
            self.base, self.file_size = window
        self.virtual_size = 0
        self.bytes_read = 0  # what actually came from the file: proves holes cost nothing
        self._unchecked = 0  # bytes read_into gave since the source was last checked
        self.warnings: list[str] = []
        self.archive: dict[str, Any] | None = None  # set when the image is a member of an OVA

    # -- the interface -------------------------------------------------------------------------
    def read_into(self, offset: int, buf: bytearray | memoryview) -> None:
        """Fill buf with the virtual disk's bytes at offset; past the end reads as zeros."""
        mv = memoryview(buf).cast("B")
        end = offset + len(mv)
        pos = offset
        self._unchecked += len(mv)
        if self._unchecked >= CHECK_EVERY:  # an fstat: cheap next to 4 MiB of reads
            self._unchecked = 0
            self.check_unchanged()
        for ext in self.extents(offset, end):
            lo, hi = max(ext.offset, offset), min(ext.offset + ext.length, end)
            if lo >= hi:
                continue
            if lo > pos:
                mv[pos - offset : lo - offset] = bytes(lo - pos)
            view = mv[lo - offset : hi - offset]
            if ext.allocated:
                self._read_allocated(lo, view)
            else:
                view[:] = bytes(len(view))
            pos = hi
        if pos < end:
            mv[pos - offset :] = bytes(end - pos)

    def extents(self, start: int = 0, end: int | None = None) -> Iterator[Extent]:
        """Ranges of the virtual disk between start and end, in order, covering it."""
        end = self.virtual_size if end is None else min(end, self.virtual_size)
        if start < end:
            yield Extent(start, end - start, True)

    def allocated_size(self) -> int:
        return sum(e.length for e in self.extents() if e.allocated)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format_name,
            "virtual_size": self.virtual_size,
            "allocated_size": self.allocated_size(),
            "file_size": self.file_size,
        }
        if self.archive is not None:
            out["ova"] = dict(self.archive)
        return out

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the image reads, by name (a VMDK's extent files add theirs)."""
        return (self.path,)

    def sources(self) -> tuple[ByteSource, ...]:
        """Every byte source the image reads (a VMDK's extent files add theirs)."""
        return (self.source,)

    def check_unchanged(self) -> None:
        """Raise SourceChanged naming the change when a source changed since it was opened."""
        for src in self.sources():
            what = src.changed()
            if what is not None:
                name = self.path if src is self.source else src.name
                raise SourceChanged(f"{name}: changed while it was read: {what}; nothing was "
                                    "written from it, read it again once it is stable")

    def close(self) -> None:
        self.source.close()  # closing twice is a no-op
        self.fd = -1

    def __enter__(self) -> DiskImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- for subclasses ------------------------------------------------------------------------
    def _read_allocated(self, offset: int, view: memoryview) -> None:
        """Fill view with allocated data at virtual offset (within one allocated extent)."""
        raise NotImplementedError

    def pread_exact(self, file_offset: int, view: memoryview, what: str = "data") -> None:
        """Read len(view) bytes of the file at file_offset or raise a FormatError naming them."""
        got = 0
        if self.windowed and file_offset + len(view) > self.file_size:  # never past an OVA member
            raise FormatError(f"{self.path}: {what} at offset {file_offset} is past the end of "
                              f"the disk in the archive (size {self.file_size})")
        while got < len(view):
            n = self.source.readinto(self.base + file_offset + got, view[got:])
            if n == 0:
                self.check_unchanged()  # a file that shrank says so, not "past the end"
                raise FormatError(f"{self.path}: {what} at offset {file_offset + got} is past the "
                                  f"end of the file (size {self.file_size})")
            got += n
        self.bytes_read += got

    def pread(self, file_offset: int, size: int, what: str = "data") -> bytes:
        if file_offset + size > self.file_size:  # before allocating: size may come from a header
            raise FormatError(f"{self.path}: {what} ({size} bytes at offset {file_offset}) is past "
                              f"the end of the file (size {self.file_size})")
        buf = bytearray(size)
        self.pread_exact(file_offset, memoryview(buf), what)
        return bytes(buf)
