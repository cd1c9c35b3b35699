"""Raw disk images: the file is the disk; its holes are the unallocated extents.

A sparse RAW file's holes are found with lseek(SEEK_DATA / SEEK_HOLE) and never read. The map of
data runs is cached a window at a time: from the first offset asked for, up to
MAP_WINDOW_RUNS runs ahead (64 KiB of offsets). The engine asks for extents chunk by chunk in
ascending order, so each run is looked up once (two lseek calls per data run over the whole file)
and a chunk inside the window costs a bisect, while a file with millions of runs never holds more
than one window in memory. Where the file system (or a block device) does not answer SEEK_DATA,
the whole file is one allocated extent; so is a remote object (no descriptor, images/source.py).
"""

from __future__ import annotations

import bisect
import errno
import os
from collections.abc import Iterator

from lukspack.errors import LukspackError
from lukspack.images.base import DiskImage, Extent
from lukspack.images.sniff import disk_signature, no_signature_warning
from lukspack.images.source import ByteSource

MAP_WINDOW_RUNS = 4096
_UNSUPPORTED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ESPIPE}


class HoleMap:
    """The data runs of bytes [0, size) of a file from `base`, found with SEEK_DATA/SEEK_HOLE."""

    def __init__(self, fd: int, base: int, size: int, name: str) -> None:
        self.fd, self.base, self.size, self.name = fd, base, size, name
        self.supported = fd >= 0  # a remote object (no descriptor) has no holes to find
        # the mapped window (lo, hi, starts, ends): the data runs inside [lo, hi), swapped as
        # one tuple so that a reader on another thread never sees half a window
        self.window: tuple[int, int, list[int], list[int]] = (0, 0, [], [])
        self.lseeks = 0  # for tests: the map is cheap

    def _seek(self, pos: int, whence: int) -> int | None:
        """The member offset lseek gives from member offset pos; None when no data follows."""
        self.lseeks += 1
        try:
            return os.lseek(self.fd, self.base + pos, whence) - self.base
        except OSError as e:
            if e.errno == errno.ENXIO:
                return None
            if e.errno in _UNSUPPORTED:
                self.supported = False
                return None
            raise LukspackError(f"{self.name}: cannot map its holes: {e.strerror}") from None

    def _fill(self, start: int) -> tuple[int, int, list[int], list[int]]:
        starts: list[int] = []
        ends: list[int] = []
        pos = start
        while pos < self.size and len(starts) < MAP_WINDOW_RUNS:
            data = self._seek(pos, os.SEEK_DATA)
            if data is None or data >= self.size:
                if not self.supported:
                    return self.window
                pos = self.size
                break
            hole = self._seek(data, os.SEEK_HOLE)
            if not self.supported:
                return self.window
            hole = self.size if hole is None else min(max(hole, data + 1), self.size)
            starts.append(max(data, pos))
            ends.append(hole)
            pos = hole
        self.window = (start, pos, starts, ends)
        return self.window

    @property
    def starts(self) -> list[int]:
        return self.window[2]

    def data_runs(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """(start, end) of each data run inside [start, end), in order."""
        pos = start
        while pos < end:
            lo, hi, starts, ends = self.window
            if self.supported and not lo <= pos < hi:
                lo, hi, starts, ends = self._fill(pos)
            if not self.supported:
                yield pos, end
                return
            stop = min(end, hi)
            i = bisect.bisect_right(ends, pos)
            while i < len(starts) and starts[i] < stop:
                yield max(starts[i], pos), min(ends[i], stop)
                i += 1
            pos = hi
            if hi >= self.size:
                return


class RawImage(DiskImage):
    format_name = "raw"

    def __init__(self, path: str, fd: int | ByteSource,
                 window: tuple[int, int] | None = None) -> None:
        super().__init__(path, fd, window)
        self.virtual_size = self.file_size
        self.holes = HoleMap(self.fd, self.base, self.file_size, path)
        if self.file_size and disk_signature(self._peek, self.file_size) is None:
            self.warnings.append(no_signature_warning(path))

    def _peek(self, offset: int, size: int) -> bytes:
        return self.source.read_at(self.base + offset, size)

    def extents(self, start: int = 0, end: int | None = None) -> Iterator[Extent]:
        end = self.virtual_size if end is None else min(end, self.virtual_size)
        pos = start
        for lo, hi in self.holes.data_runs(start, end):
            if lo > pos:
                yield Extent(pos, lo - pos, False)
            yield Extent(lo, hi - lo, True)
            pos = hi
        if pos < end:
            yield Extent(pos, end - pos, False)

    def _read_allocated(self, offset: int, view: memoryview) -> None:
        self.pread_exact(offset, view)
