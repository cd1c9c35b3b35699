"""Files of one Btrfs subvolume: inodes, directories (looked up by name hash, listed by index),
symlinks and file contents from inline, regular and preallocated extents, zlib, LZO or zstd
compressed. The same interface as the libyal-backed GuestFS and Node of check/filesystems.py,
so Guest resolves paths across both; a directory entry naming a subvolume enters its tree, as
the kernel does.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING

import zstandard

from lukspack.check.blockio import MAX_FILE, FileTypes
from lukspack.check.btrfs.ondisk import (
    DIR_INDEX_KEY,
    DIR_ITEM_KEY,
    EXTENT_DATA_KEY,
    EXTENT_INLINE,
    EXTENT_PREALLOC,
    EXTENT_REG,
    FILE_EXTENT,
    FILE_EXTENT_REG,
    INODE_ITEM_KEY,
    INODE_MODE_AT,
    INODE_SIZE_AT,
    MAX_KEY,
    MAX_UNCOMPRESSED,
    ROOT_ITEM_KEY,
    BtrfsError,
    name_hash,
    parse_dir_items,
)
from lukspack.check.btrfs.trees import Btrfs, Tree

if TYPE_CHECKING:  # filesystems.py opens a BtrfsFS on its Volume
    from lukspack.check.filesystems import Volume

LZO_LEN = 4  # btrfs's LZO framing: a le32 total length, then per segment a le32 length


def decompress(method: int, data: bytes, ram_bytes: int, sectorsize: int) -> bytes:
    """One compressed extent's data (at most ram_bytes of it, which btrfs keeps to 128 KiB: a
    larger claim is damage, and no stream is let expand past it)."""
    if not 0 < ram_bytes <= MAX_UNCOMPRESSED:
        raise BtrfsError(f"Btrfs compressed extent claims {ram_bytes} bytes (btrfs writes 1 to 131072)")
    try:
        if method == 1:
            return zlib.decompressobj().decompress(data, ram_bytes)
        if method == 3:
            with zstandard.ZstdDecompressor().stream_reader(data) as reader:
                return reader.read(ram_bytes)
        if method == 2:
            return _lzo(data, ram_bytes, sectorsize)
    except (zlib.error, zstandard.ZstdError) as e:
        raise BtrfsError(f"Btrfs compressed extent damaged: {e}") from None
    raise BtrfsError(f"Btrfs compression type {method} unknown")


def _lzo(data: bytes, ram_bytes: int, sectorsize: int) -> bytes:
    """Btrfs's LZO extent: segments of LZO1X, each one sector of output at most, whose 4-byte
    headers never straddle a sector (fs/btrfs/lzo.c; btrfs-progs cmds/restore.c)."""
    import lzallright

    if len(data) < LZO_LEN:
        raise BtrfsError("Btrfs LZO extent truncated")
    total = min(struct.unpack_from("<I", data)[0], len(data))
    pos, out = LZO_LEN, []
    produced = 0
    while pos + LZO_LEN <= total and produced < ram_bytes:
        seg = struct.unpack_from("<I", data, pos)[0]
        pos += LZO_LEN
        # a segment is one sector compressed: at most lzo1x_worst_compress(sectorsize) bytes
        if seg == 0 or pos + seg > total or seg > sectorsize + sectorsize // 16 + 64 + 3:
            raise BtrfsError(f"Btrfs LZO segment of {seg} bytes past the extent's end")
        try:
            plain = lzallright.LZOCompressor.decompress(data[pos:pos + seg], output_size_hint=sectorsize)
        except lzallright.LZOError as e:
            raise BtrfsError(f"Btrfs LZO segment damaged: {e!r}") from None
        if len(plain) > sectorsize:
            raise BtrfsError(f"Btrfs LZO segment expands to {len(plain)} bytes, more than a sector")
        out.append(plain)
        produced += len(plain)
        pos += seg
        if sectorsize - pos % sectorsize < LZO_LEN:
            pos += sectorsize - pos % sectorsize
    return b"".join(out)[:ram_bytes]


class BtrfsFS:
    """One subvolume of a Btrfs volume, opened read-only."""

    kind = "btrfs"

    def __init__(self, vol: Volume, btrfs: Btrfs, subvolume: int | None = None) -> None:
        self.vol = vol  # the check's Volume it lives on
        self.btrfs = btrfs
        self.subvolume = btrfs.default_subvolume() if subvolume is None else subvolume
        tree = btrfs.tree(self.subvolume)
        self.root = BtrfsNode(self, tree, tree.root_dirid, "/")

    @property
    def description(self) -> str:
        """How the check names this subvolume: "subvolume root (id 256)"."""
        try:
            path = self.btrfs.subvolume_path(self.subvolume)
        except OSError:  # a damaged subvolume listing: the id still says which one
            return f"subvolume id {self.subvolume}"
        return f"subvolume {path} (id {self.subvolume})" if path else \
            f"top-level subvolume (id {self.subvolume})"

    def lookup(self, path: str) -> BtrfsNode | None:
        """The entry at a link-free path of this subvolume, or None."""
        node: BtrfsNode | None = self.root
        for name in (p for p in path.split("/") if p):
            if node is None or not node.is_dir():
                return None
            node = node.child(name)
        return node

    def close(self) -> None:
        pass


class BtrfsNode(FileTypes):
    """One inode of a file tree (never follows links itself)."""

    def __init__(self, fs: BtrfsFS, tree: Tree, ino: int, path: str) -> None:
        self.fs, self.tree, self.ino, self.path = fs, tree, ino, path
        self._inode: tuple[int, int] | None = None

    def _stat(self) -> tuple[int, int]:
        if self._inode is None:
            data = self.fs.btrfs.item(self.tree, (self.ino, INODE_ITEM_KEY, 0))
            if data is None or len(data) < INODE_MODE_AT + 4:
                raise BtrfsError(f"Btrfs inode {self.ino} of tree {self.tree.id} missing")
            self._inode = (struct.unpack_from("<I", data, INODE_MODE_AT)[0],
                           struct.unpack_from("<Q", data, INODE_SIZE_AT)[0])
        return self._inode

    @property
    def mode(self) -> int:
        try:
            return self._stat()[0]
        except OSError:  # damaged metadata: neither a file, a directory nor a link
            return 0

    @property
    def size(self) -> int:
        try:
            return self._stat()[1]
        except OSError:
            return 0

    def link_target(self) -> str:
        try:
            return self.read(4096).decode("utf-8", "surrogateescape")
        except OSError:  # a dangling link, as the guest would see it
            return ""

    def child(self, name: str) -> BtrfsNode | None:
        raw = name.encode("utf-8", "surrogateescape")
        key = (self.ino, DIR_ITEM_KEY, name_hash(raw))
        try:
            data = self.fs.btrfs.item(self.tree, key)
            entries = parse_dir_items(data) if data is not None else []
        except OSError:
            return None
        for got, location in entries:  # names with the same hash share one item
            if got == raw:
                return self._enter(location, name)
        return None

    def _enter(self, location: tuple[int, int, int], name: str) -> BtrfsNode | None:
        path = self.path.rstrip("/") + "/" + name
        objectid, ktype, _ = location
        if ktype == INODE_ITEM_KEY:
            return BtrfsNode(self.fs, self.tree, objectid, path)
        if ktype == ROOT_ITEM_KEY:  # a subvolume inside this one: its top directory
            try:
                tree = self.fs.btrfs.tree(objectid)
            except OSError:
                return None
            return BtrfsNode(self.fs, tree, tree.root_dirid, path)
        return None

    def names(self) -> list[str]:
        out: list[str] = []
        lo, hi = (self.ino, DIR_INDEX_KEY, 0), (self.ino, DIR_INDEX_KEY, MAX_KEY)
        try:
            for _, data in self.fs.btrfs.items(self.tree, lo, hi):
                out.extend(n.decode("utf-8", "surrogateescape") for n, _ in parse_dir_items(data))
        except OSError:
            pass
        return [n for n in out if n not in (".", "..")]

    def read(self, limit: int = MAX_FILE, offset: int = 0) -> bytes:
        end = min(self.size, offset + limit)
        if end <= offset:
            return b""
        out = bytearray(end - offset)  # holes and preallocated ranges read as zeros
        btrfs = self.fs.btrfs
        lo, hi = (self.ino, EXTENT_DATA_KEY, 0), (self.ino, EXTENT_DATA_KEY, end - 1)
        for (_, _, file_off), data in btrfs.items(self.tree, lo, hi):
            if len(data) < FILE_EXTENT.size:
                raise BtrfsError(f"Btrfs file extent of inode {self.ino} truncated")
            _gen, ram, comp, enc, other, etype = FILE_EXTENT.unpack_from(data)
            if enc or other:
                raise BtrfsError(f"Btrfs extent of inode {self.ino} is encrypted or encoded")
            if etype == EXTENT_INLINE:
                plain = data[FILE_EXTENT.size:]
                if comp:
                    plain = decompress(comp, plain, ram, btrfs.sb.sectorsize)
                _place(out, offset, file_off, plain)
                continue
            if len(data) < FILE_EXTENT.size + FILE_EXTENT_REG.size:
                raise BtrfsError(f"Btrfs file extent of inode {self.ino} truncated")
            disk, disk_len, ext_off, num = FILE_EXTENT_REG.unpack_from(data, FILE_EXTENT.size)
            if etype not in (EXTENT_REG, EXTENT_PREALLOC):
                raise BtrfsError(f"Btrfs file extent type {etype} of inode {self.ino} unknown")
            if etype == EXTENT_PREALLOC or disk == 0:
                continue
            start, stop = max(file_off, offset), min(file_off + num, end)
            if start >= stop:
                continue
            if comp:
                if disk_len > MAX_UNCOMPRESSED:  # BTRFS_MAX_COMPRESSED is the same 128 KiB
                    raise BtrfsError(f"Btrfs compressed extent of {disk_len} bytes, more than btrfs writes")
                whole = decompress(comp, btrfs.read(disk, disk_len), ram, btrfs.sb.sectorsize)
                piece = whole[ext_off + start - file_off:ext_off + stop - file_off]
            else:
                piece = btrfs.read(disk + ext_off + start - file_off, stop - start)
            _place(out, offset, start, piece)
        return bytes(out)


def _place(out: bytearray, offset: int, at: int, data: bytes) -> None:
    """Copy data (file bytes from `at`) into out (file bytes from `offset`), clipped to out."""
    lo, hi = max(at, offset), min(at + len(data), offset + len(out))
    if lo < hi:
        out[lo - offset:hi - offset] = data[lo - at:hi - at]
