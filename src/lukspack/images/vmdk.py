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
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lukspack.errors import FormatError, LukspackError, UnsupportedError
from lukspack.images.base import DiskImage, Extent

SECTOR = 512
SPARSE_MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"
DESCRIPTOR_MAGIC = b"# Disk DescriptorFile"
# magicNumber, version, flags, capacity, grainSize, descriptorOffset, descriptorSize,
# numGTEsPerGT, rgdOffset, gdOffset, overHead, uncleanShutdown, singleEndLineChar,
# nonEndLineChar, doubleEndLineChar1, doubleEndLineChar2, compressAlgorithm, pad
SPARSE_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH433x")
MARKER = struct.Struct("<QII")  # val (LBA or sectors), size, type (metadata markers only)
GRAIN_MARKER_SIZE = 12
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3

FLAG_NL_TEST, FLAG_RGD, FLAG_ZERO_GTE = 1 << 0, 1 << 1, 1 << 2
FLAG_COMPRESSED, FLAG_MARKERS = 1 << 16, 1 << 17
GD_AT_END = 0xFFFFFFFFFFFFFFFF
COMPRESS_NONE, COMPRESS_DEFLATE = 0, 1
GTE_ZEROED = 1

MAX_GRAIN_SECTORS = 1 << 16  # 32 MiB grains (VMware uses 64 KiB; qemu allows up to 1 GiB)
MAX_GTES = 512  # qemu's limit for numGTEsPerGT
MAX_CAPACITY = 1 << 40  # sectors: 512 TiB
MAX_DESCRIPTOR = 1 << 20
GT_CACHE_BYTES = 16 << 20
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


class _File:
    """An open extent file; reads count into the owning image's bytes_read."""

    def __init__(self, image: VmdkImage, path: str, fd: int) -> None:
        self.image, self.path, self.fd = image, path, fd
        self.size = os.lseek(fd, 0, os.SEEK_END)

    def pread_into(self, offset: int, view: memoryview, what: str) -> None:
        got = 0
        while got < len(view):
            n = os.preadv(self.fd, [view[got:]], offset + got)
            if n == 0:
                raise FormatError(f"{self.path}: {what} at offset {offset + got} is past the end "
                                  f"of the file (size {self.size})")
            got += n
        self.image.bytes_read += got

    def pread(self, offset: int, size: int, what: str) -> bytes:
        buf = bytearray(size)
        self.pread_into(offset, memoryview(buf), what)
        return bytes(buf)


