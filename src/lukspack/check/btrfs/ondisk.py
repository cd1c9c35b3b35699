"""Btrfs on-disk structures, as btrfs-progs' kernel-shared/uapi/btrfs_tree.h lays them out
(all little-endian, packed): the superblock, tree block headers, leaf items and key pointers,
chunk items and their stripes, inode, directory, root and file extent items, and the checksums
that guard the superblock and every tree block.

Only what a read-only walk of a single-device filesystem needs; names follow the C structs.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

import xxhash

from lukspack.images.crc32c import crc32c

SUPER_OFFSET = 0x10000  # the primary superblock; copies at 64 MiB and 256 GiB
SUPER_SIZE = 4096
MAGIC = b"_BHRfS_M"
CSUM_SIZE = 32

# object ids and item types (btrfs_tree.h)
ROOT_TREE_OBJECTID = 1
CHUNK_TREE_OBJECTID = 3
FS_TREE_OBJECTID = 5
ROOT_TREE_DIR_OBJECTID = 6
FIRST_FREE_OBJECTID = 256
FIRST_CHUNK_TREE_OBJECTID = 256
INODE_ITEM_KEY = 1
INODE_REF_KEY = 12
DIR_ITEM_KEY = 84
DIR_INDEX_KEY = 96
EXTENT_DATA_KEY = 108
ROOT_ITEM_KEY = 132
ROOT_REF_KEY = 156
CHUNK_ITEM_KEY = 228
MAX_KEY = (1 << 64) - 1

# block group profiles (btrfs_tree.h BTRFS_BLOCK_GROUP_*)
RAID0, RAID1, DUP, RAID10, RAID5, RAID6, RAID1C3, RAID1C4 = (
    1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8, 1 << 9, 1 << 10)
MIRRORED = RAID1 | DUP | RAID1C3 | RAID1C4  # every stripe holds the whole chunk

# incompat features this reader cannot follow (uapi/btrfs.h BTRFS_FEATURE_INCOMPAT_*)
INCOMPAT_METADATA_UUID = 1 << 10
UNREADABLE_INCOMPAT = {1 << 13: "extent-tree-v2", 1 << 17: "remap-tree"}

# file extents
EXTENT_INLINE, EXTENT_REG, EXTENT_PREALLOC = 0, 1, 2
COMPRESSION = {0: "none", 1: "zlib", 2: "lzo", 3: "zstd"}
MAX_UNCOMPRESSED = 128 * 1024  # BTRFS_MAX_UNCOMPRESSED: the most a compressed extent holds

Key = tuple[int, int, int]  # (objectid, type, offset): btrfs orders keys exactly like tuples

HEADER = struct.Struct("<32s16sQQ16sQQIB")  # struct btrfs_header, 101 bytes
ITEM = struct.Struct("<QBQII")  # struct btrfs_item: key, data offset (from the header's end), size
KEY_PTR = struct.Struct("<QBQQQ")  # struct btrfs_key_ptr: key, blockptr, generation
DISK_KEY = struct.Struct("<QBQ")
CHUNK = struct.Struct("<QQQQIIIHH")  # struct btrfs_chunk up to its first stripe, 48 bytes
STRIPE = struct.Struct("<QQ16s")  # devid, offset, dev_uuid
DIR_ITEM = struct.Struct("<QBQQHHB")  # location key, transid, data_len, name_len, type: 30 bytes
FILE_EXTENT = struct.Struct("<QQBBHB")  # generation, ram_bytes, compression, encryption, other, type
FILE_EXTENT_REG = struct.Struct("<QQQQ")  # disk_bytenr, disk_num_bytes, offset, num_bytes
INODE_SIZE_AT, INODE_MODE_AT = 16, 52  # in struct btrfs_inode_item
ROOT_ITEM_AT = 160  # struct btrfs_root_item fields after its inode item
ROOT_ITEM = struct.Struct("<QQQQQQQI17sBB")  # generation, root_dirid, bytenr, ..., flags, refs, drop, level
ROOT_SUBVOL_RDONLY = 1
ROOT_REF = struct.Struct("<QQH")  # dirid, sequence, name_len
INODE_REF = struct.Struct("<QH")  # index, name_len


class BtrfsError(OSError):
    """The filesystem cannot be read: damaged, or a feature this reader does not follow.
    An OSError, as libyal's readers raise, so the check treats both alike."""


def checksum(csum_type: int, data: bytes | memoryview) -> bytes:
    """The 32-byte checksum field btrfs stores for data (zero-padded)."""
    if csum_type == 0:
        digest = struct.pack("<I", crc32c(data))
    elif csum_type == 1:
        digest = struct.pack("<Q", xxhash.xxh64_intdigest(data))
    elif csum_type == 2:
        digest = hashlib.sha256(data).digest()
    elif csum_type == 3:
        digest = hashlib.blake2b(data, digest_size=32).digest()
    else:
        raise BtrfsError(f"Btrfs checksum type {csum_type} unknown")
    return digest.ljust(CSUM_SIZE, b"\0")


def name_hash(name: bytes) -> int:
    """The key offset of a DIR_ITEM: btrfs_name_hash(), CRC-32C seeded with ~1, not inverted."""
    return crc32c(name, 1) ^ 0xFFFFFFFF


