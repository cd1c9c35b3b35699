"""VirtualBox VDI images, dynamic and fixed (VirtualBox VDICore.h, header version 1.1),
little-endian.

The file starts with a 64-byte pre-header (a text such as "<<< Oracle VM VirtualBox Disk Image
>>>", then the signature 0xbeda107f, stored as the bytes 7f 10 da be at 0x40, and the version
0x00010001), then the version 1.1 header: image type (1 normal/dynamic, 2 fixed, 3 undo,
4 differencing), the offsets of the block map and of the data, the disk size, the block size
(1 MiB in every image VirtualBox and qemu write), the number of blocks and the UUIDs. The block map
has one uint32 per virtual block: the index of its data block in the file (the data of block index
k starts at offData + k * (cbBlock + cbBlockExtra) + cbBlockExtra), 0xFFFFFFFF for a block never
allocated and 0xFFFFFFFE for a block that was discarded or zeroed (VBoxManage modifymedium
--compact); both read as zeros, as qemu reads them. A fixed image is one whose map names every
block; it is read through the same map.

Refused with a clear message: other header versions, differencing and undo images (they need a
parent), sector sizes other than 512, block sizes that are not a power of two, a map or a block
outside the file. A disk size that is not whole sectors is rounded up, as qemu does
(`VBoxManage convertfromraw` writes such sizes).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from lukspack.errors import FormatError, UnsupportedError
from lukspack.images.base import BlockRuns, DiskImage, Extent
from lukspack.images.source import ByteSource

SIGNATURE = 0xBEDA107F
SIGNATURE_AT = 0x40
SIGNATURE_BYTES = struct.pack("<I", SIGNATURE)  # 7f 10 da be, what sniff.py looks for
VERSION_1_1 = 0x00010001
SECTOR = 512
HEADER_END = 0x200  # the pre-header and the version 1.1 header fit in the first sector
HEADER1_SIZE = 0x180  # sizeof(VDIHEADER1); VDIHEADER1PLUS (with LCHS geometry) is 0x190
BLOCK_FREE = 0xFFFFFFFF  # VDI_IMAGE_BLOCK_FREE: never allocated, reads as zeros
BLOCK_ZERO = 0xFFFFFFFE  # VDI_IMAGE_BLOCK_ZERO: discarded or zeroed, reads as zeros
MAX_BLOCKS = 0x3FFFFFFF  # as qemu's VDI_BLOCKS_IN_IMAGE_MAX
MAX_BLOCK_SIZE = 256 << 20
MAX_VIRTUAL_SIZE = 64 << 40
IMAGE_TYPES = {1: "dynamic", 2: "fixed", 3: "undo", 4: "differencing"}
TYPE_DYNAMIC, TYPE_FIXED = 1, 2

# text, signature, version, cbHeader, u32Type, fFlags, szComment, offBlocks, offData,
# cCylinders, cHeads, cSectors, cbSector, u32Dummy, cbDisk, cbBlock, cbBlockExtra, cBlocks,
# cBlocksAllocated, uuidCreate, uuidModify, uuidLinkage, uuidParentModify
HEADER = struct.Struct("<64sIIIII256sIIIIIIIQIIII16s16s16s16s")
FIELDS = ("text", "signature", "version", "header_size", "image_type", "image_flags",
          "description", "offset_bmap", "offset_data", "cylinders", "heads", "sectors",
          "sector_size", "unused1", "disk_size", "block_size", "block_extra", "blocks_in_image",
          "blocks_allocated", "uuid_image", "uuid_last_snap", "uuid_link", "uuid_parent")


def parse_header(data: bytes) -> dict[str, Any]:
    return dict(zip(FIELDS, HEADER.unpack_from(data), strict=True))


class VdiImage(DiskImage):
    """A VDI's virtual disk; free and zero blocks read as zeros without I/O."""

    format_name = "vdi"

    def __init__(self, path: str, fd: int | ByteSource, window: tuple[int, int] | None = None) -> None:
        super().__init__(path, fd, window)
        if self.file_size < HEADER_END:
            raise FormatError(f"{path}: VDI header is truncated (file size {self.file_size} < "
                              f"{HEADER_END})")
        h = self.header = parse_header(self.pread(0, HEADER.size, "header"))
        self._check_header(h)
        self.block_size = bs = h["block_size"]
        self.stride = bs + h["block_extra"]
        self.virtual_size = -(-h["disk_size"] // SECTOR) * SECTOR
        blocks = h["blocks_in_image"]
        raw = self.pread(h["offset_bmap"], blocks * 4, "VDI block map")
        self.bmap = np.frombuffer(raw, dtype="<u4").astype(np.int64)
        allocated = self.bmap < BLOCK_ZERO
        self.allocated = allocated
        # what of each block the disk uses (the last may be partly past the disk's end)
        used = np.clip(self.virtual_size - np.arange(blocks, dtype=np.int64) * bs, 0, bs)
        ends = h["offset_data"] + self.bmap * self.stride + h["block_extra"] + used
        bad = np.flatnonzero(allocated & (used > 0) & (ends > self.file_size))
        if bad.size:
            i = int(bad[0])
            raise FormatError(
                f"{path}: VDI block {i} (block map entry {int(self.bmap[i])}) points past the "
                f"end of the file (its data ends at {int(ends[i])} > size {self.file_size})")
        self._runs = BlockRuns(allocated, bs)

    def _check_header(self, h: dict[str, Any]) -> None:
        path = self.path
        if h["signature"] != SIGNATURE:
            raise FormatError(f"{path}: not a VDI (signature 0x{h['signature']:08x} at 0x40, not "
                              f"0x{SIGNATURE:08x})")
        if h["version"] != VERSION_1_1:
            v = h["version"]
            raise UnsupportedError(f"{path}: VDI header version {v >> 16}.{v & 0xFFFF} is not "
                                   "supported (1.1); convert it with `VBoxManage clonemedium`")
        if h["header_size"] < HEADER1_SIZE:
            raise FormatError(f"{path}: VDI header size {h['header_size']} is smaller than a "
                              f"version 1.1 header ({HEADER1_SIZE})")
        kind, null = h["image_type"], bytes(16)
        parent = h["uuid_link"] != null or h["uuid_parent"] != null
        if kind in (3, 4) or (kind in (TYPE_DYNAMIC, TYPE_FIXED) and parent):
            what = {3: "an undo VDI", 4: "a differencing VDI"}.get(kind, "a VDI naming a parent")
            raise UnsupportedError(f"{path}: is {what}, which needs its parent image; merge it "
                                   "first (VBoxManage clonemedium)")
        if kind not in (TYPE_DYNAMIC, TYPE_FIXED):
            raise FormatError(f"{path}: VDI image type {kind} is not 1 (dynamic) or 2 (fixed)")
        if h["sector_size"] != SECTOR:
            raise FormatError(f"{path}: VDI sector size {h['sector_size']} is not 512")
        bs = h["block_size"]
        if bs < SECTOR or bs & (bs - 1) or bs > MAX_BLOCK_SIZE:
            raise FormatError(f"{path}: VDI block size {bs} is not a power of two between 512 "
                              f"and {MAX_BLOCK_SIZE}")
        if h["block_extra"] % SECTOR or h["block_extra"] > MAX_BLOCK_SIZE:
            raise FormatError(f"{path}: VDI block extra size {h['block_extra']} is not a whole "
                              "number of sectors")
        blocks = h["blocks_in_image"]
        if blocks > MAX_BLOCKS:
            raise FormatError(f"{path}: VDI block count {blocks} is absurd (more than "
                              f"{MAX_BLOCKS})")
        if h["disk_size"] > MAX_VIRTUAL_SIZE:
            raise FormatError(f"{path}: VDI disk size {h['disk_size']} is absurd (more than "
                              f"{MAX_VIRTUAL_SIZE} bytes)")
        if h["disk_size"] > blocks * bs:
            raise FormatError(f"{path}: VDI disk size {h['disk_size']} does not fit in its "
                              f"{blocks} blocks of {bs} bytes")
        bmap, data = h["offset_bmap"], h["offset_data"]
        if bmap % SECTOR or data % SECTOR:
            raise FormatError(f"{path}: VDI block map offset {bmap} or data offset {data} is not "
                              "aligned to 512 bytes")
        if bmap < HEADER_END:
            raise FormatError(f"{path}: VDI block map offset {bmap} overlaps the header")
        if bmap + blocks * 4 > self.file_size:
            raise FormatError(f"{path}: VDI block map ({blocks * 4} bytes at offset {bmap}) runs "
                              f"past the end of the file (size {self.file_size})")
        if data < bmap + blocks * 4:
            raise FormatError(f"{path}: VDI data offset {data} overlaps the block map (offset "
                              f"{bmap}, {blocks * 4} bytes)")

    def extents(self, start: int = 0, end: int | None = None) -> Iterator[Extent]:
        end = self.virtual_size if end is None else min(end, self.virtual_size)
        if start < end:
            yield from self._runs.extents(start, end)

    def _read_allocated(self, offset: int, view: memoryview) -> None:
        bs, pos, done = self.block_size, offset, 0
        base = self.header["offset_data"] + self.header["block_extra"]
        while done < len(view):
            i = pos // bs
            inside = pos - i * bs
            n = min(bs - inside, len(view) - done)
            file_off = base + int(self.bmap[i]) * self.stride + inside
            self.pread_exact(file_off, view[done : done + n], f"VDI block {i}")
            pos += n
            done += n

    def info(self) -> dict[str, Any]:
        h = self.header
        out = super().info()
        out["vdi"] = {
            "version": f"{h['version'] >> 16}.{h['version'] & 0xFFFF}",
            "image_type": IMAGE_TYPES.get(h["image_type"], str(h["image_type"])),
            "text": h["text"].split(b"\x00", 1)[0].decode("latin-1").strip(),
            "block_size": h["block_size"],
            "blocks_in_image": h["blocks_in_image"],
            "blocks_allocated": int(self.allocated.sum()),
            "blocks_zero": int((self.bmap == BLOCK_ZERO).sum()),
            "offset_bmap": h["offset_bmap"],
            "offset_data": h["offset_data"],
            "uuid": str(uuid.UUID(bytes_le=h["uuid_image"])),
        }
        if h["disk_size"] != self.virtual_size:
            out["notes"] = [f"VDI disk size {h['disk_size']} is not whole sectors; read as "
                            f"{self.virtual_size} bytes, as qemu reads it"]
        return out
