"""VMware VMDK images (Virtual Disk Format 5.0 and qemu's block/vmdk.c), little-endian.

A VMDK disk is a list of extents named by a text descriptor. The descriptor is either embedded in
a hosted sparse extent file (`KDMV` header; monolithicSparse, streamOptimized) or is a file of its
own naming extent files (monolithicFlat, twoGbMaxExtentFlat/Sparse, vmfs). Extents read here:

- FLAT / VMFS: raw bytes of an extent file from a sector offset.
- SPARSE (hosted sparse extent): a grain directory (GD) of grain table (GT) sector offsets, each GT
  a list of grain sector offsets; 0 = unallocated, 1 = zeroed grain (flag bit 2). streamOptimized
  extents (compressAlgorithm 1) store each grain as a 12-byte marker (LBA, size) and zlib data;
  their GD may be at the end of the file (gdOffset 0xffffffffffffffff: read the footer header).
- ZERO: zeros.

Refused: delta disks (parentCID not ffffffff), COWD/vmfsSparse, seSparse and raw-device extents.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lukspack.errors import FormatError, LukspackError, UnsupportedError
from lukspack.images.base import DiskImage, Extent
from lukspack.images.source import ByteSource, LocalFile
from lukspack.images.vmdk_extents import (
    COWD_MAGIC,
    SECTOR,
    SPARSE_HEADER,
    SPARSE_MAGIC,
    File,
    FlatExtent,
    SparseExtent,
    VmdkExtent,
    ZeroExtent,
)

DESCRIPTOR_MAGIC = b"# Disk DescriptorFile"
MAX_DESCRIPTOR = 1 << 20
NO_PARENT = "ffffffff"

EXTENT_LINE = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')
KEY_LINE = re.compile(r'^([A-Za-z][A-Za-z0-9_.]*)\s*=\s*"?([^"]*)"?\s*$')


@dataclass
class Descriptor:
    create_type: str = ""
    cid: str = ""
    parent_cid: str = NO_PARENT
    extents: list[tuple[str, int, str, str, int]] = field(default_factory=list)
    # (access, sectors, type, file name, sector offset)


def parse_descriptor(text: str, name: str) -> Descriptor:
    """The keys lukspack needs and the extent lines of a VMDK text descriptor."""
    d = Descriptor()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip().rstrip("\0").strip()
        if not line or line.startswith("#"):
            continue
        m = EXTENT_LINE.match(line)
        if m:
            access, sectors, kind, fname, offset = m.groups()
            kind = kind.upper()
            if kind != "ZERO" and fname is None:
                raise FormatError(f"{name}: VMDK descriptor line {lineno}: {kind} extent without "
                                  f"a file name: {line!r}")
            d.extents.append((access, int(sectors), kind, fname or "", int(offset or 0)))
            continue
        m = KEY_LINE.match(line)
        if m:
            key, value = m.groups()
            if key == "createType":
                d.create_type = value
            elif key == "CID":
                d.cid = value.lower()
            elif key == "parentCID":
                d.parent_cid = value.lower()
            continue
        if re.match(r"^(RW|RDONLY|NOACCESS)\b", line):
            raise FormatError(f"{name}: VMDK descriptor line {lineno} is not a valid extent line: "
                              f"{line[:80]!r}")
    return d


def _decode(raw: bytes, name: str, what: str) -> str:
    text = raw.split(b"\0", 1)[0]
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{name}: VMDK {what} is not text") from None


class VmdkImage(DiskImage):
    """The disk a VMDK describes: its extents laid end to end."""

    format_name = "vmdk"

    def __init__(self, path: str, fd: int | ByteSource,
                 window: tuple[int, int] | None = None) -> None:
        super().__init__(path, fd, window)
        self._fds: list[LocalFile] = []
        self.parts: list[tuple[int, VmdkExtent]] = []  # (disk offset, extent)
        self.descriptor = Descriptor()
        try:
            self._open()
        except BaseException:
            self.close_extents()
            raise
        self.virtual_size = sum(ext.size for _, ext in self.parts)

    def _open(self) -> None:
        path = self.path
        head = self.pread(0, min(self.file_size, SPARSE_HEADER.size), "header")
        if head.startswith(COWD_MAGIC):
            raise UnsupportedError(f"{path}: ESX sparse (COWD, vmfsSparse) VMDK extents are not "
                                   "supported; convert with qemu-img convert -O vmdk first")
        if head.startswith(SPARSE_MAGIC):
            self._open_sparse_file(head)
        elif head.startswith(DESCRIPTOR_MAGIC):
            text = _decode(self.pread(0, min(self.file_size, MAX_DESCRIPTOR), "descriptor"),
                           path, "descriptor")
            if self.file_size > MAX_DESCRIPTOR:
                raise FormatError(f"{path}: VMDK descriptor file is {self.file_size} bytes, more "
                                  f"than {MAX_DESCRIPTOR}")
            self._open_descriptor(parse_descriptor(text, path))
        else:
            raise FormatError(f"{path}: not a VMDK (magic {head[:4]!r})")

    def _check_parent(self, d: Descriptor) -> None:
        if d.parent_cid not in (NO_PARENT, ""):
            raise UnsupportedError(f"{self.path}: is a VMDK delta disk (parentCID {d.parent_cid}) "
                                   "that needs its parent; consolidate the snapshot first")

    def _open_sparse_file(self, head: bytes) -> None:
        if len(head) < SPARSE_HEADER.size:
            raise FormatError(f"{self.path}: VMDK sparse header truncated ({len(head)} bytes)")
        h = SPARSE_HEADER.unpack(head)
        desc_off, desc_size = h[5], h[6]
        if desc_off:
            if desc_size > MAX_DESCRIPTOR // SECTOR or (desc_off + desc_size) * SECTOR > self.file_size:
                raise FormatError(f"{self.path}: VMDK embedded descriptor (sector {desc_off}, "
                                  f"{desc_size} sectors) is outside the file (size "
                                  f"{self.file_size})")
            text = _decode(self.pread(desc_off * SECTOR, desc_size * SECTOR, "descriptor"),
                           self.path, "embedded descriptor")
            self.descriptor = parse_descriptor(text, self.path)
            self._check_parent(self.descriptor)
            if h[3] == 0:  # a descriptor stored in a sparse file, naming other extents
                self._open_descriptor(self.descriptor)
                return
        f = File(self, self.path, self.source, self.base, self.file_size)
        ext = SparseExtent(f, h)
        self.parts.append((0, ext))
        if not self.descriptor.create_type:
            self.descriptor.create_type = "streamOptimized" if ext.compressed else \
                "monolithicSparse"

    def _open_descriptor(self, d: Descriptor) -> None:
        self.descriptor = d
        self._check_parent(d)
        if self.windowed:
            raise UnsupportedError(f"{self.path}: the VMDK in the archive is a descriptor naming "
                                   "extent files; extract the archive first")
        if self.source.fd < 0:
            raise UnsupportedError(f"{self.path}: the remote VMDK is a descriptor naming extent "
                                   "files; download them, or give a one-file VMDK")
        if not d.extents:
            raise FormatError(f"{self.path}: VMDK descriptor lists no extents")
        base = os.path.dirname(os.path.abspath(self.path))
        pos = 0
        for access, sectors, kind, fname, offset in d.extents:
            if access == "NOACCESS":
                raise UnsupportedError(f"{self.path}: VMDK extent {fname!r} is NOACCESS")
            if kind == "ZERO":
                ext: VmdkExtent = ZeroExtent(sectors)
            elif kind in ("FLAT", "VMFS", "SPARSE"):
                f = self._open_extent_file(os.path.join(base, fname))
                ext = self._sparse_extent(f, sectors) if kind == "SPARSE" else \
                    FlatExtent(f, sectors, offset)
            else:
                raise UnsupportedError(f"{self.path}: VMDK {kind} extents ({fname!r}) are not "
                                       "supported (FLAT, VMFS, SPARSE and ZERO are)")
            self.parts.append((pos, ext))
            pos += ext.size

    def _sparse_extent(self, f: File, sectors: int) -> SparseExtent:
        head = f.pread(0, min(f.size, SPARSE_HEADER.size), "sparse extent header")
        if not head.startswith(SPARSE_MAGIC):
            raise UnsupportedError(f"{f.path}: SPARSE extent is not a hosted sparse extent "
                                   f"(magic {head[:4]!r})")
        if len(head) < SPARSE_HEADER.size:
            raise FormatError(f"{f.path}: VMDK sparse header truncated ({len(head)} bytes)")
        ext = SparseExtent(f, SPARSE_HEADER.unpack(head))
        if ext.capacity != sectors:
            raise FormatError(f"{self.path}: extent {f.path} has capacity {ext.capacity} sectors, "
                              f"the descriptor says {sectors}")
        return ext

    def _open_extent_file(self, path: str) -> File:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise LukspackError(f"{self.path}: cannot open extent file {path}: {e.strerror}") \
                from None
        src = LocalFile(fd, path)
        self._fds.append(src)
        return File(self, path, src)

    @property
    def files(self) -> tuple[str, ...]:
        """The descriptor (or sparse file) and every extent file it names."""
        extra = [ext.file.path for _, ext in self.parts
                 if ext.file is not None and ext.file.src is not self.source]
        return (self.path, *extra)

    def sources(self) -> tuple[ByteSource, ...]:
        return (self.source, *self._fds)

    def close_extents(self) -> None:
        for src in self._fds:
            src.close()
        self._fds = []

    def close(self) -> None:
        self.close_extents()
        super().close()

    def _parts_in(self, start: int, end: int) -> Iterator[tuple[int, VmdkExtent]]:
        for base, ext in self.parts:
            if base + ext.size > start and base < end:
                yield base, ext

    def extents(self, start: int = 0, end: int | None = None) -> Iterator[Extent]:
        end = self.virtual_size if end is None else min(end, self.virtual_size)
        run: list[Any] | None = None
        for base, ext in self._parts_in(start, end):
            lo, hi = max(start, base) - base, min(end, base + ext.size) - base
            for s, n, alloc in ext.extents(lo, hi):
                if run is not None and run[2] == alloc and run[0] + run[1] == base + s:
                    run[1] += n
                else:
                    if run is not None:
                        yield Extent(run[0], run[1], run[2])
                    run = [base + s, n, alloc]
        if run is not None:
            yield Extent(run[0], run[1], run[2])

    def _read_allocated(self, offset: int, view: memoryview) -> None:
        end = offset + len(view)
        for base, ext in self._parts_in(offset, end):
            lo, hi = max(offset, base), min(end, base + ext.size)
            ext.read(lo - base, view[lo - offset : hi - offset])

    def info(self) -> dict[str, Any]:
        out = super().info()
        d = self.descriptor
        out["vmdk"] = {
            "create_type": d.create_type,
            "cid": d.cid,
            "extents": [{"offset": base, "size": ext.size, "type": ext.kind,
                         **({} if ext.file is None else {"file": ext.file.path}),
                         **ext.describe()}
                        for base, ext in self.parts],
        }
        return out