@dataclass(frozen=True)
class Superblock:
    fsid: bytes
    tree_fsid: bytes  # what tree blocks carry: metadata_uuid when that feature is on
    generation: int
    root: int
    chunk_root: int
    root_level: int
    chunk_root_level: int
    total_bytes: int
    num_devices: int
    sectorsize: int
    nodesize: int
    csum_type: int
    incompat: int
    label: str
    devid: int
    sys_chunk_array: bytes

    @property
    def uuid(self) -> str:
        return str(uuid.UUID(bytes=self.fsid))


def parse_superblock(raw: bytes) -> Superblock:
    if len(raw) < SUPER_SIZE or raw[64:72] != MAGIC:
        raise BtrfsError("no Btrfs superblock at 64 KiB")
    (generation, root, chunk_root, _log, _unused, total, _used, _rootdir, ndev, sectorsize, nodesize,
     _leaf, _stripe, sys_size, _chunk_gen, _compat, _compat_ro, incompat, csum_type, root_level,
     chunk_level, _log_level) = struct.unpack_from("<QQQQQQQQQIIIIIQQQQHBBB", raw, 72)
    want = checksum(csum_type, memoryview(raw)[CSUM_SIZE:SUPER_SIZE])
    if raw[:CSUM_SIZE] != want:
        raise BtrfsError(f"Btrfs superblock checksum is {raw[:8].hex()}..., computed {want[:8].hex()}...")
    for bit, name in UNREADABLE_INCOMPAT.items():
        if incompat & bit:
            raise BtrfsError(f"Btrfs feature {name} is not read")
    if not (4096 <= sectorsize <= 65536 and sectorsize <= nodesize <= 65536) or sys_size > 2048:
        raise BtrfsError(f"Btrfs superblock sizes out of range (sector {sectorsize}, node {nodesize})")
    fsid = raw[32:48]
    metadata_uuid = raw[0x23B:0x24B]
    return Superblock(
        fsid=fsid, tree_fsid=metadata_uuid if incompat & INCOMPAT_METADATA_UUID else fsid,
        generation=generation, root=root, chunk_root=chunk_root, root_level=root_level,
        chunk_root_level=chunk_level, total_bytes=total, num_devices=ndev, sectorsize=sectorsize,
        nodesize=nodesize, csum_type=csum_type, incompat=incompat,
        label=raw[0x12B:0x22B].split(b"\0")[0].decode(errors="replace"),
        devid=struct.unpack_from("<Q", raw, 0xC9)[0], sys_chunk_array=raw[0x32B:0x32B + sys_size])


@dataclass(frozen=True)
class Chunk:
    """A range of logical addresses and the device ranges (stripes) that hold it."""

    logical: int
    length: int
    stripe_len: int
    type: int
    stripes: tuple[tuple[int, int], ...]  # (devid, physical offset)


def parse_chunk(logical: int, data: bytes | memoryview, pos: int = 0) -> tuple[Chunk, int]:
    """The chunk item at data[pos:] and its size in bytes."""
    if len(data) - pos < CHUNK.size:
        raise BtrfsError("Btrfs chunk item truncated")
    length, _owner, stripe_len, ctype, _align, _width, _sector, nstripes, _sub = CHUNK.unpack_from(data, pos)
    size = CHUNK.size + nstripes * STRIPE.size
    if nstripes == 0 or len(data) - pos < size or length == 0 or stripe_len == 0:
        raise BtrfsError(f"Btrfs chunk item at logical {logical} damaged")
    stripes = tuple(STRIPE.unpack_from(data, pos + CHUNK.size + i * STRIPE.size)[:2] for i in range(nstripes))
    return Chunk(logical, length, stripe_len, ctype, stripes), size


def parse_sys_chunks(array: bytes) -> list[Chunk]:
    """The superblock's sys_chunk_array: (disk key, chunk item) pairs mapping the chunk tree."""
    out, pos = [], 0
    while pos < len(array):
        if len(array) - pos < DISK_KEY.size:
            raise BtrfsError("Btrfs sys_chunk_array truncated")
        _objectid, ktype, offset = DISK_KEY.unpack_from(array, pos)
        if ktype != CHUNK_ITEM_KEY:
            raise BtrfsError(f"Btrfs sys_chunk_array holds item type {ktype}, not a chunk")
        chunk, size = parse_chunk(offset, array, pos + DISK_KEY.size)
        out.append(chunk)
        pos += DISK_KEY.size + size
    return out


def parse_dir_items(data: bytes) -> list[tuple[bytes, Key]]:
    """(name, location key) of every btrfs_dir_item packed in one DIR_ITEM/DIR_INDEX item."""
    out, pos = [], 0
    while pos + DIR_ITEM.size <= len(data):
        objectid, ktype, offset, _transid, data_len, name_len, _ftype = DIR_ITEM.unpack_from(data, pos)
        start = pos + DIR_ITEM.size
        if start + name_len + data_len > len(data):
            raise BtrfsError("Btrfs directory item truncated")
        out.append((data[start:start + name_len], (objectid, ktype, offset)))
        pos = start + name_len + data_len
    return out
