"""The disk as the readers see it: a DiskImage (or a byte range of one) as a file-like object.

libyal's bindings take any object with read/seek/tell/get_size (`open_file_object`); every byte
they read comes through `DiskFile.read`, which counts it, so the report can say what the check
read. Own parsers (partition tables, superblocks) use `DiskFile.pread`.
"""

from __future__ import annotations

import os
import stat
from typing import Protocol

from lukspack.images.base import DiskImage

MAX_FILE = 256 << 20  # the largest guest file the check reads (an initramfs)


class ReadCounter:
    """Bytes read from the image by every view of it."""

    def __init__(self) -> None:
        self.bytes = 0
        self.reads = 0


class VolumeFile(Protocol):
    """What the filesystem readers and libyal's open_file_object read a guest volume through:
    a DiskFile slice, or an LVM logical volume (inspection.LvFile)."""

    size: int

    def pread(self, offset: int, size: int) -> bytes: ...
    def read(self, size: int = -1) -> bytes: ...
    def seek(self, offset: int, whence: int = 0) -> int: ...
    def tell(self) -> int: ...
    def get_offset(self) -> int: ...
    def get_size(self) -> int: ...


class DiskFile:
    """A read-only file-like view of [start, start+size) of a DiskImage."""

    def __init__(self, image: DiskImage, start: int = 0, size: int | None = None,
                 counter: ReadCounter | None = None) -> None:
        self.image = image
        self.start = start
        self.size = image.virtual_size - start if size is None else size
        self.counter = counter or ReadCounter()
        self.pos = 0

    def slice(self, start: int, size: int) -> DiskFile:
        """A view of [start, start+size) of this one (clipped to it)."""
        start = max(0, min(start, self.size))
        return DiskFile(self.image, self.start + start, max(0, min(size, self.size - start)),
                        self.counter)

    def pread(self, offset: int, size: int) -> bytes:
        """Up to size bytes at offset (fewer past the end)."""
        if offset < 0 or offset >= self.size or size <= 0:
            return b""
        size = min(size, self.size - offset)
        buf = bytearray(size)
        self.image.read_into(self.start + offset, buf)
        self.counter.bytes += size
        self.counter.reads += 1
        return bytes(buf)

    # -- the file object libyal's bindings use -------------------------------------------------
    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self.pos
        data = self.pread(self.pos, size)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self.pos
        elif whence == os.SEEK_END:
            offset += self.size
        if offset < 0:
            raise OSError(f"seek to negative offset {offset}")
        self.pos = offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def get_offset(self) -> int:
        return self.pos

    def get_size(self) -> int:
        return self.size

    def close(self) -> None:
        pass


class FileTypes:
    """is_dir/is_link/is_file from a `mode` property: what every guest file node shares (the
    libyal-backed Node of filesystems.py and the Btrfs reader's BtrfsNode)."""

    @property
    def mode(self) -> int:
        raise NotImplementedError

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)
