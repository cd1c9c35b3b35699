"""What a block of the disk holds (superblock magic, UUID, label) and a read-only view of its
filesystems: ext2/3/4 (libfsext), XFS (libfsxfs), FAT (libfsfat) through libyal's bindings, and
Btrfs through lukspack's own reader (check/btrfs: no maintained Btrfs reader is published under
a licence lukspack can ship; libyal has none, dissect.btrfs is AGPL-3.0). `open_fs` opens either.
"""

from __future__ import annotations

import stat
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from lukspack.check.blockio import MAX_FILE, FileTypes, VolumeFile
from lukspack.check.btrfs import Btrfs, BtrfsFS, BtrfsNode, read_uuid

EXT_SUPER = 1024
EXT_MAGIC = 0xEF53
XFS_MAGIC = b"XFSB"
XFS_INCOMPAT_BIGTIME = 0x8
XFS_INCOMPAT_NREXT64 = 0x20
LVM_LABEL = b"LABELONE"
LUKS_MAGIC = b"LUKS\xba\xbe"
SWAP_MAGIC = b"SWAPSPACE2"


@dataclass
class Volume:
    """A block device of the guest: a partition, an LV or the whole disk."""

    device: str  # the guest's name: /dev/vda1, /dev/mapper/vg0-root
    file: VolumeFile
    kind: str = "unknown"  # ext4 | xfs | vfat | btrfs | swap | lvm2 | luks | unknown
    uuid: str = ""
    label: str = ""
    detail: str = ""
    partuuid: str = ""
    partition_number: int = 0  # 0: not a partition
    btrfs: Btrfs | None = None  # opened by btrfs_of, shared by its subvolumes

    def names(self) -> dict[str, str]:
        """How an fstab source can name this volume: device, uuid, label, partuuid ("" if
        none)."""
        return {"device": self.device, "uuid": self.uuid, "label": self.label,
                "partuuid": self.partuuid}


def probe(vol: Volume) -> None:
    """Fill kind, uuid, label and detail from the volume's first blocks."""
    f = vol.file
    head = f.pread(0, 4096)
    sb = f.pread(EXT_SUPER, 256)
    if head[:6] == LUKS_MAGIC:
        vol.kind = "luks"
    elif head[:4] == XFS_MAGIC:
        vol.kind = "xfs"
        vol.uuid = str(uuid.UUID(bytes=head[32:48]))
        vol.label = head[108:120].rstrip(b"\0").decode(errors="replace")
        version = struct.unpack_from(">H", head, 100)[0] & 0xF
        incompat = struct.unpack_from(">I", head, 216)[0] if version == 5 else 0
        feats = [n for bit, n in ((XFS_INCOMPAT_BIGTIME, "bigtime"), (XFS_INCOMPAT_NREXT64, "nrext64"))
                 if incompat & bit]
        vol.detail = f"XFS v{version}" + (f" ({', '.join(feats)})" if feats else "")
    elif len(sb) >= 140 and struct.unpack_from("<H", sb, 56)[0] == EXT_MAGIC:
        compat, incompat = struct.unpack_from("<II", sb, 92)
        vol.kind = "ext4" if incompat & 0x40 else ("ext3" if compat & 0x4 else "ext2")  # extents; journal
        vol.uuid = str(uuid.UUID(bytes=sb[104:120]))
        vol.label = sb[120:136].rstrip(b"\0").decode(errors="replace")
        vol.detail = vol.kind
    elif any(f.pread(512 * i, 8) == LVM_LABEL for i in range(4)):
        vol.kind = "lvm2"
        vol.detail = "LVM2 physical volume"
    elif head[4086:4096] == SWAP_MAGIC:
        vol.kind = "swap"
        vol.uuid = str(uuid.UUID(bytes=head[1036:1052]))
        vol.label = head[1052:1068].rstrip(b"\0").decode(errors="replace")
    elif head[510:512] == b"\x55\xaa" and (head[54:58] == b"FAT1" or head[82:87] == b"FAT32"):
        vol.kind = "vfat"
        fat32 = head[82:87] == b"FAT32"
        vid = struct.unpack_from("<I", head, 67 if fat32 else 39)[0]
        vol.uuid = f"{vid >> 16:04X}-{vid & 0xFFFF:04X}"
        vol.label = head[71 if fat32 else 43:][:11].decode(errors="replace").strip()
        vol.detail = "FAT32" if fat32 else head[54:59].decode(errors="replace").strip()
    else:
        got = read_uuid(f)
        if got is not None:
            vol.kind = "btrfs"
            vol.uuid, vol.label = got
            vol.detail = "Btrfs"


