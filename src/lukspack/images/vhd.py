"""Microsoft VHD (Virtual PC / Hyper-V) images, fixed and dynamic, big-endian.

A fixed VHD is the disk followed by a 512-byte footer; it has nothing at offset 0, so it is
recognised by its footer. A dynamic VHD starts with a copy of the footer, then a `cxsparse` dynamic
header, a block allocation table (BAT) of big-endian sector numbers, and blocks that each start with
a sector bitmap. Unallocated blocks (BAT entry 0xFFFFFFFF) read as zeros. As in qemu's vpc driver,
the sector bitmap is not consulted when reading an allocated block.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from lukspack.errors import FormatError, UnsupportedError
from lukspack.images.base import BlockRuns, DiskImage, Extent
from lukspack.images.source import ByteSource
from lukspack.structs import Layout

FOOTER_COOKIE = b"conectix"
DYNAMIC_COOKIE = b"cxsparse"
FOOTER_SIZE = 512
DYN_HEADER_SIZE = 1024
SECTOR = 512
BAT_UNUSED = 0xFFFFFFFF
DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING = 2, 3, 4
MAX_BLOCK_SIZE = 256 << 20
MAX_BAT_ENTRIES = 1 << 26  # 64 Mi entries: 128 TiB of 2 MiB blocks, 256 MiB of BAT
MAX_VIRTUAL_SIZE = 64 << 40  # far above the 2040 GiB of the specification; VHDX's limit
CREATOR = b"win "  # see make_footer
DISK_TYPES = {0: "none", 2: "fixed", 3: "dynamic", 4: "differencing"}



class Footer(NamedTuple):
    """The 512-byte footer (and its copy at 0 in a dynamic VHD), the specification's names."""

    cookie: bytes
    features: int
    file_format_version: int
    data_offset: int
    time_stamp: int
    creator_application: bytes
    creator_version: int
    creator_host_os: bytes
    original_size: int
    current_size: int
    cylinders: int
    heads: int
    sectors_per_track: int
    disk_type: int
    checksum: int
    unique_id: bytes
    saved_state: int


class DynHeader(NamedTuple):
    """The 1024-byte dynamic disk header (`cxsparse`)."""

    cookie: bytes
    data_offset: int
    table_offset: int
    header_version: int
    max_table_entries: int
    block_size: int
    checksum: int
    parent_unique_id: bytes
    parent_time_stamp: int
    reserved: int
    parent_unicode_name: bytes
    parent_locators: bytes


FOOTER = Layout(">8sIIQI4sI4sQQHBBII16sB427x", Footer)
DYN_HEADER = Layout(">8sQQIIII16sII512s192s256x", DynHeader)
_CHECKSUM_AT_FOOTER = 64
_CHECKSUM_AT_DYN = DYN_CHECKSUM_AT = 36  # the checksum field's offset


def vhd_checksum(data: bytes, at: int) -> int:
    """One's complement of the byte sum with the 4-byte checksum field at `at` taken as zero."""
    total = sum(data) - sum(data[at : at + 4])
    return ~total & 0xFFFFFFFF


def parse_footer(data: bytes) -> dict[str, Any] | None:
    """The footer's fields when data is a footer with a valid cookie and checksum, else None."""
    if len(data) < FOOTER_SIZE or data[:8] != FOOTER_COOKIE:
        return None
    f = FOOTER.unpack(data)
    fields: dict[str, Any] = f._asdict()
    fields["checksum_ok"] = vhd_checksum(data[:FOOTER_SIZE], _CHECKSUM_AT_FOOTER) == f.checksum
    return fields


