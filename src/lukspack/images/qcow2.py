"""QEMU qcow2 images, versions 2 and 3 (docs/interop/qcow2.txt), big-endian.

The header (72 bytes in v2, header_length in v3) is followed by header extensions up to the end of
the first cluster. The guest disk is mapped by a two-level table: the L1 table names L2 tables (one
cluster each), whose entries name data clusters. An L2 entry is either unallocated (0), a zero
cluster (bit 0), a standard cluster (host offset in bits 9-55), or a compressed cluster (bit 62: raw
deflate data at a host byte offset with a length in 512-byte sectors).

Refused with a clear message: backing files, external data files, extended L2 entries, zstd
compression, legacy AES encryption, images marked corrupt. LUKS-encrypted images (crypt_method 2)
are opened only by lukspack's own verify/decrypt/info (see `allow_encrypted` and
`read_ciphertext`); as an input to encrypt they are refused.
"""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lukspack.errors import FormatError, UnsupportedError
from lukspack.images.base import DiskImage, Extent

MAGIC = b"QFI\xfb"
# magic, version, backing_file_offset, backing_file_size, cluster_bits, size, crypt_method,
# l1_size, l1_table_offset, refcount_table_offset, refcount_table_clusters, nb_snapshots,
# snapshots_offset
HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
# incompatible_features, compatible_features, autoclear_features, refcount_order, header_length
HEADER_V3 = struct.Struct(">QQQII")
V3_HEADER_MIN = HEADER_V2.size + HEADER_V3.size  # 104
EXTENSION = struct.Struct(">II")  # type, length
CRYPTO_EXTENSION = struct.Struct(">QQ")  # offset, length

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO_HEADER = 0x0537BE77
EXT_DATA_FILE = 0x44415441
EXTENSION_NAMES = {EXT_BACKING_FORMAT: "backing_format", EXT_FEATURE_TABLE: "feature_name_table",
                   EXT_BITMAPS: "bitmaps", EXT_CRYPTO_HEADER: "crypto_header",
                   EXT_DATA_FILE: "external_data_file"}

CRYPT_NONE, CRYPT_AES, CRYPT_LUKS = 0, 1, 2
INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE = 1 << 0, 1 << 1, 1 << 2
INCOMPAT_COMPRESSION, INCOMPAT_EXTL2 = 1 << 3, 1 << 4
COMPRESSION_ZLIB = 0

OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
OFFSET_MASK = 0x00FFFFFFFFFFFE00  # L1 and standard L2 entries: bits 9-55
L2_RESERVED = 0x3F00000000000000  # bits 56-61 of a standard entry must be zero

MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
MAX_L1_BYTES = 32 << 20  # qemu's QCOW_MAX_L1_SIZE
MAX_SIZE = 1 << 61  # past this, byte offsets of clusters no longer fit the entries
L2_CACHE_BYTES = 16 << 20

# kinds of an L2 entry
UNALLOCATED, ZERO, NORMAL, COMPRESSED = 0, 1, 2, 3


@dataclass
class Qcow2Header:
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = HEADER_V2.size
    compression_type: int = COMPRESSION_ZLIB
    extensions: dict[int, bytes] = field(default_factory=dict)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


