"""A Btrfs filesystem on one device, read-only: logical addresses mapped through the chunk tree,
tree blocks read, checked and cached, B-tree range searches, and the subvolumes of the root tree.

Reads go through the volume's `pread(offset, size)` (a check DiskFile), nothing else.
"""

from __future__ import annotations

import bisect
import posixpath
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from lukspack.check.btrfs.ondisk import (
    CHUNK_ITEM_KEY,
    CHUNK_TREE_OBJECTID,
    DIR_ITEM_KEY,
    FIRST_CHUNK_TREE_OBJECTID,
    FIRST_FREE_OBJECTID,
    FS_TREE_OBJECTID,
    HEADER,
    INODE_REF,
    INODE_REF_KEY,
    ITEM,
    KEY_PTR,
    MAGIC,
    MAX_KEY,
    MIRRORED,
    RAID0,
    RAID5,
    RAID6,
    RAID10,
    ROOT_ITEM,
    ROOT_ITEM_AT,
    ROOT_ITEM_KEY,
    ROOT_REF,
    ROOT_REF_KEY,
    ROOT_SUBVOL_RDONLY,
    ROOT_TREE_DIR_OBJECTID,
    SUPER_OFFSET,
    SUPER_SIZE,
    BtrfsError,
    Chunk,
    Key,
    checksum,
    name_hash,
    parse_chunk,
    parse_dir_items,
    parse_superblock,
    parse_sys_chunks,
)

MAX_LEVEL = 8  # BTRFS_MAX_LEVEL
CACHE_NODES = 4096  # tree blocks kept (64 MiB at the default 16 KiB node size)


class Readable(Protocol):
    def pread(self, offset: int, size: int) -> bytes: ...


@dataclass(frozen=True)
class Tree:
    """One B-tree: the root tree, the chunk tree, or a subvolume's file tree."""

    id: int
    bytenr: int
    level: int
    root_dirid: int = 0  # file trees: the inode number of the top directory (256)
    readonly: bool = False


@dataclass(frozen=True)
class Subvolume:
    id: int
    path: str  # from the top-level subvolume (5), no leading slash; "" for the top level
    readonly: bool


class TreeBlock:
    """A parsed tree block: keys, and per key either a child pointer (nodes) or item data (leaves)."""

    __slots__ = ("level", "keys", "ptrs", "raw", "spans")

    def __init__(self, raw: bytes, level: int, nritems: int) -> None:
        self.raw, self.level = raw, level
        self.keys: list[Key] = []
        self.ptrs: list[int] = []
        self.spans: list[tuple[int, int]] = []
        step = KEY_PTR.size if level else ITEM.size
        if HEADER.size + nritems * step > len(raw):
            raise BtrfsError(f"Btrfs tree block holds {nritems} items, more than fit")
        for i in range(nritems):
            if level:
                objectid, ktype, offset, ptr, _gen = KEY_PTR.unpack_from(raw, HEADER.size + i * step)
                self.ptrs.append(ptr)
            else:
                objectid, ktype, offset, at, size = ITEM.unpack_from(raw, HEADER.size + i * step)
                if HEADER.size + at + size > len(raw):
                    raise BtrfsError("Btrfs leaf item data past the tree block's end")
                self.spans.append((HEADER.size + at, size))
            self.keys.append((objectid, ktype, offset))
        if any(a >= b for a, b in zip(self.keys, self.keys[1:], strict=False)):
            raise BtrfsError("Btrfs tree block keys out of order")
        if len(set(self.ptrs)) != len(self.ptrs):  # else a damaged node could multiply a walk
            raise BtrfsError("Btrfs tree node names a child twice")

    def data(self, i: int) -> bytes:
        at, size = self.spans[i]
        return self.raw[at:at + size]


