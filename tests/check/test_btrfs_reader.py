"""lukspack's Btrfs reader against filesystems the real mkfs.btrfs (btrfs-progs 6.11 or later:
--rootdir, --subvol, --compress) writes: every file, directory and link of the source tree reads
back byte for byte, through each compression, checksum type and node size; subvolumes, the
default subvolume and the superblock agree with `btrfs inspect-internal`; damage is an error."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from lukspack.check.btrfs import Btrfs, BtrfsError, BtrfsFS
from lukspack.check.btrfs.ondisk import EXTENT_DATA_KEY, FILE_EXTENT
from tests.check.test_partitions import flip
from tests.helpers import require


@pytest.fixture(autouse=True)
def _tools() -> None:
    require("mkfs.btrfs")  # never skipped: scripts/test.sh installs it


COMPRESSION_CODE = {"zlib": 1, "lzo": 2, "zstd": 3}


class Dev:
    """A filesystem image as the reader's device, counting what it reads."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.bytes = 0

    def pread(self, offset: int, size: int) -> bytes:
        self.bytes += size
        return os.pread(self.fd, size, offset)


def tree(root: Path, many: int = 50) -> Path:
    """A source tree with what a reader can get wrong: inline and regular extents, compressible
    and incompressible data, a hole, links of both kinds, a hard link, odd names, a big directory."""
    (root / "etc/sub/deeper").mkdir(parents=True)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "empty").write_bytes(b"")
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(60000))
    (root / "text.txt").write_text(text)  # ~3.4 MB: many 128 KiB compressed extents
    (root / "random.bin").write_bytes(os.urandom(700_000))  # not compressible: stored plain
    with open(root / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(9 << 20)
        f.write(b"tail")
    (root / "inline-2k").write_bytes(bytes(range(256)) * 8)
    os.symlink("../text.txt", root / "etc/rel-link")
    os.symlink("/etc/hosts", root / "etc/sub/abs-link")
    os.link(root / "etc/hosts", root / "etc/hosts.hard")
    (root / "etc/sub/deeper/name with spaces ünï").write_text("odd name\n")
    big = root / "big-dir"
    big.mkdir()
    for i in range(many):
        (big / f"file-{i:05d}").write_text(f"{i}\n")
    return root


def mkfs(src: Path, out: Path, *opts: str, size_mib: int = 256) -> Path:
    with open(out, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.btrfs", "-q", "-f", "--rootdir", str(src), *opts, str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def compare(node, src: Path) -> int:  # noqa: ANN001 - a BtrfsNode
    """Assert node is src (recursively); the number of entries compared."""
    want = sorted(os.listdir(src))
    assert sorted(node.names()) == want, src
    n = 0
    for name in want:
        p = src / name
        child = node.child(name)
        assert child is not None, p
        n += 1
        if p.is_symlink():
            assert child.is_link() and child.link_target() == os.readlink(p), p
        elif p.is_dir():
            assert child.is_dir(), p
            n += compare(child, p)
        else:
            assert child.is_file() and child.size == p.stat().st_size, p
            assert child.read() == p.read_bytes(), p
    return n


def extent_compressions(fs: BtrfsFS, path: str) -> set[int]:
    node = fs.lookup(path)
    items = fs.btrfs.items(node.tree, (node.ino, EXTENT_DATA_KEY, 0), (node.ino, EXTENT_DATA_KEY, 1 << 63))
    return {FILE_EXTENT.unpack_from(data)[2] for _, data in items}


@pytest.mark.parametrize("compression", ["no", "zlib", "lzo", "zstd"])
def test_every_file_reads_back(tmp_path: Path, compression: str) -> None:
    src = tree(tmp_path / "src")
    img = mkfs(src, tmp_path / "fs.img", "--compress", compression)
    fs = BtrfsFS(None, Btrfs(Dev(img)))
    assert compare(fs.root, src) > 60
    comps = extent_compressions(fs, "/text.txt")
    assert comps == ({0} if compression == "no" else {COMPRESSION_CODE[compression]})
    assert extent_compressions(fs, "/random.bin") == {0}  # btrfs keeps what does not shrink plain
    sparse = fs.lookup("/sparse")
    assert sparse.read(8, offset=(9 << 20) - 4) == b"\0\0\0\0tail"  # a window across the hole
    window = (src / "text.txt").read_bytes()[1_000_003:1_000_023]
    assert fs.lookup("/text.txt").read(20, offset=1_000_003) == window


@pytest.mark.parametrize("csum", ["crc32c", "xxhash", "sha256", "blake2"])
def test_checksum_types_and_deep_trees(tmp_path: Path, csum: str) -> None:
    # 4 KiB nodes and 3000 entries: the file tree is more than two levels deep
    src = tree(tmp_path / "src", many=3000)
    img = mkfs(src, tmp_path / "fs.img", "--csum", csum, "--nodesize", "4096", "--compress", "zstd")
    btrfs = Btrfs(Dev(img))
    assert btrfs.sb.csum_type == ["crc32c", "xxhash", "sha256", "blake2"].index(csum)
    fs = BtrfsFS(None, btrfs)
    assert fs.root.tree.level >= 2
    assert compare(fs.root, src) > 3000


def dump(kind: str, img: Path) -> str:
    tree_opts = ["-t", "root"] if kind == "dump-tree" else []
    return subprocess.run(["btrfs", "inspect-internal", kind, *tree_opts, str(img)],
                          capture_output=True, text=True, check=True).stdout


def test_superblock_matches_dump_super(tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    img = mkfs(src, tmp_path / "fs.img", "-L", "lukspack-test", "-U", "3b9c2d4e-5f60-4a71-8b82-9c3d4e5f6a7b")
    sb = Btrfs(Dev(img)).sb
    text = dump("dump-super", img)

    def field(name: str) -> str:
        return re.search(rf"^{name}\s+(\S*)", text, re.M).group(1)
    assert sb.uuid == field("fsid") == "3b9c2d4e-5f60-4a71-8b82-9c3d4e5f6a7b"
    assert sb.label == field("label") == "lukspack-test"
    for name in ("generation", "root", "chunk_root", "nodesize", "sectorsize", "total_bytes", "num_devices"):
        assert getattr(sb, name) == int(field(name)), name


def test_subvolumes_match_the_root_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in ("root/etc", "root/var/nested/etc", "home/user", "snap"):
        (src / d).mkdir(parents=True)
    (src / "root/etc/hostname").write_text("in root\n")
    (src / "root/var/nested/etc/hostname").write_text("in nested\n")
    (src / "home/user/.profile").write_text("in home\n")
    img = mkfs(src, tmp_path / "fs.img", "-u", "rw:root", "-u", "rw:home", "-u", "ro:snap",
               "-u", "rw:root/var/nested", "--compress", "lzo")
    btrfs = Btrfs(Dev(img))
    subs = {s.path: s for s in btrfs.subvolumes()}
    assert set(subs) == {"root", "home", "snap", "root/var/nested"}
    assert subs["snap"].readonly and not subs["root"].readonly
    # ids and names as btrfs-progs' own dump of the root tree lists its ROOT_REF items
    refs = re.findall(r"key \((\w+) ROOT_REF (\d+)\).*?\n\s+root ref key dirid \d+ sequence \d+ name (\S+)",
                      dump("dump-tree", img))
    assert {(5 if p == "FS_TREE" else int(p), int(c), n) for p, c, n in refs} == {
        (5, subs["root"].id, "root"), (5, subs["home"].id, "home"), (5, subs["snap"].id, "snap"),
        (subs["root"].id, subs["root/var/nested"].id, "nested")}
    assert btrfs.default_subvolume() == 5
    top = BtrfsFS(None, btrfs)
    # the path crosses from the top level into root, then into root/var/nested
    assert top.lookup("/root/var/nested/etc/hostname").read() == b"in nested\n"
    root = BtrfsFS(None, btrfs, subs["root"].id)
    assert root.lookup("/etc/hostname").read() == b"in root\n"
    assert root.description == f"subvolume root (id {subs['root'].id})"
    assert btrfs.mounted_subvolume("defaults,subvol=/home,compress=zstd:1") == subs["home"].id
    assert btrfs.mounted_subvolume(f"subvolid={subs['snap'].id}") == subs["snap"].id
    assert btrfs.mounted_subvolume("subvol=/") == 5
    with pytest.raises(BtrfsError, match="names no subvolume"):
        btrfs.mounted_subvolume("subvol=@missing")
    assert btrfs.mounted_subvolume("subvolid=0") == 5  # the kernel: 0 is the top level
    with pytest.raises(BtrfsError, match="not a number"):
        btrfs.mounted_subvolume("subvolid=\u00b2")  # str.isdigit() says yes; int() would fail
    with pytest.raises(BtrfsError, match="name different subvolumes"):
        btrfs.mounted_subvolume(f"subvol=home,subvolid={subs['snap'].id}")
    assert btrfs.mounted_subvolume(f"subvol=home,subvolid={subs['home'].id}") == subs["home"].id


def test_default_subvolume(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "@/etc").mkdir(parents=True)
    (src / "@/etc/hostname").write_text("default\n")
    img = mkfs(src, tmp_path / "fs.img", "-u", "default:@")
    btrfs = Btrfs(Dev(img))
    (sub,) = btrfs.subvolumes()
    assert btrfs.default_subvolume() == sub.id and sub.path == "@"
    assert BtrfsFS(None, btrfs).lookup("/etc/hostname").read() == b"default\n"
    assert btrfs.mounted_subvolume("defaults") == sub.id


def test_a_lookup_reads_only_the_blocks_it_needs(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", many=3000)
    img = mkfs(src, tmp_path / "fs.img", size_mib=512)
    dev = Dev(img)
    fs = BtrfsFS(None, Btrfs(dev))
    before = dev.bytes
    assert fs.lookup("/big-dir/file-02999").read() == b"2999\n"
    assert dev.bytes - before <= 8 * 16384  # a few tree blocks of a 512 MiB filesystem


def test_damage_is_an_error(tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    img = mkfs(src, tmp_path / "fs.img")
    good = Btrfs(Dev(img))
    root_block = good._map(good.sb.root)[0]
    flip(img, root_block + 200)  # inside the root tree's root block
    with pytest.raises(BtrfsError, match="checksum mismatch"):
        BtrfsFS(None, Btrfs(Dev(img)))
    flip(img, root_block + 200)
    flip(img, 0x10000 + 0x90)  # the superblock's sectorsize
    with pytest.raises(BtrfsError, match="superblock checksum"):
        Btrfs(Dev(img))



class Patched(Dev):
    """The image with some bytes replaced, without copying it."""

    def __init__(self, path: Path, patches: dict[int, bytes]) -> None:
        super().__init__(path)
        self.patches = patches

    def pread(self, offset: int, size: int) -> bytes:
        data = bytearray(super().pread(offset, size))
        for at, new in self.patches.items():
            lo, hi = max(at, offset), min(at + len(new), offset + len(data))
            if lo < hi:
                data[lo - offset:hi - offset] = new[lo - at:hi - at]
        return bytes(data)


def walk_all(fs: BtrfsFS, limit: int = 400) -> int:
    """Visit what the reader can reach (bounded: a damaged tree may name a directory twice)."""
    seen, stack = 0, [(fs.root, 0)]
    while stack and seen < limit:
        node, depth = stack.pop()
        seen += 1
        if node.is_dir() and depth < 12:
            for name in node.names():
                child = node.child(name)
                if child is not None:
                    stack.append((child, depth + 1))
        elif node.is_link():
            node.link_target()
        elif node.is_file():
            node.read(1 << 20)
    return seen


def test_damage_the_checksums_do_not_catch(tmp_path: Path) -> None:
    """Found in review: a root item naming an already-read block at another level, and sizes
    that would make a read or a decompression unbounded."""
    import struct
    import zlib

    from lukspack.check.btrfs.files import decompress
    from lukspack.check.btrfs.ondisk import checksum

    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/hosts").write_text("127.0.0.1 localhost\n")
    img = mkfs(src, tmp_path / "fs.img", size_mib=128)
    btrfs = Btrfs(Dev(img))
    assert btrfs.root_tree.level == 0
    leaf = btrfs.block(btrfs.root_tree.bytenr, 0)
    at, _ = leaf.spans[leaf.keys.index((5, 132, 0))]
    raw = bytearray(leaf.raw)
    struct.pack_into("<Q", raw, at + 160 + 16, btrfs.root_tree.bytenr)  # root_item.bytenr: that leaf
    raw[at + 160 + 78] = 1  # root_item.level
    raw[:32] = checksum(btrfs.sb.csum_type, bytes(raw[32:]))
    damaged = Btrfs(Patched(img, {btrfs._map(btrfs.root_tree.bytenr)[0]: bytes(raw)}))
    assert damaged.tree(5).level == 1  # reading the root item put the leaf in the cache
    with pytest.raises(BtrfsError, match="is level 0, named as level 1"):
        damaged.block(damaged.root_tree.bytenr, 1)
    assert BtrfsFS(None, damaged).lookup("/etc/hosts") is None  # unreadable, as the guest sees it
    with pytest.raises(BtrfsError, match="claims 0 bytes"):
        decompress(1, zlib.compress(b"\0" * (64 << 20)), 0, 4096)  # max_length 0 is "no limit"
    with pytest.raises(BtrfsError, match="claims 1048576 bytes"):
        decompress(3, b"", 1 << 20, 4096)


def test_mutated_metadata_with_valid_checksums_is_refused_cleanly(tmp_path: Path) -> None:
    """Bytes of tree blocks (and the superblock) changed and their checksums recomputed, so the
    parsers, not the checksums, meet the damage: every read returns data or raises BtrfsError
    (an OSError, which the check reports as one WARN line), nothing else."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from lukspack.check.btrfs.ondisk import SUPER_OFFSET, checksum

    src = tree(tmp_path / "src", many=120)
    img = mkfs(src, tmp_path / "fs.img", "--nodesize", "4096", "--compress", "lzo", "-u", "rw:etc")
    base = Btrfs(Dev(img))
    walk_all(BtrfsFS(None, base), limit=10_000)
    blocks = sorted({base._map(b)[0] for b in base._cache}) + [SUPER_OFFSET]  # all a walk reads
    nodesize = base.sb.nodesize
    boundary = [0, 1, 0xFF, 0xFFFF, 0xFFFFFFFF, (1 << 64) - 1, 1 << 63, 4096, 16384, 256]
    outcomes = {"read": 0, "refused": 0}

    examples = int(os.environ.get("LUKSPACK_BTRFS_FUZZ", "120"))  # 3000 pass too (22 s)

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.sampled_from(blocks), st.lists(st.tuples(st.integers(32, nodesize - 8),
                                                      st.sampled_from(boundary) | st.integers(0, 255),
                                                      st.sampled_from([1, 2, 4, 8])), min_size=1, max_size=6))
    def one(block: int, edits: list[tuple[int, int, int]]) -> None:
        size = 4096 if block == SUPER_OFFSET else nodesize
        raw = bytearray(Dev(img).pread(block, size))
        for at, value, width in edits:
            at = min(at, size - width)
            raw[at:at + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
        csum_type = base.sb.csum_type
        raw[:32] = checksum(csum_type, bytes(raw[32:]))
        try:
            walk_all(BtrfsFS(None, Btrfs(Patched(img, {block: bytes(raw)}))))
            outcomes["read"] += 1
        except BtrfsError:
            outcomes["refused"] += 1

    one()
    print(f"{len(blocks)} blocks mutated: {outcomes}")
    assert outcomes["read"] > 0 and outcomes["refused"] > 0, outcomes