def parse_header(data: bytes, name: str, file_size: int) -> Qcow2Header:
    """Parse and validate the header and its extensions from the file's first cluster (or less)."""
    if len(data) < HEADER_V2.size:
        raise FormatError(f"{name}: qcow2 header truncated ({len(data)} < {HEADER_V2.size} bytes)")
    f = HEADER_V2.unpack_from(data)
    if f[0] != MAGIC:
        raise FormatError(f"{name}: not a qcow2 image (magic {f[0]!r})")
    h = Qcow2Header(*f[1:])
    if h.version not in (2, 3):
        raise UnsupportedError(f"{name}: qcow2 version {h.version} is not supported (2 or 3)")
    if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        raise FormatError(f"{name}: qcow2 cluster_bits {h.cluster_bits} is outside "
                          f"{MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}")
    cs = h.cluster_size
    if h.version == 3:
        if len(data) < V3_HEADER_MIN:
            raise FormatError(f"{name}: qcow2 v3 header truncated ({len(data)} bytes)")
        (h.incompatible_features, h.compatible_features, h.autoclear_features, h.refcount_order,
         h.header_length) = HEADER_V3.unpack_from(data, HEADER_V2.size)
        if h.header_length < V3_HEADER_MIN or h.header_length % 8 or h.header_length > cs:
            raise FormatError(f"{name}: qcow2 header_length {h.header_length} is not a multiple "
                              f"of 8 between {V3_HEADER_MIN} and the cluster size {cs}")
        if h.header_length > V3_HEADER_MIN:
            h.compression_type = data[V3_HEADER_MIN]
        if h.refcount_order > 6:
            raise FormatError(f"{name}: qcow2 refcount_order {h.refcount_order} is above 6")
    _check_features(h, name)
    _check_tables(h, name, file_size)
    h.extensions = _parse_extensions(data, h, name)
    if h.backing_file_offset:
        raise UnsupportedError(
            f"{name}: qcow2 image has a backing file ({_backing_name(data, h)}); lukspack reads "
            "whole images only: flatten it first (qemu-img convert -O qcow2 IMAGE FLAT.qcow2)")
    return h


def _check_features(h: Qcow2Header, name: str) -> None:
    bits = h.incompatible_features
    if bits & INCOMPAT_CORRUPT:
        raise FormatError(f"{name}: qcow2 image is marked corrupt (incompatible feature bit 1); "
                          "repair it with `qemu-img check -r all` first")
    if bits & INCOMPAT_DATA_FILE:
        raise UnsupportedError(f"{name}: qcow2 image keeps its data in an external data file; "
                               "convert it to a self-contained image first")
    if bits & INCOMPAT_EXTL2:
        raise UnsupportedError(f"{name}: qcow2 extended L2 entries (subclusters) are not "
                               "supported; convert with qemu-img convert -O qcow2 first")
    if bits & INCOMPAT_COMPRESSION and h.compression_type != COMPRESSION_ZLIB:
        raise UnsupportedError(f"{name}: qcow2 compression_type {h.compression_type} (zstd) is not "
                               "supported, only zlib")
    unknown = bits & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE |
                       INCOMPAT_COMPRESSION | INCOMPAT_EXTL2)
    if unknown:
        raise UnsupportedError(f"{name}: qcow2 incompatible_features 0x{unknown:x} are unknown")
    if h.compression_type != COMPRESSION_ZLIB:
        raise FormatError(f"{name}: qcow2 compression_type {h.compression_type} is set without "
                          "the compression-type feature bit")
    if h.crypt_method == CRYPT_AES:
        raise UnsupportedError(f"{name}: qcow2 legacy AES encryption (crypt_method 1) is not "
                               "supported (qemu refuses it too); decrypt it with an old qemu-img")
    if h.crypt_method not in (CRYPT_NONE, CRYPT_LUKS):
        raise FormatError(f"{name}: qcow2 crypt_method {h.crypt_method} is not 0, 1 or 2")


