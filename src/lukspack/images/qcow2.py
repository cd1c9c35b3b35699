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

import zlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np

from lukspack.errors import FormatError, UnsupportedError
from lukspack.images.base import DiskImage, Extent
from lukspack.images.qcow2_header import (
    COMPRESSED,
    CRYPT_LUKS,
    CRYPTO_EXTENSION,
    EXT_CRYPTO_HEADER,
    EXTENSION_NAMES,
    INCOMPAT_DIRTY,
    L2_CACHE_BYTES,
    L2_RESERVED,
    MAGIC,
    MAX_CLUSTER_BITS,
    MIN_CLUSTER_BITS,
    NORMAL,
    OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_ZERO,
    UNALLOCATED,
    ZERO,
    parse_header,
)
from lukspack.images.source import ByteSource

__all__ = ["MAGIC", "Qcow2Image"]


class Qcow2Image(DiskImage):
    """A qcow2 image's guest disk; unallocated and zero clusters read as zeros without I/O."""

    format_name = "qcow2"

    def __init__(self, path: str, fd: int | ByteSource, window: tuple[int, int] | None = None, *,
                 allow_encrypted: bool = False) -> None:
        super().__init__(path, fd, window)
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
        rt0, rt1 = self._refcount_table()
        bad = used[(offs[used] + np.uint64(cs) > rt0) & (offs[used] < rt1)]
        if bad.size:
            i = int(bad[0])
            raise FormatError(f"{self.path}: L2 table offset 0x{int(offs[i]):x} of L1 entry {i} "
                              "overlaps the refcount table")
        return offs

    def _refcount_table(self) -> tuple[np.uint64, np.uint64]:
        """Start and end of the refcount table in the file (clipped to the file)."""
        h = self.header
        start = min(h.refcount_table_offset, self.file_size)
        end = min(h.refcount_table_offset + h.refcount_table_clusters * self.cluster_size,
                  self.file_size)
        return np.uint64(start), np.uint64(end)

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

        def fail(mask: np.ndarray, subject: str, problem: str) -> None:
            idx = np.flatnonzero(mask)
            if idx.size:
                j = int(idx[0])
                what = subject.format(off=int(offs[j]), e=int(e[j]))
                raise FormatError(f"{self.path}: {what} of guest cluster {first + j} (L2 entry {j} "
                                  f"of L1 entry {l1_index}) {problem}")

        data = "data cluster offset 0x{off:x}"
        fail(normal & ((offs % np.uint64(cs)) != 0), data,
             f"is not aligned to the cluster size {cs}")
        fail(normal & ((e & np.uint64(L2_RESERVED)) != 0), "L2 entry 0x{e:016x}",
             "has reserved bits set")
        fail(normal & (offs >= np.uint64(self.file_size)), data,
             f"is past the end of the file (size {self.file_size})")
        fail(normal & (offs < np.uint64(cs)), data, "overlaps the header")
        h = self.header
        l1_0 = np.uint64(h.l1_table_offset)
        l1_1 = np.uint64(min(h.l1_table_offset + h.l1_size * 8, self.file_size))
        fail(normal & (offs + np.uint64(cs) > l1_0) & (offs < l1_1), data,
             "overlaps the L1 table")
        rt0, rt1 = self._refcount_table()
        fail(normal & (offs + np.uint64(cs) > rt0) & (offs < rt1), data,
             "overlaps the refcount table")
        if compressed.any():
            if self.crypto_header is not None:
                fail(compressed, "compressed L2 entry 0x{e:016x}", "is in an encrypted image")
            coff = e & np.uint64((1 << self._x) - 1)
            fail(compressed & ((coff >= np.uint64(self.file_size)) | (coff < np.uint64(cs))),
                 "compressed L2 entry 0x{e:016x}",
                 f"points outside the file (size {self.file_size})")
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
                assert cur is not None
                cur[1] += n
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