class Node(FileTypes):
    """One file entry of a guest filesystem (never follows links itself)."""

    def __init__(self, fs: GuestFS, entry: Any, path: str) -> None:
        self.fs = fs
        self.entry = entry
        self.path = path  # within its filesystem, no links in it

    @property
    def mode(self) -> int:
        try:
            return self._mode()
        except OSError:  # damaged metadata: neither a file, a directory nor a link
            return 0

    def _mode(self) -> int:
        if self.fs.kind == "vfat":
            flags = self.entry.file_attribute_flags  # None on the root directory
            return (stat.S_IFDIR | 0o755) if flags is None or flags & 0x10 else (stat.S_IFREG | 0o644)
        return self.entry.file_mode or 0

    @property
    def size(self) -> int:
        try:
            return self.entry.size or 0
        except OSError:
            return 0

    def link_target(self) -> str:
        try:
            return self.entry.symbolic_link_target or ""
        except OSError:  # a dangling link, as the guest would see it
            return ""

    def child(self, name: str) -> Node | None:
        # by path, not get_sub_file_entry_by_name: libfsext 20260821 fails that one on every name
        return self.fs.lookup(self.path.rstrip("/") + "/" + name)

    def names(self) -> list[str]:
        out: list[str] = []
        try:
            count = self.entry.number_of_sub_file_entries
        except OSError:
            return out
        for i in range(count):
            try:
                name = self.entry.get_sub_file_entry(i).name
            except OSError:
                continue
            if name and name not in (".", ".."):
                out.append(name)
        return out

    def read(self, limit: int = MAX_FILE, offset: int = 0) -> bytes:
        n = min(self.size - offset, limit)
        if n <= 0:
            return b""
        return bytes(self.entry.read_buffer_at_offset(n, offset))


class GuestFS:
    """A filesystem opened read-only through libyal, reading through the volume's DiskFile."""

    subvolume: int | None = None  # only Btrfs has subvolumes (BtrfsFS)

    def __init__(self, vol: Volume) -> None:
        self.vol = vol
        self.kind = vol.kind
        if vol.kind in ("ext2", "ext3", "ext4"):
            import pyfsext as lib
        elif vol.kind == "xfs":
            import pyfsxfs as lib
        elif vol.kind == "vfat":
            import pyfsfat as lib
        else:
            raise ValueError(f"no reader for {vol.kind}")
        self._volume = lib.volume()
        self._volume.open_file_object(vol.file)
        self.root = Node(self, self._volume.get_root_directory(), "/")

    @property
    def description(self) -> str:
        """How the check names this filesystem (BtrfsFS names its subvolume)."""
        return f"{self.vol.device} ({self.kind})"

    def lookup(self, path: str) -> Node | None:
        """The entry at a link-free path of this filesystem, or None."""
        if self.kind == "vfat":
            path = path.replace("/", "\\")  # libfsfat separates with backslashes
        try:
            entry = self._volume.get_file_entry_by_path(path)
        except OSError:
            return None
        return Node(self, entry, path) if entry is not None else None

    def close(self) -> None:
        try:
            self._volume.close()
        except OSError:
            pass


FileSystem = GuestFS | BtrfsFS  # what open_fs returns; Guest mounts either
FileNode = Node | BtrfsNode


def readable(vol: Volume) -> bool:
    return vol.kind in ("ext2", "ext3", "ext4", "xfs", "vfat", "btrfs")


def open_fs(vol: Volume, subvolume: int | None = None) -> FileSystem:
    """The filesystem on vol, read-only; for Btrfs the given subvolume (by id), else the default
    one, as a mount without subvol= gets. OSError when it cannot be read."""
    if vol.kind != "btrfs":
        return GuestFS(vol)
    return BtrfsFS(vol, btrfs_of(vol), subvolume)


def btrfs_of(vol: Volume) -> Btrfs:
    """The Btrfs on a volume probed as one, opened once and shared by its subvolumes; OSError
    when it cannot be read."""
    if vol.btrfs is None:
        vol.btrfs = Btrfs(vol.file)
    return vol.btrfs
