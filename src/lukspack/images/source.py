"""The bytes a reader reads: a ByteSource (`size`, `readinto(offset, view)`, `read_at`, `close`).

Every format reader gets its bytes through one of these and nothing else, so the same readers
run over a local file or block device (LocalFile: pread on a descriptor) and over a remote object
(lukspack.remote.RemoteFile: ranged GETs through a block cache). `fd` is the local descriptor,
-1 for a remote object: only a local file has holes to find (SEEK_DATA/SEEK_HOLE, raw.py).
`stats()` is None for a local file and {"gets", "bytes"} for a remote one. `changed()` says what
changed in the source since it was opened (a local file that was truncated, grew or was written
to); a remote object is pinned to the version it had when it was opened (remote/), so it has no
change to report.
"""

from __future__ import annotations

import os
import stat
from typing import Any


class ByteSource:
    """Base: `size` bytes named `name`; subclasses implement readinto."""

    name = "?"
    size = 0
    fd = -1  # a local descriptor; -1: no file system behind it (no holes to map)

    def readinto(self, offset: int, view: memoryview) -> int:
        """Read up to len(view) bytes at offset; fewer only at the end (0 past it)."""
        raise NotImplementedError

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to size bytes at offset, short at the end of the source."""
        n = max(0, min(size, self.size - offset))
        buf = bytearray(n)
        got = self.readinto(offset, memoryview(buf)) if n else 0
        return bytes(buf[:got])

    def stats(self) -> dict[str, Any] | None:
        return None

    def changed(self) -> str | None:
        """What changed since the source was opened ("size 1073741824 -> 536870912 bytes"),
        None when nothing did."""
        return None

    def close(self) -> None:
        pass


class LocalFile(ByteSource):
    """An open descriptor of a regular file or block device (owned: close() closes it)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd, self.name = fd, name
        self.size = os.lseek(fd, 0, os.SEEK_END)  # block devices report st_size 0
        st = os.fstat(fd)
        self.regular = stat.S_ISREG(st.st_mode)
        self.mtime_ns = st.st_mtime_ns

    def changed(self) -> str | None:
        if self.fd < 0:
            return None
        st = os.fstat(self.fd)  # size and mtime of one moment (a block device: its size)
        size = st.st_size if self.regular else os.lseek(self.fd, 0, os.SEEK_END)
        if size != self.size:
            return f"size {self.size} -> {size} bytes ({_mib(self.size)} -> {_mib(size)})"
        if self.regular and st.st_mtime_ns != self.mtime_ns:  # a device node's mtime is not its data's
            return (f"it was written to (modification time {_when(self.mtime_ns)} -> "
                    f"{_when(st.st_mtime_ns)})")
        return None

    def readinto(self, offset: int, view: memoryview) -> int:
        got = 0
        while got < len(view):
            n = os.preadv(self.fd, [view[got:]], offset + got)
            if n == 0:
                break
            got += n
        return got

    def read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n < 1 << 30 else f"{n / (1 << 30):.1f} GiB"


def _when(ns: int) -> str:
    import datetime

    t = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def as_source(fd_or_source: int | ByteSource, name: str) -> ByteSource:
    """A ByteSource for a reader's argument: a descriptor is wrapped (and owned)."""
    if isinstance(fd_or_source, ByteSource):
        return fd_or_source
    return LocalFile(fd_or_source, name)
