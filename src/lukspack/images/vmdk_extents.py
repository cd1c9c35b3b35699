"""VMDK extents: flat, zero, and hosted sparse (monolithicSparse, twoGbMaxExtentSparse and
streamOptimized with zlib-compressed grains), little-endian. See vmdk.py for the descriptor and
the disk they make up together.
"""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lukspack.errors import FormatError, UnsupportedError

if TYPE_CHECKING:
    from lukspack.images.base import DiskImage
    from lukspack.images.source import ByteSource

SECTOR = 512
SPARSE_MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"
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
GT_CACHE_BYTES = 16 << 20


class File:
    """An open extent file; reads count into the owning image's bytes_read."""

    def __init__(self, image: DiskImage, path: str, src: ByteSource, base: int = 0,
                 size: int | None = None) -> None:
        self.image, self.path, self.src, self.base = image, path, src, base  # base: in an OVA
        self.size = src.size if size is None else size

    def pread_into(self, offset: int, view: memoryview, what: str) -> None:
        got = 0
        if offset + len(view) > self.size:  # never past the file, nor past an OVA member
            raise FormatError(f"{self.path}: {what} at offset {offset} is past the end of the "
                              f"file (size {self.size})")
        while got < len(view):
            n = self.src.readinto(self.base + offset + got, view[got:])
            if n == 0:
                raise FormatError(f"{self.path}: {what} at offset {offset + got} is past the end "
                                  f"of the file (size {self.size})")
            got += n
        self.image.bytes_read += got

    def pread(self, offset: int, size: int, what: str) -> bytes:
        if offset + size > self.size:  # before allocating: size may come from a header
            raise FormatError(f"{self.path}: {what} ({size} bytes at offset {offset}) is past the "
                              f"end of the file (size {self.size})")
        buf = bytearray(size)
        self.pread_into(offset, memoryview(buf), what)
        return bytes(buf)


class VmdkExtent(Protocol):
    """What the disk reads of each of its extents."""

    kind: str  # the descriptor's extent type: FLAT, ZERO or SPARSE
    size: int  # bytes of the disk it covers

    @property
    def file(self) -> File | None:
        """The extent file it reads, None for an extent with no file of its own (ZERO)."""
        ...

    def extents(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """(offset, length, allocated) runs of [start, end), offsets within the extent."""
        ...

    def read(self, offset: int, view: memoryview) -> None: ...

    def describe(self) -> dict[str, Any]:
        """Its own keys of `info()`'s vmdk.extents entry."""
        ...


class FlatExtent:
    kind = "FLAT"

    def __init__(self, f: File, sectors: int, start_sector: int) -> None:
        self.f, self.size, self.start = f, sectors * SECTOR, start_sector * SECTOR
        if self.start + self.size > f.size:
            raise FormatError(f"{f.image.path}: flat extent {f.path} is truncated (needs "
                              f"{self.start + self.size} bytes from sector {start_sector}, the file "
                              f"has {f.size})")

    def extents(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        yield start, end - start, True

    def read(self, offset: int, view: memoryview) -> None:
        self.f.pread_into(self.start + offset, view, "flat extent data")

    @property
    def file(self) -> File:
        return self.f

    def describe(self) -> dict[str, Any]:
        return {}


class ZeroExtent:
    kind = "ZERO"

    def __init__(self, sectors: int) -> None:
        self.size = sectors * SECTOR

    def extents(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        yield start, end - start, False

    def read(self, offset: int, view: memoryview) -> None:
        view[:] = bytes(len(view))

    @property
    def file(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {}


class SparseExtent:
    """A hosted sparse extent (monolithicSparse, twoGbMaxExtentSparse, streamOptimized)."""

    kind = "SPARSE"

    def __init__(self, f: File, header: tuple[Any, ...] | None = None) -> None:
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
        if not 1 <= self.grain_sectors <= MAX_GRAIN_SECTORS or \
                self.grain_sectors & (self.grain_sectors - 1):
            raise FormatError(f"{name}: VMDK grainSize {self.grain_sectors} sectors is not a power "
                              f"of two in 1..{MAX_GRAIN_SECTORS}")
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
                assert gt is not None  # sector != 0: the grain table exists
                while done + n < len(view) and (within + n) % self.grain == 0:
                    nk = k + (within + n) // self.grain
                    if gt is None or nk >= self.gtes or int(gt[nk]) != sector + (within + n) // SECTOR:
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

    @property
    def file(self) -> File:
        return self.f

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "flags": f"0x{self.flags:08x}",
                "capacity_sectors": self.capacity, "grain_size_sectors": self.grain_sectors,
                "num_gtes_per_gt": self.gtes, "gd_offset": self.gd_offset,
                "compressed": self.compressed, "markers": self.markers,
                "zeroed_grain_gte": self.zero_gte, "unclean_shutdown": bool(self.unclean)}
