"""Writing qcow2 v3 images in one streaming pass, plain or with a LUKS encryption header.

Layout (64 KiB clusters, 16-bit refcounts, every cluster referenced exactly once):

    cluster 0              header + extensions (crypto header pointer 0x0537be77 when encrypted)
    clusters 1..           the LUKS header area (encrypted images only), whole clusters
    next                   the L1 table (its size follows from the virtual size)
    then, in guest order   data clusters that are not all zeros; each L2 table is placed right
                           after the data it maps, as soon as the stream has passed its range
    at the end             the refcount table, then the refcount blocks (all refcounts are 1)

Host clusters are handed out in a fixed order by `Qcow2Writer.plan`, called in guest order on each
plaintext chunk (the reader thread), so a worker thread can encrypt each data cluster with its own
IV before it is placed: qemu's qcow2 LUKS IV is the *host* byte offset / 512 (plain64), not the
guest sector (block/qcow2.c sets crypt_physical_offset for LUKS). Memory: one L2 table (64 KiB)
being filled, the L1 table (8 bytes per 512 MiB of disk), and the chunks in flight.

The header builders are pure functions returning bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from lukspack.containers.base import ChunkPlan, Finished, Placement, Run
from lukspack.images.qcow2_header import (
    EXT_CRYPTO_HEADER,
    EXT_END,
    EXTENSION,
    HEADER_V2,
    HEADER_V3,
    MAGIC,
    OFLAG_COPIED,
)

CLUSTER_BITS = 16
REFCOUNT_ORDER = 4  # 16-bit refcounts, qemu's default
HEADER_LENGTH = 112  # v3 header with the compression_type byte and its padding, as qemu 7.2
CRYPT_NONE, CRYPT_LUKS = 0, 2


def header_bytes(*, size: int, cluster_bits: int, l1_size: int, l1_table_offset: int,
                 refcount_table_offset: int, refcount_table_clusters: int,
                 crypto_header: tuple[int, int] | None = None) -> bytes:
    """The qcow2 v3 header, its extensions and the end marker."""
    crypt = CRYPT_LUKS if crypto_header else CRYPT_NONE
    out = HEADER_V2.pack(MAGIC, 3, 0, 0, cluster_bits, size, crypt, l1_size, l1_table_offset,
                         refcount_table_offset, refcount_table_clusters, 0, 0)
    out += HEADER_V3.pack(0, 0, 0, REFCOUNT_ORDER, HEADER_LENGTH)
    out += bytes(HEADER_LENGTH - len(out))  # compression_type 0 (zlib) and padding
    if crypto_header:
        body = struct.pack(">QQ", *crypto_header)
        out += EXTENSION.pack(EXT_CRYPTO_HEADER, len(body)) + body
    out += EXTENSION.pack(EXT_END, 0)
    return out


def l1_entries(size: int, cluster_bits: int = CLUSTER_BITS) -> int:
    cs = 1 << cluster_bits
    return -(-size // (cs * (cs // 8)))


def refcount_layout(clusters: int, cluster_bits: int = CLUSTER_BITS) -> tuple[int, int]:
    """(table clusters, block clusters) that give a refcount to `clusters` clusters and to
    themselves, placed after them."""
    cs = 1 << cluster_bits
    per_block = cs * 8 >> REFCOUNT_ORDER
    table = blocks = 0
    while True:
        total = clusters + table + blocks
        need_blocks = -(-total // per_block)
        need_table = max(1, -(-need_blocks * 8 // cs))
        if (need_blocks, need_table) == (blocks, table):
            return table, blocks
        blocks, table = need_blocks, need_table


def refcount_block(index: int, used: int, cluster_bits: int = CLUSTER_BITS) -> bytes:
    """Refcount block `index`: 1 for every cluster below `used`, 0 after."""
    per_block = (1 << cluster_bits) * 8 >> REFCOUNT_ORDER
    block = np.zeros(per_block, dtype=">u2")
    block[: max(0, min(per_block, used - index * per_block))] = 1
    return block.tobytes()


class Qcow2Writer:
    """Allocates host clusters in stream order; finish() gives the metadata around them.

    plan() runs in guest order (the reader thread) and returns the chunk's data clusters as
    runs at their host offsets (IV: host offset / 512, as qemu's LUKS in qcow2) and the L2 tables
    it closed; finish() returns the prefix (header, LUKS area, L1 table), the trailer (the last
    L2 table, the refcount table and blocks) and the file size. Every output byte is placed
    once, in ascending order after the prefix, so the image can stream to any sink."""

    def __init__(self, virtual_size: int, *, crypto_header_length: int = 0,
                 cluster_bits: int = CLUSTER_BITS) -> None:
        self.cluster_bits = cluster_bits
        self.cluster_size = cs = 1 << cluster_bits
        self.l2_entries = cs // 8
        self.size = -(-virtual_size // 512) * 512  # qemu counts whole sectors
        self.stream_size = -(-self.size // cs) * cs  # the stream feeds whole clusters
        self.l1_size = l1_entries(self.size, cluster_bits)
        self.l1 = np.zeros(self.l1_size, dtype=np.uint64)
        next_free = cs
        self.crypto_header: tuple[int, int] | None = None
        if crypto_header_length:
            self.crypto_header = (next_free, crypto_header_length)
            next_free += -(-crypto_header_length // cs) * cs
        self.l1_table_offset = next_free
        next_free += max(1, -(-self.l1_size * 8 // cs)) * cs
        self.prefix_size = self.next_free = next_free
        self.data_clusters = 0
        self.file_size = 0
        self._l2 = np.zeros(self.l2_entries, dtype=np.uint64)
        self._l2_index = -1  # the L1 entry whose L2 table is being filled
        self._l2_used = False

    def _alloc(self) -> int:
        host = self.next_free
        self.next_free += self.cluster_size
        return host

    def _close_l2(self, tables: list[Placement]) -> None:
        if self._l2_used:
            host = self._alloc()
            tables.append((host, self._l2.astype(">u8").tobytes()))
            self.l1[self._l2_index] = np.uint64(host | OFLAG_COPIED)
            self._l2[:] = 0
            self._l2_used = False

    def plan(self, offset: int, view: memoryview | None, allocated: bool = True) -> ChunkPlan:
        """Where the non-zero clusters of the chunk at guest `offset` go (in guest order). An
        unallocated chunk (view None) is not scanned: it stores nothing."""
        plan = ChunkPlan()
        if view is None or not allocated:
            return plan
        cs = self.cluster_size
        if offset % cs or len(view) % cs:
            raise ValueError(f"chunk at {offset} of {len(view)} bytes is not whole clusters")
        words = np.frombuffer(view, dtype=np.uint64).reshape(-1, cs // 8)
        nonzero = np.flatnonzero(words.any(axis=1))
        first = offset // cs
        runs = plan.runs
        for k in nonzero.tolist():
            guest = first + k
            l1i, l2i = divmod(guest, self.l2_entries)
            if l1i != self._l2_index:
                self._close_l2(plan.metadata)
                self._l2_index = l1i
            host = self._alloc()
            self._l2[l2i] = np.uint64(host | OFLAG_COPIED)
            self._l2_used = True
            self.data_clusters += 1
            last = runs[-1] if runs else None
            if last is not None and last.start + last.length == k * cs and \
                    last.dest + last.length == host:
                runs[-1] = Run(last.start, last.length + cs, last.iv_sector, last.dest)
            else:
                runs.append(Run(k * cs, cs, host // 512, host))
        return plan

    def finish(self, crypto_material: bytes = b"") -> Finished:
        """The prefix (header, crypto header area, L1 table), the trailer (last L2 table,
        refcount table, refcount blocks) and the file size."""
        cs = self.cluster_size
        trailer: list[Placement] = []
        self._close_l2(trailer)
        used = self.next_free // cs
        table_clusters, block_clusters = refcount_layout(used, self.cluster_bits)
        table_offset = used * cs
        blocks_offset = table_offset + table_clusters * cs
        total = used + table_clusters + block_clusters
        rt = np.zeros(table_clusters * cs // 8, dtype=">u8")
        rt[:block_clusters] = blocks_offset + np.arange(block_clusters, dtype=np.uint64) * cs
        trailer.append((table_offset, rt.tobytes()))
        for b in range(block_clusters):
            trailer.append((blocks_offset + b * cs, refcount_block(b, total, self.cluster_bits)))
        prefix = bytearray(self.prefix_size)
        head = header_bytes(
            size=self.size, cluster_bits=self.cluster_bits, l1_size=self.l1_size,
            l1_table_offset=self.l1_table_offset, refcount_table_offset=table_offset,
            refcount_table_clusters=table_clusters, crypto_header=self.crypto_header)
        prefix[: len(head)] = head
        if self.crypto_header is not None:
            at, length = self.crypto_header
            if len(crypto_material) != length:
                raise ValueError(f"crypto header of {len(crypto_material)} bytes, not {length}")
            prefix[at : at + length] = crypto_material
        l1 = self.l1.astype(">u8").tobytes()
        prefix[self.l1_table_offset : self.l1_table_offset + len(l1)] = l1
        self.file_size = total * cs
        return Finished(bytes(prefix), trailer, self.file_size)

    @property
    def metadata_bytes(self) -> int:
        return self.file_size - self.data_clusters * self.cluster_size