def make_footer(size: int, disk_type: int = DISK_FIXED, data_offset: int = 0xFFFFFFFFFFFFFFFF,
                unique_id: bytes = bytes(16), timestamp: int = 0) -> bytes:
    """A VHD footer for a disk of `size` bytes.

    The creator is written as 'win ' (Hyper-V) on purpose: readers such as qemu decide by the
    creator whether the size is current_size or the CHS geometry, and only for Hyper-V-style
    creators do they trust current_size, which is the true size of any disk lukspack writes.
    """
    cyl, heads, spt = chs_geometry(size // SECTOR)
    return pack_footer(Footer(FOOTER_COOKIE, 2, 0x00010000, data_offset, timestamp, CREATOR,
                              0x000A0000, b"Wi2k", size, size, cyl, heads, spt, disk_type, 0,
                              unique_id, 0))


def pack_footer(footer: Footer) -> bytes:
    """The footer's bytes, its checksum computed (whatever footer.checksum says)."""
    raw = FOOTER.pack(footer._replace(checksum=0))
    return FOOTER.pack(footer._replace(checksum=vhd_checksum(raw, _CHECKSUM_AT_FOOTER)))


def make_dynamic_header(table_offset: int, entries: int, block_size: int) -> bytes:
    h = DynHeader(DYNAMIC_COOKIE, 0xFFFFFFFFFFFFFFFF, table_offset, 0x00010000, entries,
                  block_size, 0, bytes(16), 0, 0, bytes(512), bytes(192))
    return DYN_HEADER.pack(h._replace(checksum=vhd_checksum(DYN_HEADER.pack(h), _CHECKSUM_AT_DYN)))


def chs_geometry(total_sectors: int) -> tuple[int, int, int]:
    """CHS geometry from the VHD specification's algorithm (appendix: CHS calculation)."""
    total = min(total_sectors, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


TAP_CREATORS = (b"tap\x00", b"tap ")


class VhdImage(DiskImage):
    format_name = "vhd"

    def __init__(self, path: str, fd: int | ByteSource, window: tuple[int, int] | None = None) -> None:
        super().__init__(path, fd, window)
        self.notes: list[str] = []
        footer = None
        if self.file_size >= FOOTER_SIZE:
            footer = parse_footer(self.pread(self.file_size - FOOTER_SIZE, FOOTER_SIZE, "footer"))
        if footer is None or not footer["checksum_ok"]:
            copy = parse_footer(self.pread(0, FOOTER_SIZE, "footer copy")) \
                if self.file_size >= FOOTER_SIZE else None
            if copy is None or not copy["checksum_ok"]:
                if footer is not None:
                    computed = vhd_checksum(self.pread(self.file_size - FOOTER_SIZE, FOOTER_SIZE),
                                            _CHECKSUM_AT_FOOTER)
                    raise FormatError(
                        f"{path}: is a damaged VHD: its footer checksum 0x{footer['checksum']:08x} "
                        f"is wrong (computed 0x{computed:08x}); if it is a RAW disk, say "
                        "--input-format raw")
                raise FormatError(f"{path}: no valid VHD footer (cookie 'conectix') found")
            self.notes.append("the footer at the end is missing or damaged; used the copy at 0")
            footer = copy
        self.footer = footer
        self.disk_type = footer["disk_type"]
        self.virtual_size = footer["current_size"]
        chs = footer["cylinders"] * footer["heads"] * footer["sectors_per_track"] * SECTOR
        # blktap and vhd-util (creator 'tap': XenServer, IBM Cloud classic, lukspack's encrypted
        # VHD) size a disk by current_size only: the geometry is no question there
        if chs != self.virtual_size and footer["creator_application"] not in TAP_CREATORS:
            self.notes.append(f"CHS geometry gives {chs} bytes, current_size {self.virtual_size}; "
                              "current_size is used")
        if self.virtual_size % SECTOR:
            raise FormatError(f"{path}: VHD current_size {self.virtual_size} is not a whole "
                              "number of 512-byte sectors")
        if self.virtual_size > MAX_VIRTUAL_SIZE:
            raise FormatError(f"{path}: VHD current_size {self.virtual_size} is absurd (more "
                              f"than {MAX_VIRTUAL_SIZE} bytes)")
        self.bat: np.ndarray | None = None
        self._runs: BlockRuns | None = None
        self.block_size = 0
        if self.disk_type == DISK_FIXED:
            if self.file_size < self.virtual_size + FOOTER_SIZE:
                raise FormatError(f"{path}: fixed VHD is truncated (file size {self.file_size} < "
                                  f"current_size {self.virtual_size} + 512)")
        elif self.disk_type == DISK_DYNAMIC:
            self._open_dynamic()
        elif self.disk_type == DISK_DIFFERENCING:
            raise UnsupportedError(f"{path}: differencing VHDs (which need a parent image) are not "
                                   "supported; merge it first (qemu-img convert -O vpc)")
        else:
            raise FormatError(f"{path}: VHD disk_type {self.disk_type} is not 2, 3 or 4")

    def _open_dynamic(self) -> None:
        path, f = self.path, self.footer
        off = f["data_offset"]
        if off + DYN_HEADER_SIZE > self.file_size:
            raise FormatError(f"{path}: VHD data_offset {off} points past the end of the file "
                              f"(size {self.file_size})")
        raw = self.pread(off, DYN_HEADER_SIZE, "dynamic header")
        h = DYN_HEADER.unpack(raw)
        if h.cookie != DYNAMIC_COOKIE:
            raise FormatError(f"{path}: VHD dynamic header cookie is {h.cookie!r}, not 'cxsparse'")
        if vhd_checksum(raw, _CHECKSUM_AT_DYN) != h.checksum:
            raise FormatError(f"{path}: VHD dynamic header checksum 0x{h.checksum:08x} is wrong "
                              f"(computed 0x{vhd_checksum(raw, _CHECKSUM_AT_DYN):08x})")
        table_offset, entries, block_size = h.table_offset, h.max_table_entries, h.block_size
        self.dyn_header = {"table_offset": table_offset, "header_version": h.header_version,
                           "max_table_entries": entries, "block_size": block_size}
        if block_size < SECTOR or block_size & (block_size - 1) or block_size > MAX_BLOCK_SIZE:
            raise FormatError(f"{path}: VHD block_size {block_size} is not a power of two "
                              f"between 512 and {MAX_BLOCK_SIZE}")
        if entries > MAX_BAT_ENTRIES:
            raise FormatError(f"{path}: VHD max_table_entries {entries} is absurd")
        if entries * block_size < self.virtual_size:
            raise FormatError(f"{path}: VHD BAT of {entries} entries of {block_size} bytes is too "
                              f"small for current_size {self.virtual_size}")
        bat_bytes = entries * 4
        if table_offset + bat_bytes > self.file_size:
            raise FormatError(f"{path}: VHD BAT (offset {table_offset}, {bat_bytes} bytes) runs "
                              f"past the end of the file (size {self.file_size})")
        self.block_size = block_size
        self.bitmap_bytes = -(-(block_size // SECTOR // 8) // SECTOR) * SECTOR
        bat = np.frombuffer(self.pread(table_offset, bat_bytes, "BAT"), dtype=">u4")
        self.bat = bat.astype(np.int64)
        used = self.bat != BAT_UNUSED
        starts = self.bat[used] * SECTOR
        meta_end = max(table_offset + bat_bytes, off + DYN_HEADER_SIZE)
        ends = starts + self.bitmap_bytes + block_size
        if used.any():
            bad = int(np.argmax(used & (self.bat * SECTOR < meta_end)))
            if used[bad] and self.bat[bad] * SECTOR < meta_end:
                raise FormatError(f"{path}: VHD block {bad} at offset {self.bat[bad] * SECTOR} "
                                  f"overlaps the metadata (which ends at {meta_end})")
            # qemu and Hyper-V write whole blocks; the last footer sector follows the data.
            limit = self.file_size
            worst = int(np.argmax(ends))
            if ends[worst] > limit:
                idx = int(np.flatnonzero(used)[worst])
                raise FormatError(f"{path}: VHD block {idx} points past the end of the file "
                                  f"(offset {int(ends[worst])} > size {limit})")

    def extents(self, start: int = 0, end: int | None = None) -> Iterator[Extent]:
        end = self.virtual_size if end is None else min(end, self.virtual_size)
        if self.bat is None:
            yield from super().extents(start, end)
            return
        if start >= end:
            return
        if self._runs is None:
            self._runs = BlockRuns(self.bat != BAT_UNUSED, self.block_size)
        yield from self._runs.extents(start, end)

    def _read_allocated(self, offset: int, view: memoryview) -> None:
        if self.bat is None:
            self.pread_exact(offset, view)
            return
        bs, pos, done = self.block_size, offset, 0
        while done < len(view):
            i = pos // bs
            inside = pos - i * bs
            n = min(bs - inside, len(view) - done)
            file_off = int(self.bat[i]) * SECTOR + self.bitmap_bytes + inside
            self.pread_exact(file_off, view[done : done + n], f"VHD block {i}")
            pos += n
            done += n

    def info(self) -> dict[str, Any]:
        f = self.footer
        out = super().info()
        out["vhd"] = {
            "disk_type": DISK_TYPES.get(self.disk_type, str(self.disk_type)),
            "creator_application": f["creator_application"].decode("latin-1"),
            "creator_version": f"0x{f['creator_version']:08x}",
            "creator_host_os": f["creator_host_os"].decode("latin-1"),
            "original_size": f["original_size"],
            "current_size": f["current_size"],
            "geometry_chs": [f["cylinders"], f["heads"], f["sectors_per_track"]],
            "unique_id": f["unique_id"].hex(),
            "timestamp": f["time_stamp"],
            "saved_state": f["saved_state"],
        }
        if self.bat is not None:
            out["vhd"].update(self.dyn_header)
            out["vhd"]["allocated_blocks"] = int((self.bat != BAT_UNUSED).sum())
        if self.notes:
            out["notes"] = list(self.notes)
        return out