class _FlatExtent:
    kind = "FLAT"

    def __init__(self, f: _File, sectors: int, start_sector: int) -> None:
        self.f, self.size, self.start = f, sectors * SECTOR, start_sector * SECTOR
        if self.start + self.size > f.size:
            raise FormatError(f"{f.path}: flat extent is truncated (needs {self.start + self.size} "
                              f"bytes from sector {start_sector}, file has {f.size})")

    def extents(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        yield start, end - start, True

    def read(self, offset: int, view: memoryview) -> None:
        self.f.pread_into(self.start + offset, view, "flat extent data")


class _ZeroExtent:
    kind = "ZERO"

    def __init__(self, sectors: int) -> None:
        self.size = sectors * SECTOR

    def extents(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        yield start, end - start, False

    def read(self, offset: int, view: memoryview) -> None:
        view[:] = bytes(len(view))


class _SparseExtent:
    """A hosted sparse extent (monolithicSparse, twoGbMaxExtentSparse, streamOptimized)."""

    kind = "SPARSE"

    def __init__(self, f: _File, header: tuple[Any, ...] | None = None) -> None:
        self.f = f
        name = f.path
        h = header or self._read_header()
        (_, self.version, self.flags, self.capacity, self.grain_sectors, self.descriptor_offset,
         self.descriptor_size, self.gtes, self.rgd_offset, self.gd_offset, self.overhead,
         self.unclean, _, self.compress) = h
        if self.gd_offset == GD_AT_END:
            h = self._footer_header()
            (_, self.version, self.flags, self.capacity, self.grain_sectors, _, _, self.gtes,
             self.rgd_offset, self.gd_offset, self.overhead, self.unclean, _, self.compress) = h
        if not 1 <= self.version <= 3:
            raise UnsupportedError(f"{name}: VMDK sparse extent version {self.version} is not "
                                   "supported (1 to 3)")
        if self.compress not in (COMPRESS_NONE, COMPRESS_DEFLATE):
            raise UnsupportedError(f"{name}: VMDK compressAlgorithm {self.compress} is not "
                                   "supported (0 none, 1 deflate)")
        if not 1 <= self.grain_sectors <= MAX_GRAIN_SECTORS:
            raise FormatError(f"{name}: VMDK grainSize {self.grain_sectors} sectors is outside "
                              f"1..{MAX_GRAIN_SECTORS}")
        if not 1 <= self.gtes <= MAX_GTES:
            raise FormatError(f"{name}: VMDK numGTEsPerGT {self.gtes} is outside 1..{MAX_GTES}")
        if self.capacity > MAX_CAPACITY:
            raise FormatError(f"{name}: VMDK capacity {self.capacity} sectors is absurd")
        self.size = self.capacity * SECTOR
        self.grain = self.grain_sectors * SECTOR
        self.gt_span = self.grain * self.gtes
        self.compressed = self.compress == COMPRESS_DEFLATE
        self.markers = bool(self.flags & FLAG_MARKERS)
        self.zero_gte = bool(self.flags & FLAG_ZERO_GTE)
        n = -(-self.size // self.gt_span)
        gd_bytes = n * 4
        if n and (self.gd_offset == 0 or self.gd_offset * SECTOR + gd_bytes > f.size):
            raise FormatError(f"{name}: VMDK grain directory (gdOffset {self.gd_offset}, {n} "
                              f"entries) is outside the file (size {f.size})")
        gd = np.frombuffer(f.pread(self.gd_offset * SECTOR, gd_bytes, "grain directory"),
                           dtype="<u4").astype(np.int64) if n else np.zeros(0, np.int64)
        bad = np.flatnonzero((gd != 0) & (gd * SECTOR + self.gtes * 4 > f.size))
        if bad.size:
            i = int(bad[0])
            raise FormatError(f"{name}: VMDK grain table {i} at sector {int(gd[i])} is past the end "
                              f"of the file (size {f.size})")
        self.gd = gd
        self._gts: OrderedDict[int, np.ndarray] = OrderedDict()
        self._gt_cache_max = max(4, GT_CACHE_BYTES // (self.gtes * 4))
        self._grain_cache: tuple[int, bytes] | None = None

    def _read_header(self) -> tuple[Any, ...]:
        raw = self.f.pread(0, SPARSE_HEADER.size, "sparse extent header")
        return SPARSE_HEADER.unpack(raw)

    def _footer_header(self) -> tuple[Any, ...]:
        """streamOptimized with the GD at the end: footer marker, header copy, end-of-stream."""
        f = self.f
        if f.size < 1536 + SECTOR:
            raise FormatError(f"{f.path}: VMDK gdOffset is 'at end' but the file is too small "
                              f"for a footer (size {f.size})")
        raw = f.pread(f.size - 1536, 1536, "footer")
        _, size, kind = MARKER.unpack_from(raw, 0)
        eos = MARKER.unpack_from(raw, 1024)
        if size != 0 or kind != MARKER_FOOTER or raw[512:516] != SPARSE_MAGIC or \
                eos != (0, 0, MARKER_EOS):
            raise FormatError(f"{f.path}: VMDK footer is invalid (footer marker type {kind}, "
                              f"header magic {raw[512:516]!r}, end-of-stream {eos})")
        h = SPARSE_HEADER.unpack(raw[512:1024])
        if h[9] == GD_AT_END:
            raise FormatError(f"{f.path}: VMDK footer gdOffset is also 'at end'")
        return h

    def _gt(self, index: int) -> np.ndarray | None:
        if index >= len(self.gd) or self.gd[index] == 0:
            return None
        hit = self._gts.get(index)
        if hit is not None:
            self._gts.move_to_end(index)
            return hit
        off = int(self.gd[index]) * SECTOR
        gt = np.frombuffer(self.f.pread(off, self.gtes * 4, f"grain table {index}"),
                           dtype="<u4").astype(np.int64)
        data = gt > (GTE_ZEROED if self.zero_gte else 0)
        bad = np.flatnonzero(data & (gt * SECTOR >= self.f.size))
        if bad.size:
            j = int(bad[0])
            raise FormatError(f"{self.f.path}: VMDK grain {index * self.gtes + j} at sector "
                              f"{int(gt[j])} (grain table {index}, entry {j}) is past the end of "
                              f"the file (size {self.f.size})")
        if len(self._gts) >= self._gt_cache_max:
            self._gts.popitem(last=False)
        self._gts[index] = gt
        return gt

    def _allocated(self, gt: np.ndarray) -> np.ndarray:
        return gt > (GTE_ZEROED if self.zero_gte else 0)

    def extents(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        pos = start
        while pos < end:
            gi = pos // self.gt_span
            seg_end = min((gi + 1) * self.gt_span, end)
            gt = self._gt(gi)
            if gt is None:
                yield pos, seg_end - pos, False
            else:
                base = gi * self.gt_span
                a = (pos - base) // self.grain
                b = -(-(seg_end - base) // self.grain)
                alloc = self._allocated(gt[a:b])
                cuts = [0, *(np.flatnonzero(alloc[1:] != alloc[:-1]) + 1).tolist(), b - a]
                for lo, hi in zip(cuts, cuts[1:], strict=False):
                    s = max(pos, base + (a + lo) * self.grain)
                    e = min(seg_end, base + (a + hi) * self.grain)
                    yield s, e - s, bool(alloc[lo])
            pos = seg_end

    def read(self, offset: int, view: memoryview) -> None:
        done = 0
        while done < len(view):
            pos = offset + done
            gi, inside = divmod(pos, self.gt_span)
            k, within = divmod(inside, self.grain)
            n = min(self.grain - within, len(view) - done)
            part = view[done : done + n]
            gt = self._gt(gi)
            sector = 0 if gt is None else int(gt[k])
            if sector == 0 or (sector == GTE_ZEROED and self.zero_gte):
                part[:] = bytes(n)
            elif self.compressed:
                grain = self._inflate(sector, gi * self.gtes + k)
                if within + n > len(grain):
                    raise FormatError(f"{self.f.path}: VMDK compressed grain at sector {sector} "
                                      f"inflates to {len(grain)} bytes, too short for the read "
                                      f"at {within}+{n}")
                part[:] = grain[within : within + n]
            else:
                # coalesce grains that are contiguous in the file into one read
                while done + n < len(view) and (within + n) % self.grain == 0:
                    nk = k + (within + n) // self.grain
                    if nk >= self.gtes or int(gt[nk]) != sector + (within + n) // SECTOR:
                        break
                    n = min(n + self.grain, len(view) - done)
                part = view[done : done + n]
                self._read_plain(sector * SECTOR + within, part, gi * self.gtes + k)
            done += n

    def _read_plain(self, file_off: int, part: memoryview, grain_no: int) -> None:
        avail = max(0, min(len(part), self.f.size - file_off))  # qemu reads zeros past the end
        if avail < len(part):
            part[avail:] = bytes(len(part) - avail)
        self.f.pread_into(file_off, part[:avail], f"VMDK grain {grain_no}")

    def _inflate(self, sector: int, grain_no: int) -> bytes:
        if self._grain_cache is not None and self._grain_cache[0] == sector:
            return self._grain_cache[1]
        off = sector * SECTOR
        limit = self.f.size - off
        if self.markers:
            lba, size = struct.unpack("<QI", self.f.pread(off, GRAIN_MARKER_SIZE,
                                                          f"marker of grain {grain_no}"))
            if not 0 < size <= min(2 * self.grain + 4096, limit - GRAIN_MARKER_SIZE):
                raise FormatError(f"{self.f.path}: VMDK grain {grain_no} marker at sector {sector} "
                                  f"has compressed size {size} (lba {lba}), which is invalid")
            data = self.f.pread(off + GRAIN_MARKER_SIZE, size, f"grain {grain_no}")
        else:
            data = self.f.pread(off, min(2 * self.grain, limit), f"grain {grain_no}")
        try:
            out = zlib.decompressobj().decompress(data, self.grain)
        except zlib.error as e:
            raise FormatError(f"{self.f.path}: VMDK compressed grain {grain_no} at sector {sector} "
                              f"does not inflate: {e}") from None
        self._grain_cache = (sector, out)
        return out

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "flags": f"0x{self.flags:08x}",
                "capacity_sectors": self.capacity, "grain_size_sectors": self.grain_sectors,
                "num_gtes_per_gt": self.gtes, "gd_offset": self.gd_offset,
                "compressed": self.compressed, "markers": self.markers,
                "zeroed_grain_gte": self.zero_gte, "unclean_shutdown": bool(self.unclean)}


class VmdkImage(DiskImage):
    """The disk a VMDK describes: its extents laid end to end."""

    format_name = "vmdk"

    def __init__(self, path: str, fd: int) -> None:
        super().__init__(path, fd)
        self._fds: list[int] = []
        self.parts: list[tuple[int, Any]] = []  # (disk offset, extent)
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
        f = _File(self, self.path, self.fd)
        ext = _SparseExtent(f, h)
        self.parts.append((0, ext))
        if not self.descriptor.create_type:
            self.descriptor.create_type = "streamOptimized" if ext.compressed else \
                "monolithicSparse"

    def _open_descriptor(self, d: Descriptor) -> None:
        self.descriptor = d
        self._check_parent(d)
        if not d.extents:
            raise FormatError(f"{self.path}: VMDK descriptor lists no extents")
        base = os.path.dirname(os.path.abspath(self.path))
        pos = 0
        for access, sectors, kind, fname, offset in d.extents:
            if access == "NOACCESS":
                raise UnsupportedError(f"{self.path}: VMDK extent {fname!r} is NOACCESS")
            if kind == "ZERO":
                ext: Any = _ZeroExtent(sectors)
            elif kind in ("FLAT", "VMFS", "SPARSE"):
                f = self._open_extent_file(os.path.join(base, fname))
                ext = self._sparse_extent(f, sectors) if kind == "SPARSE" else \
                    _FlatExtent(f, sectors, offset)
            else:
                raise UnsupportedError(f"{self.path}: VMDK {kind} extents ({fname!r}) are not "
                                       "supported (FLAT, VMFS, SPARSE and ZERO are)")
            self.parts.append((pos, ext))
            pos += ext.size

    def _sparse_extent(self, f: _File, sectors: int) -> _SparseExtent:
        head = f.pread(0, min(f.size, SPARSE_HEADER.size), "sparse extent header")
        if not head.startswith(SPARSE_MAGIC):
            raise UnsupportedError(f"{f.path}: SPARSE extent is not a hosted sparse extent "
                                   f"(magic {head[:4]!r})")
        if len(head) < SPARSE_HEADER.size:
            raise FormatError(f"{f.path}: VMDK sparse header truncated ({len(head)} bytes)")
        ext = _SparseExtent(f, SPARSE_HEADER.unpack(head))
        if ext.capacity != sectors:
            raise FormatError(f"{self.path}: extent {f.path} has capacity {ext.capacity} sectors, "
                              f"the descriptor says {sectors}")
        return ext

    def _open_extent_file(self, path: str) -> _File:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise LukspackError(f"{self.path}: cannot open extent file {path}: {e.strerror}") \
                from None
        self._fds.append(fd)
        return _File(self, path, fd)

    def close_extents(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def close(self) -> None:
        self.close_extents()
        super().close()

    def _parts_in(self, start: int, end: int) -> Iterator[tuple[int, Any]]:
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
                         **({"file": ext.f.path} if hasattr(ext, "f") else {}),
                         **(ext.describe() if isinstance(ext, _SparseExtent) else {})}
                        for base, ext in self.parts],
        }
        return out


def open_vmdk(path: str, fd: int) -> VmdkImage:
    return VmdkImage(path, fd)