class Btrfs:
    """The filesystem on one device of a (usually single-device) Btrfs."""

    def __init__(self, dev: Readable) -> None:
        self.dev = dev
        self.sb = parse_superblock(dev.pread(SUPER_OFFSET, SUPER_SIZE))
        self.chunks: list[Chunk] = []
        self._starts: list[int] = []
        self._cache: dict[int, TreeBlock] = {}
        for chunk in parse_sys_chunks(self.sb.sys_chunk_array):
            self._add_chunk(chunk)
        chunk_tree = Tree(CHUNK_TREE_OBJECTID, self.sb.chunk_root, self.sb.chunk_root_level)
        first = FIRST_CHUNK_TREE_OBJECTID
        lo, hi = (first, CHUNK_ITEM_KEY, 0), (first, CHUNK_ITEM_KEY, MAX_KEY)
        for key, data in list(self.items(chunk_tree, lo, hi)):
            self._add_chunk(parse_chunk(key[2], data)[0])
        self.root_tree = Tree(1, self.sb.root, self.sb.root_level)
        self._subvolumes: list[Subvolume] | None = None

    # -- logical addresses ---------------------------------------------------------------------
    def _add_chunk(self, chunk: Chunk) -> None:
        i = bisect.bisect_left(self._starts, chunk.logical)
        if i < len(self._starts) and self._starts[i] == chunk.logical:
            return  # the chunk tree repeats what sys_chunk_array holds
        self._starts.insert(i, chunk.logical)
        self.chunks.insert(i, chunk)

    def _map(self, logical: int) -> tuple[int, int]:
        """(physical offset on this device, contiguous bytes from there) of a logical address."""
        i = bisect.bisect_right(self._starts, logical) - 1
        if i < 0 or logical >= self.chunks[i].logical + self.chunks[i].length:
            raise BtrfsError(f"Btrfs logical address {logical} is in no chunk")
        chunk = self.chunks[i]
        off = logical - chunk.logical
        left = chunk.length - off
        if chunk.type & (RAID10 | RAID5 | RAID6):
            raise BtrfsError("Btrfs RAID10/RAID5/RAID6 chunks are not read")
        if chunk.type & RAID0:
            n = len(chunk.stripes)
            unit, within = divmod(off, chunk.stripe_len)
            devid, start = chunk.stripes[unit % n]
            if devid != self.sb.devid:
                raise BtrfsError(f"Btrfs RAID0 stripe on device {devid}, not in this image")
            return start + (unit // n) * chunk.stripe_len + within, min(left, chunk.stripe_len - within)
        for devid, start in chunk.stripes:  # single, or a mirror of which any copy will do
            if devid == self.sb.devid:
                return start + off, left
            if not chunk.type & MIRRORED:
                break
        raise BtrfsError(f"Btrfs chunk at logical {chunk.logical} is on device(s) "
                         f"{sorted({d for d, _ in chunk.stripes})}, not in this image "
                         f"(device {self.sb.devid} of {self.sb.num_devices})")

    def read(self, logical: int, size: int) -> bytes:
        """size bytes at a logical address."""
        parts = []
        while size > 0:
            phys, run = self._map(logical)
            n = min(run, size)
            got = self.dev.pread(phys, n)
            if len(got) != n:
                raise BtrfsError(f"Btrfs data at {phys} is past the end of the volume")
            parts.append(got)
            logical, size = logical + n, size - n
        return b"".join(parts)

    # -- trees ---------------------------------------------------------------------------------
    def block(self, bytenr: int, level: int) -> TreeBlock:
        cached = self._cache.get(bytenr)
        if cached is not None:
            if cached.level != level:
                raise BtrfsError(f"Btrfs tree block at {bytenr} is level {cached.level}, "
                                 f"named as level {level}")
            return cached
        raw = self.read(bytenr, self.sb.nodesize)
        csum, fsid, at, _flags, _chunk_uuid, _gen, _owner, nritems, got_level = HEADER.unpack_from(raw)
        if csum != checksum(self.sb.csum_type, memoryview(raw)[32:]):
            raise BtrfsError(f"Btrfs tree block at {bytenr}: checksum mismatch")
        if at != bytenr or fsid != self.sb.tree_fsid or got_level != level:
            raise BtrfsError(f"Btrfs tree block at {bytenr} claims to be at {at}, level {got_level} "
                             f"(expected level {level}) or another filesystem's")
        block = TreeBlock(raw, level, nritems)
        if len(self._cache) >= CACHE_NODES:
            self._cache.clear()
        self._cache[bytenr] = block
        return block

    def items(self, tree: Tree, lo: Key, hi: Key) -> Iterator[tuple[Key, bytes]]:
        """The items of tree with lo <= key <= hi, in key order."""
        if tree.level > MAX_LEVEL:
            raise BtrfsError(f"Btrfs tree {tree.id} has level {tree.level}")
        yield from self._walk(tree.bytenr, tree.level, lo, hi)

    def _walk(self, bytenr: int, level: int, lo: Key, hi: Key) -> Iterator[tuple[Key, bytes]]:
        block = self.block(bytenr, level)
        keys = block.keys
        if level == 0:
            i = bisect.bisect_left(keys, lo)
            while i < len(keys) and keys[i] <= hi:
                yield keys[i], block.data(i)
                i += 1
            return
        i = max(0, bisect.bisect_right(keys, lo) - 1)
        while i < len(keys) and keys[i] <= hi:
            yield from self._walk(block.ptrs[i], level - 1, lo, hi)
            i += 1

    def item(self, tree: Tree, key: Key) -> bytes | None:
        for _, data in self.items(tree, key, key):
            return data
        return None

    # -- subvolumes ----------------------------------------------------------------------------
    def tree(self, tree_id: int) -> Tree:
        """A file tree (the top level, 5, or a subvolume or snapshot) from its ROOT_ITEM."""
        found = None
        lo, hi = (tree_id, ROOT_ITEM_KEY, 0), (tree_id, ROOT_ITEM_KEY, MAX_KEY)
        for _, data in self.items(self.root_tree, lo, hi):
            found = data  # snapshots carry their creation transid as the offset: the last one
        if found is None or len(found) < ROOT_ITEM_AT + ROOT_ITEM.size:
            raise BtrfsError(f"Btrfs subvolume {tree_id} has no root item")
        _gen, root_dirid, bytenr, _limit, _used, _snap, flags, _refs, _drop, _dl, level = (
            ROOT_ITEM.unpack_from(found, ROOT_ITEM_AT))
        return Tree(tree_id, bytenr, level, root_dirid, bool(flags & ROOT_SUBVOL_RDONLY))

    def default_subvolume(self) -> int:
        """What a mount without subvol= gets: the root tree directory's "default" entry."""
        key = (ROOT_TREE_DIR_OBJECTID, DIR_ITEM_KEY, name_hash(b"default"))
        data = self.item(self.root_tree, key)
        for name, location in parse_dir_items(data or b""):
            if name == b"default" and location[1] == ROOT_ITEM_KEY:
                return location[0]
        return FS_TREE_OBJECTID

    def subvolumes(self) -> list[Subvolume]:
        """Every subvolume below the top level, with its path, as `btrfs subvolume list` names them."""
        if self._subvolumes is None:
            self._subvolumes = self._list_subvolumes()
        return self._subvolumes

    def _list_subvolumes(self) -> list[Subvolume]:
        refs: dict[int, tuple[int, int, bytes]] = {}  # child -> (parent, dirid, name)
        lo, hi = (0, ROOT_REF_KEY, 0), (MAX_KEY, ROOT_REF_KEY, MAX_KEY)
        for (parent, ktype, child), data in self.items(self.root_tree, lo, hi):
            if ktype == ROOT_REF_KEY and len(data) >= ROOT_REF.size:
                dirid, _seq, name_len = ROOT_REF.unpack_from(data)
                refs[child] = (parent, dirid, data[ROOT_REF.size:ROOT_REF.size + name_len])
        paths: dict[int, str] = {FS_TREE_OBJECTID: ""}

        def path_of(sub: int, depth: int = 0) -> str:
            if sub in paths:
                return paths[sub]
            if sub not in refs or depth > 64:
                raise BtrfsError(f"Btrfs subvolume {sub} is not reachable from the top level")
            parent, dirid, name = refs[sub]
            where = self.dir_path(self.tree(parent), dirid)
            paths[sub] = posixpath.join(path_of(parent, depth + 1), where, _decode(name)).strip("/")
            return paths[sub]

        out = []
        for sub in sorted(refs):
            if sub >= FIRST_FREE_OBJECTID:
                out.append(Subvolume(sub, path_of(sub), self.tree(sub).readonly))
        return out

    def subvolume_path(self, sub: int) -> str:
        """The path of subvolume sub ("" for the top level)."""
        if sub == FS_TREE_OBJECTID:
            return ""
        for s in self.subvolumes():
            if s.id == sub:
                return s.path
        raise BtrfsError(f"Btrfs subvolume {sub} not found")

    def mounted_subvolume(self, options: str) -> int:
        """The subvolume a mount with these options (fstab's, or rootflags=) gets: subvolid=, else
        subvol= (a path from the top level), else the default subvolume; BtrfsError if the
        option names none."""
        opts = dict(o.partition("=")[::2] for o in options.split(",") if o)
        by_id = by_path = None
        if "subvolid" in opts:
            if not re.fullmatch(r"[0-9]{1,20}", opts["subvolid"]):
                raise BtrfsError(f"subvolid={opts['subvolid']} is not a number")
            by_id = int(opts["subvolid"]) or FS_TREE_OBJECTID  # the kernel: 0 is the top level
            self.tree(by_id)  # it exists
        if "subvol" in opts:
            want = posixpath.normpath("/" + opts["subvol"]).strip("/")
            by_path = FS_TREE_OBJECTID if want == "" else next(
                (s.id for s in self.subvolumes() if s.path == want), None)
            if by_path is None:
                raise BtrfsError(f"subvol={opts['subvol']} names no subvolume")
        if by_id is not None and by_path is not None and by_id != by_path:
            raise BtrfsError(f"subvol={opts['subvol']} and subvolid={opts['subvolid']} name different "
                             "subvolumes (the kernel refuses the mount)")
        return by_id if by_id is not None else by_path if by_path is not None else self.default_subvolume()

    def dir_path(self, tree: Tree, ino: int) -> str:
        """The path of directory ino within its file tree, from INODE_REF back-references."""
        names: list[str] = []
        while ino != tree.root_dirid:
            if len(names) > 4096:
                raise BtrfsError(f"Btrfs directory {ino} of tree {tree.id} loops")
            ref = next(self.items(tree, (ino, INODE_REF_KEY, 0), (ino, INODE_REF_KEY, MAX_KEY)), None)
            if ref is None or len(ref[1]) < INODE_REF.size:
                raise BtrfsError(f"Btrfs directory {ino} of tree {tree.id} has no parent")
            (_o, _t, parent), data = ref
            _index, name_len = INODE_REF.unpack_from(data)
            names.append(_decode(data[INODE_REF.size:INODE_REF.size + name_len]))
            ino = parent
        return "/".join(reversed(names))


def _decode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def read_uuid(dev: Readable) -> tuple[str, str] | None:
    """(UUID, label) of a Btrfs superblock without checking it (as blkid shows a damaged one, so
    fstab still resolves and opening it says what is wrong); None if there is none."""
    raw = dev.pread(SUPER_OFFSET, SUPER_SIZE)
    if raw[64:72] != MAGIC:
        return None
    return str(uuid.UUID(bytes=raw[32:48])), raw[0x12B:0x22B].split(b"\0")[0].decode(errors="replace")
