"""Raw disk images: the file is the disk."""

from __future__ import annotations

from lukspack.images.base import DiskImage


class RawImage(DiskImage):
    format_name = "raw"

    def __init__(self, path: str, fd: int) -> None:
        super().__init__(path, fd)
        self.virtual_size = self.file_size

    def _read_allocated(self, offset: int, view: memoryview) -> None:
        self.pread_exact(offset, view)