def _check_tables(h: Qcow2Header, name: str, file_size: int) -> None:
    cs = h.cluster_size
    if h.size > MAX_SIZE:
        raise FormatError(f"{name}: qcow2 size {h.size} is absurd")
    span = cs * (cs // 8)  # guest bytes one L2 table maps
    needed = -(-h.size // span)
    if h.l1_size < needed:
        raise FormatError(f"{name}: qcow2 l1_size {h.l1_size} is too small for size {h.size} "
                          f"(needs {needed})")
    if h.l1_size * 8 > MAX_L1_BYTES:
        raise FormatError(f"{name}: qcow2 l1_size {h.l1_size} is above qemu's limit "
                          f"({MAX_L1_BYTES // 8})")
    if h.l1_size:
        if h.l1_table_offset % cs:
            raise FormatError(f"{name}: qcow2 l1_table_offset 0x{h.l1_table_offset:x} is not "
                              f"aligned to the cluster size {cs}")
        if h.l1_table_offset + h.l1_size * 8 > file_size:
            raise FormatError(f"{name}: qcow2 L1 table (offset 0x{h.l1_table_offset:x}, "
                              f"{h.l1_size} entries) runs past the end of the file (size "
                              f"{file_size})")
    if h.refcount_table_offset % cs:
        raise FormatError(f"{name}: qcow2 refcount_table_offset 0x{h.refcount_table_offset:x} "
                          f"is not aligned to the cluster size {cs}")


def _parse_extensions(data: bytes, h: Qcow2Header, name: str) -> dict[int, bytes]:
    """Header extensions, read up to the end marker; bounded by the first cluster."""
    exts: dict[int, bytes] = {}
    pos = h.header_length
    limit = min(len(data), h.cluster_size)
    if h.backing_file_offset and h.backing_file_offset < limit:
        limit = max(pos, h.backing_file_offset)
    while pos + EXTENSION.size <= limit:
        kind, length = EXTENSION.unpack_from(data, pos)
        if kind == EXT_END:
            return exts
        body = pos + EXTENSION.size
        if body + length > limit:
            raise FormatError(f"{name}: qcow2 header extension 0x{kind:08x} at offset {pos} "
                              f"(length {length}) runs past the first cluster")
        exts[kind] = bytes(data[body : body + length])
        pos = body + -(-length // 8) * 8
    if h.version == 3:
        raise FormatError(f"{name}: qcow2 header extensions have no end marker")
    return exts


def _backing_name(data: bytes, h: Qcow2Header) -> str:
    start, size = h.backing_file_offset, min(h.backing_file_size, 1023)
    raw = data[start : start + size] if start + size <= len(data) else b""
    return repr(raw.decode("utf-8", "replace")) if raw else f"at offset {start}"


class Qcow2Image(DiskImage):
    """A qcow2 image's guest disk; unallocated and zero clusters read as zeros without I/O."""

    format_name = "qcow2"

    def __init__(self, path: str, fd: int, *, allow_encrypted: bool = False) -> None:
        super().__init__(path, fd)
        head = self.pread(0, min(self.file_size, 1 << 16), "header")
        if len(head) >= 24:
            bits = int.from_bytes(head[20:24], "big")
            if MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS and len(head) < min(1 << bits,
                                                                                   self.file_size):
                head = self.pread(0, min(self.file_size, 1 << bits), "header")
        h = parse_header(head, path, self.file_size)
        self.header = h
        self.cluster_size = cs = h.cluster_size
        self.l2_entries = cs // 8
        self.l2_span = cs * self.l2_entries
        self.virtual_size = h.size
        self.crypto_header: tuple[int, int] | None = None
        if h.crypt_method == CRYPT_LUKS:
            self.crypto_header = self._crypto_extension()
            if not allow_encrypted:
                raise UnsupportedError(
                    f"{path}: is an encrypted qcow2 (LUKS); lukspack encrypts plain images: "
                    "open it with `lukspack decrypt` and the key file first")
        self.l1 = self._load_l1()
        self._l2_cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._l2_cache_max = max(2, L2_CACHE_BYTES // cs)
        self._inflated: tuple[int, bytes] | None = None  # last decompressed cluster
        self._x = 62 - (h.cluster_bits - 8)  # compressed entries: bits of the host offset

    # -- metadata ------------------------------------------------------------------------------
    def _crypto_extension(self) -> tuple[int, int]:
        body = self.header.extensions.get(EXT_CRYPTO_HEADER)
        if body is None:
            raise FormatError(f"{self.path}: qcow2 crypt_method is 2 (LUKS) but the crypto header "
                              "extension 0x0537be77 is missing")
        if len(body) != CRYPTO_EXTENSION.size:
            raise FormatError(f"{self.path}: qcow2 crypto header extension is {len(body)} bytes, "
                              f"not {CRYPTO_EXTENSION.size}")
        offset, length = CRYPTO_EXTENSION.unpack(body)
        if offset % self.cluster_size:
            raise FormatError(f"{self.path}: qcow2 crypto header offset 0x{offset:x} is not "
                              f"aligned to the cluster size {self.cluster_size}")
        if offset == 0 or offset + length > self.file_size:
            raise FormatError(f"{self.path}: qcow2 crypto header (offset 0x{offset:x}, length "
                              f"{length}) is outside the file (size {self.file_size})")
        return offset, length

    def _load_l1(self) -> np.ndarray:
        h = self.header
        raw = self.pread(h.l1_table_offset, h.l1_size * 8, "L1 table") if h.l1_size else b""
        l1 = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        offs = l1 & np.uint64(OFFSET_MASK)
        cs = self.cluster_size
        used = np.flatnonzero(offs)
        bad = used[(offs[used] % np.uint64(cs)) != 0]
        if bad.size:
            i = int(bad[0])
            raise FormatError(f"{self.path}: L2 table offset 0x{int(offs[i]):x} of L1 entry {i} "
                              f"is not aligned to the cluster size {cs}")
        bad = used[offs[used] + np.uint64(cs) > np.uint64(self.file_size)]
        if bad.size:
            i = int(bad[0])
            raise FormatError(f"{self.path}: L2 table offset 0x{int(offs[i]):x} of L1 entry {i} is "
                              f"past the end of the file (size {self.file_size})")
        meta_end = h.l1_table_offset + h.l1_size * 8
        bad = used[(offs[used] < np.uint64(cs)) |
                   ((offs[used] >= np.uint64(h.l1_table_offset)) & (offs[used] < np.uint64(meta_end)))]
        if bad.size:
            i = int(bad[0])
            raise FormatError(f"{self.path}: L2 table offset 0x{int(offs[i]):x} of L1 entry {i} "
                              "overlaps the header or the L1 table")
        return offs

    def _l2(self, l1_index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(entries, kinds) of the L2 table of an L1 entry, validated; None when unallocated."""
        if l1_index >= len(self.l1):
            return None
        off = int(self.l1[l1_index])
        if off == 0:
            return None
        hit = self._l2_cache.get(l1_index)
        if hit is not None:
            self._l2_cache.move_to_end(l1_index)
            return hit
        raw = self.pread(off, self.cluster_size, f"L2 table of L1 entry {l1_index}")
        entries = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        kinds = self._classify(entries, l1_index)
        if len(self._l2_cache) >= self._l2_cache_max:
            self._l2_cache.popitem(last=False)
        self._l2_cache[l1_index] = (entries, kinds)
        return entries, kinds

    def _classify(self, e: np.ndarray, l1_index: int) -> np.ndarray:
        cs = self.cluster_size
        compressed = (e & np.uint64(OFLAG_COMPRESSED)) != 0
        zero = ~compressed & ((e & np.uint64(OFLAG_ZERO)) != 0)
        offs = e & np.uint64(OFFSET_MASK)
        normal = ~compressed & ~zero & (offs != 0)
        kinds = np.zeros(len(e), dtype=np.uint8)
        kinds[zero] = ZERO
        kinds[normal] = NORMAL
        kinds[compressed] = COMPRESSED
        first = l1_index * self.l2_entries

        def fail(mask: np.ndarray, what: str) -> None:
            idx = np.flatnonzero(mask)
            if idx.size:
                j = int(idx[0])
                raise FormatError(f"{self.path}: {what.format(off=int(offs[j]), e=int(e[j]))} "
                                  f"(guest cluster {first + j}, L2 entry {j} of L1 entry "
                                  f"{l1_index})")

        fail(normal & ((offs % np.uint64(cs)) != 0),
             "data cluster offset 0x{off:x} is not aligned to the cluster size " + str(cs))
        fail(normal & ((e & np.uint64(L2_RESERVED)) != 0), "L2 entry 0x{e:016x} has reserved bits set")
        fail(normal & (offs >= np.uint64(self.file_size)),
             "data cluster offset 0x{off:x} is past the end of the file (size "
             f"{self.file_size})")
        fail(normal & (offs < np.uint64(cs)), "data cluster offset 0x{off:x} overlaps the header")
        if compressed.any():
            if self.crypto_header is not None:
                fail(compressed, "compressed cluster in an encrypted image (entry 0x{e:016x})")
            coff = e & np.uint64((1 << self._x) - 1)
            fail(compressed & ((coff >= np.uint64(self.file_size)) | (coff < np.uint64(cs))),
                 "compressed cluster offset (entry 0x{e:016x}) is outside the file "
                 f"(size {self.file_size})")
        return kinds

    # -- mapping -------------------------------------------------------------------------------
    def _kinds(self, l1_index: int) -> np.ndarray | None:
        t = self._l2(l1_index)
        return None if t is None else t[1]

    def extents(self, start: int = 0, end: int | None = None) -> Iterator[Extent]:
        end = self.virtual_size if end is None else min(end, self.virtual_size)
        cs, span = self.cluster_size, self.l2_span
        run_start, run_alloc = start, None
        pos = start
        while pos < end:
            l1i = pos // span
            seg_end = min((l1i + 1) * span, end)
            kinds = self._kinds(l1i)
            if kinds is None:
                changes: list[tuple[int, bool]] = [(pos, False)]
            else:
                a = (pos - l1i * span) // cs
                b = -(-(seg_end - l1i * span) // cs)
                alloc = kinds[a:b] >= NORMAL
                cut = np.flatnonzero(alloc[1:] != alloc[:-1]) + 1
                changes = [(pos, bool(alloc[0]))]
                changes += [(l1i * span + (a + int(k)) * cs, bool(alloc[k])) for k in cut]
            for at, flag in changes:
                if run_alloc is None:
                    run_alloc = flag
                elif flag != run_alloc:
                    yield Extent(run_start, at - run_start, run_alloc)
                    run_start, run_alloc = at, flag
            pos = seg_end
        if run_alloc is not None:
            yield Extent(run_start, end - run_start, run_alloc)

    def mapping(self, offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """(guest offset, length, kind, host offset) runs covering the range; standard clusters
        that are contiguous in the file are merged into one run."""
        cs, span = self.cluster_size, self.l2_span
        pos, end = offset, min(offset + length, self.virtual_size)
        cur: list[int] | None = None
        while pos < end:
            l1i, inside = divmod(pos, span)
            t = self._l2(l1i)
            ci, within = divmod(inside, cs)
            n = min(cs - within, end - pos)
            if t is None:
                kind, host = UNALLOCATED, 0
            else:
                kind = int(t[1][ci])
                e = int(t[0][ci])
                host = (e & OFFSET_MASK) + within if kind == NORMAL else e if kind == COMPRESSED else 0
            merge = cur is not None and kind == cur[2] and (
                kind in (UNALLOCATED, ZERO) or (kind == NORMAL and cur[3] + cur[1] == host))
            if merge:
                cur[1] += n  # type: ignore[index]
            else:
                if cur is not None:
                    yield cur[0], cur[1], cur[2], cur[3]
                cur = [pos, n, kind, host]
            pos += n
        if cur is not None:
            yield cur[0], cur[1], cur[2], cur[3]

    # -- reading -------------------------------------------------------------------------------
    def _read_allocated(self, offset: int, view: memoryview) -> None:
        for guest, n, kind, host in self.mapping(offset, len(view)):
            part = view[guest - offset : guest - offset + n]
            if kind == NORMAL:
                self._pread_data(host, part, guest)
            elif kind == COMPRESSED:
                within = guest % self.cluster_size
                part[:] = self._inflate(host, guest - within)[within : within + n]
            else:
                part[:] = bytes(n)

    def read_ciphertext(self, offset: int, view: memoryview) -> list[tuple[int, int, int]]:
        """Fill view with the stored (encrypted) bytes of the guest range at offset, zeros where
        nothing is stored; return (view offset, length, host offset) of each stored run."""
        runs = []
        for guest, n, kind, host in self.mapping(offset, len(view)):
            part = view[guest - offset : guest - offset + n]
            if kind == NORMAL:
                self._pread_data(host, part, guest)
                runs.append((guest - offset, n, host))
            else:
                part[:] = bytes(n)
        covered = min(len(view), max(0, self.virtual_size - offset))
        if covered < len(view):
            view[covered:] = bytes(len(view) - covered)
        return runs

    def _pread_data(self, host: int, part: memoryview, guest: int) -> None:
        """Read a standard run; the file may end inside the last cluster (qemu reads zeros)."""
        avail = max(0, min(len(part), self.file_size - host))
        if avail < len(part):
            part[avail:] = bytes(len(part) - avail)
        self.pread_exact(host, part[:avail], f"data of guest offset {guest}")

    def _inflate(self, entry: int, guest_cluster: int) -> bytes:
        if self._inflated is not None and self._inflated[0] == guest_cluster:
            return self._inflated[1]
        x = self._x
        coff = entry & ((1 << x) - 1)
        sectors = ((entry >> x) & ((1 << (self.header.cluster_bits - 8)) - 1)) + 1
        csize = min(sectors * 512 - (coff & 511), self.file_size - coff)
        data = self.pread(coff, csize, f"compressed cluster of guest offset {guest_cluster}")
        cs = self.cluster_size
        try:
            out = zlib.decompressobj(-15).decompress(data, cs)
        except zlib.error as e:
            raise FormatError(f"{self.path}: compressed cluster at offset 0x{coff:x} (guest offset "
                              f"{guest_cluster}) does not inflate: {e}") from None
        if len(out) != cs:
            raise FormatError(f"{self.path}: compressed cluster at offset 0x{coff:x} (guest offset "
                              f"{guest_cluster}) inflates to {len(out)} bytes, not {cs}")
        self._inflated = (guest_cluster, out)
        return out

    # -- description ---------------------------------------------------------------------------
    def cluster_counts(self) -> dict[str, int]:
        counts = {"unallocated": 0, "zero": 0, "normal": 0, "compressed": 0}
        names = ("unallocated", "zero", "normal", "compressed")
        total = -(-self.virtual_size // self.cluster_size)
        for l1i in range(len(self.l1)):
            n = min(self.l2_entries, total - l1i * self.l2_entries)
            if n <= 0:
                break
            kinds = self._kinds(l1i)
            if kinds is None:
                counts["unallocated"] += n
                continue
            for k, c in enumerate(np.bincount(kinds[:n], minlength=4)):
                counts[names[k]] += int(c)
        return counts

    def info(self) -> dict[str, Any]:
        h = self.header
        out = super().info()
        out["qcow2"] = {
            "version": h.version,
            "compat": "1.1" if h.version == 3 else "0.10",
            "cluster_size": self.cluster_size,
            "refcount_bits": 1 << h.refcount_order,
            "l1_size": h.l1_size,
            "l1_table_offset": h.l1_table_offset,
            "refcount_table_offset": h.refcount_table_offset,
            "refcount_table_clusters": h.refcount_table_clusters,
            "snapshots": h.nb_snapshots,
            "dirty": bool(h.incompatible_features & INCOMPAT_DIRTY),
            "encrypted": h.crypt_method == CRYPT_LUKS,
            "extensions": [EXTENSION_NAMES.get(k, f"0x{k:08x}") for k in h.extensions],
            "clusters": self.cluster_counts(),
        }
        if self.crypto_header is not None:
            out["qcow2"]["crypto_header"] = {"offset": self.crypto_header[0],
                                             "length": self.crypto_header[1]}
        return out
