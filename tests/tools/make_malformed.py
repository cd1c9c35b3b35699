"""Build the malformed-input corpus in tests/data/malformed/ (issue 6: hostile inputs).

Each case starts from a small real image made by qemu-img, cryptsetup or lukspack itself, is
damaged in one precise way (checksums are recomputed where the damage is not the checksum), and
is written as `<format>-<what>.<ext>`; images that cannot be small (VHDX regions are whole MiB, LUKS
key slot areas are large) are stored gzipped (`.gz`) and tests decompress them first. MANIFEST.tsv
has one row per file: the file name, the lukspack command to run on it (`info`, `encrypt` or
`verify`, optionally with options such as `--input-format vmdk`) and a substring of the one-line
error it must print. `encrypt` and `verify` runs use KEY (below) as the key file.

    python -m tests.tools.make_malformed            # rewrite tests/data/malformed/
    python -m tests.tools.make_malformed --only-vhdcrypt   # only the encrypted-VHD cases
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "malformed"
KiB, MiB = 1 << 10, 1 << 20
KEY = b"bWFsZm9ybWVkLWNvcnB1cy1rZXktMzItYnl0ZXMhISE="  # a valid DEK: 32 bytes, base64
GZIP_ABOVE = 256 * KiB

sys.path.insert(0, str(ROOT / "src"))
from lukspack.images.crc32c import crc32c_zeroed  # noqa: E402
from lukspack.images.vhd import vhd_checksum  # noqa: E402
from lukspack.images.vhdx import BAT_REGION, FILE_PARAMETERS, METADATA_REGION  # noqa: E402


def run(*cmd: str | Path, cwd: Path | None = None) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True, cwd=cwd)


def be(fmt: str, d: bytearray, at: int, *values: int | bytes) -> None:
    struct.pack_into(">" + fmt, d, at, *values)


def le(fmt: str, d: bytearray, at: int, *values: int | bytes) -> None:
    struct.pack_into("<" + fmt, d, at, *values)


class Corpus:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.rows: list[tuple[str, str, str]] = []
        self.key = work / "key"
        self.key.write_bytes(KEY)

    def raw(self, name: str, size: int, data_at: tuple[int, ...] = (0,)) -> Path:
        p = self.work / name
        with open(p, "wb") as f:
            f.truncate(size)
            for off in data_at:
                f.seek(off)
                f.write(bytes(range(1, 256)) * 16)
        return p

    def add(self, name: str, data: bytes | bytearray, command: str, expect: str) -> None:
        if len(data) > GZIP_ABOVE:
            name += ".gz"
            data = gzip.compress(bytes(data), mtime=0)
        (OUT / name).write_bytes(data)
        self.rows.append((name, command, expect))


# -- VHD ---------------------------------------------------------------------------------------

def vhd_fix(d: bytearray) -> None:
    """Recompute the checksums of both footers and the dynamic header."""
    for at in (0, len(d) - 512):
        if d[at : at + 8] == b"conectix":
            foot = d[at : at + 512]
            be("I", d, at + 64, vhd_checksum(foot, 64))
    dyn = d[512:1536]
    if dyn[:8] == b"cxsparse":
        be("I", d, 512 + 36, vhd_checksum(dyn, 36))


def vhd_cases(c: Corpus) -> None:
    base = c.work / "dyn.vhd"
    run("qemu-img", "create", "-f", "vpc", base, "4M")
    fixed = c.work / "fixed.vhd"
    run("qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
        c.raw("v.raw", 64 * KiB), fixed)
    orig = bytearray(base.read_bytes())
    table = struct.unpack_from(">Q", orig, 512 + 16)[0]

    def case(what: str, mutate: Callable[[bytearray], None], expect: str, fix: bool = True,
             command: str = "info", src: bytearray = orig) -> None:
        d = bytearray(src)
        mutate(d)
        if fix:
            vhd_fix(d)
        c.add(f"vhd-{what}.vhd", d, command, expect)

    def both_footers(d: bytearray) -> None:
        for at in (0, len(d) - 512):
            d[at + 64] ^= 0x55

    case("footer-checksum", both_footers, "is a damaged VHD: its footer checksum", fix=False)
    case("dyn-header-checksum", lambda d: d.__setitem__(512 + 36, d[512 + 36] ^ 1),
         "VHD dynamic header checksum", fix=False)
    case("dyn-header-cookie", lambda d: d.__setitem__(slice(512, 520), b"cxspars!"),
         "dynamic header cookie")
    case("bat-past-end", lambda d: be("I", d, table, 0x00F00000),
         "VHD block 0 points past the end of the file")
    case("bat-into-metadata", lambda d: be("I", d, table, 1), "VHD block 0 at offset 512 overlaps")
    case("block-size-not-pow2", lambda d: be("I", d, 512 + 32, 3 * MiB),
         "VHD block_size 3145728 is not a power of two")
    case("block-size-zero", lambda d: be("I", d, 512 + 32, 0), "VHD block_size 0")
    case("bat-too-small", lambda d: be("I", d, 512 + 28, 1), "too small for current_size")
    case("bat-entries-absurd", lambda d: be("I", d, 512 + 28, 0xFFFFFFFF),
         "VHD max_table_entries 4294967295")
    case("bat-table-past-end", lambda d: be("Q", d, 512 + 16, 1 << 40), "VHD BAT (offset")

    def size(v: int) -> Callable[[bytearray], None]:
        def mutate(d: bytearray) -> None:
            for at in (0, len(d) - 512):
                be("Q", d, at + 48, v)
        return mutate

    case("current-size-absurd", size(1 << 62), "VHD current_size 4611686018427387904")
    case("current-size-unaligned", size(4 * MiB + 1), "VHD current_size 4194305")
    case("fixed-size-absurd", size(1 << 62), "VHD current_size 4611686018427387904",
         src=bytearray(fixed.read_bytes()))
    case("fixed-truncated", size(1 * MiB), "fixed VHD is truncated",
         src=bytearray(fixed.read_bytes()))

    def disk_type(v: int) -> Callable[[bytearray], None]:
        def mutate(d: bytearray) -> None:
            for at in (0, len(d) - 512):
                be("I", d, at + 60, v)
        return mutate

    case("differencing", disk_type(4), "differencing VHDs")
    case("disk-type-bad", disk_type(7), "VHD disk_type 7")
    case("data-offset-past-end", lambda d: [be("Q", d, at + 16, 1 << 50) for at in
                                            (0, len(d) - 512)],
         "VHD data_offset 1125899906842624 points past the end")
    case("truncated", lambda d: d.__delitem__(slice(1024, None)),
         "VHD data_offset 512 points past the end", fix=False)
    case("footer-only", lambda d: d.__delitem__(slice(0, len(d) - 512)),
         "VHD data_offset 512 points past the end", fix=False)
    c.add("vhd-zero-length.vhd", b"", "info --input-format vhd", "is empty (0 bytes)")
    c.add("vhd-no-footer.vhd", bytes(4096), "info --input-format vhd", "no valid VHD footer")


# -- encrypted VHD (vhd-util / blktap) --------------------------------------------------------------

def vhd_crypt_cases(c: Corpus) -> None:
    """An empty 4 MiB encrypted VHD as lukspack's EncryptedVhd writes it (the layout vhd-util
    writes: footer copy, header, BAT, batmap header with the key hash, batmap, footer), damaged.
    `keyhash IMAGE` parses it as `vhd-util key -p` does."""
    from lukspack.containers.encrypted_vhd import EncryptedVhd

    v = EncryptedVhd(4 * MiB, timestamp=1, unique_id=bytes(range(16)))
    key = v.new_volume_key(KEY)
    fin = v.finish(v.build_key_material(key, KEY, None))
    orig = bytearray(fin.prefix + b"".join(data for _, data in fin.trailer))
    hdr = v.layout.batmap_header_offset

    def case(what: str, mutate: Callable[[bytearray], None], expect: str,
             command: str = "keyhash") -> None:
        d = bytearray(orig)
        mutate(d)
        vhd_fix(d)
        c.add(f"vhdcrypt-{what}.vhd", d, command, expect)

    def creator(d: bytearray) -> None:
        for at in (0, len(d) - 512):
            d[at + 28 : at + 32] = b"qemu"

    case("batmap-checksum", lambda d: be("I", d, hdr + 24, 0x12345678),
         "batmap checksum 0x12345678 is wrong", "info")
    case("keyhash-zero-hash", lambda d: d.__setitem__(slice(hdr + 62, hdr + 94), bytes(32)),
         "keyhash flag is 1 but the key hash is all zeros", "verify")
    case("batmap-past-end", lambda d: be("Q", d, hdr + 8, 1 << 40), "is past the end of the file",
         "info")
    case("creator-not-tap", creator, "creator_application 'qemu' is not 'tap'", "verify")
    case("as-encrypt-source", lambda d: None, "is already an encrypted VHD", "encrypt")
    case("batmap-cookie", lambda d: d.__setitem__(slice(hdr, hdr + 8), b"tdbatmaq"),
         "not 'tdbatmap'")
    case("keyhash-flag-bad", lambda d: d.__setitem__(hdr + 29, 7), "keyhash flag is 7")
    case("batmap-version", lambda d: be("I", d, hdr + 20, 0x00020000),
         "batmap_version 0x00020000")
    case("batmap-size-zero", lambda d: be("I", d, hdr + 16, 0), "batmap_size 0 sectors")
    case("not-encrypted", lambda d: d.__setitem__(hdr + 29, 0), "keyhash flag is 0")


# -- qcow2 -------------------------------------------------------------------------------------

def qcow2_cases(c: Corpus) -> None:
    src = c.raw("q.raw", 8 * MiB, (0, 3 * MiB))
    base = c.work / "base.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", src, base)
    orig = bytearray(base.read_bytes())
    l1 = struct.unpack_from(">Q", orig, 40)[0]
    l2 = struct.unpack_from(">Q", orig, l1)[0] & 0x00FFFFFFFFFFFE00
    rt = struct.unpack_from(">Q", orig, 48)[0]
    data0 = struct.unpack_from(">Q", orig, l2)[0] & 0x00FFFFFFFFFFFE00
    assert data0, "the first guest cluster holds data"

    def case(what: str, mutate: Callable[[bytearray], None], expect: str,
             command: str = "info") -> None:
        d = bytearray(orig)
        mutate(d)
        c.add(f"qcow2-{what}.qcow2", d, command, expect)

    case("bad-magic", lambda d: d.__setitem__(slice(0, 4), b"QFI\x00"),
         "not a qcow2 image (magic", "info --input-format qcow2")
    case("version-1", lambda d: be("I", d, 4, 1),  # qemu probes it as qcow (version 1)
         "is a qcow (version 1) image (qemu-img format qcow)")
    case("version-4", lambda d: be("I", d, 4, 4), "qcow2 version 4")
    case("cluster-bits-8", lambda d: be("I", d, 20, 8), "qcow2 cluster_bits 8")
    case("cluster-bits-31", lambda d: be("I", d, 20, 31), "qcow2 cluster_bits 31")
    case("l1-table-past-end", lambda d: be("Q", d, 40, 1 << 40), "past the end of the file")
    case("l1-table-unaligned", lambda d: be("Q", d, 40, l1 + 8), "l1_table_offset")
    case("l2-past-end", lambda d: be("Q", d, l1, (1 << 63) | (1 << 40)),
         "L2 table offset 0x10000000000 of L1 entry 0 is past the end")
    case("l2-into-header", lambda d: be("Q", d, l1, (1 << 63) | 512),
         "not aligned to the cluster size")
    case("l2-into-refcount-table", lambda d: be("Q", d, l1, (1 << 63) | rt),
         "of L1 entry 0 overlaps the refcount table")
    case("l2-into-l1", lambda d: be("Q", d, l1, (1 << 63) | l1),
         "overlaps the header or the L1 table")
    case("l2-unaligned", lambda d: be("Q", d, l1, (1 << 63) | (l2 + 512)),
         "not aligned to the cluster size")
    case("data-past-end", lambda d: be("Q", d, l2, (1 << 63) | (1 << 40)),
         "data cluster offset 0x10000000000", "encrypt")
    case("data-into-l1-table", lambda d: be("Q", d, l2, (1 << 63) | l1),
         "of guest cluster 0 (L2 entry 0 of L1 entry 0) overlaps the L1 table", "encrypt")
    case("data-into-refcount-table", lambda d: be("Q", d, l2, (1 << 63) | rt),
         "overlaps the refcount table", "encrypt")
    case("data-into-header-compressed", lambda d: be("Q", d, l2, (1 << 62) | 100),
         "points outside the file", "encrypt")
    case("size-absurd", lambda d: be("Q", d, 24, 1 << 62), "qcow2 size 4611686018427387904")
    case("l1-too-small", lambda d: be("I", d, 36, 1), "qcow2 l1_size 1 is too small")
    case("l1-size-huge", lambda d: (be("I", d, 36, 0x7FFFFFFF), be("Q", d, 24, 1 << 50)),
         "qcow2 l1_size 2147483647")
    case("refcount-order-7", lambda d: be("I", d, 96, 7), "refcount_order 7")
    case("header-length-odd", lambda d: be("I", d, 100, 105), "header_length 105")
    case("corrupt-bit", lambda d: be("Q", d, 72, 2), "marked corrupt")
    case("crypt-method-aes", lambda d: be("I", d, 32, 1), "legacy AES")
    case("extension-overflow",
         lambda d: be("II", d, struct.unpack_from(">I", d, 100)[0], 0x6803F857, 70000),
         "header extension 0x6803f857")
    case("truncated-data", lambda d: d.__delitem__(slice(data0, None)), "past the end",
         "encrypt")
    case("truncated-header", lambda d: d.__delitem__(slice(48, None)), "qcow2 header truncated")

    backing = c.work / "child.qcow2"
    run("qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=4096", "-u", "-b",
        "parent-image.qcow2", "-F", "qcow2", backing, "1M")
    c.add("qcow2-backing-file.qcow2", backing.read_bytes(), "info", "parent-image.qcow2")
    c.add("qcow2-backing-file-encrypt.qcow2", backing.read_bytes(), "encrypt",
          "parent-image.qcow2")

    enc = c.work / "enc.qcow2"
    run("qemu-img", "create", "-f", "qcow2", "--object", f"secret,id=s0,file={c.key}", "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,cluster_size=4096",
        enc, "1M")
    d = bytearray(enc.read_bytes())
    pos = struct.unpack_from(">I", d, 100)[0]
    while True:  # zero the LUKS key material (random bytes) in the crypto header clusters
        kind, n = struct.unpack_from(">II", d, pos)
        if kind in (0, 0x0537BE77):
            break
        pos += 8 + -(-n // 8) * 8
    assert kind, "qemu-img wrote a crypto header extension"
    off, length = struct.unpack_from(">QQ", d, pos + 8)
    d[off + 4096 : off + length] = bytes(length - 4096)
    c.add("qcow2-encrypted-input.qcow2", d, "encrypt", "is an encrypted qcow2")
    c.add("qcow2-zero-length.qcow2", b"", "info --input-format qcow2", "is empty (0 bytes)")


# -- VMDK --------------------------------------------------------------------------------------

def vmdk_cases(c: Corpus) -> None:
    base = c.work / "base.vmdk"
    run("qemu-img", "create", "-f", "vmdk", "-o", "subformat=monolithicSparse", base, "1M")
    orig = bytearray(base.read_bytes())
    gd = struct.unpack_from("<Q", orig, 56)[0] * 512
    rgd = struct.unpack_from("<Q", orig, 48)[0] * 512
    gt = struct.unpack_from("<I", orig, gd)[0] * 512

    def case(what: str, mutate: Callable[[bytearray], None], expect: str,
             command: str = "info") -> None:
        d = bytearray(orig)
        mutate(d)
        c.add(f"vmdk-{what}.vmdk", d, command, expect)

    case("bad-magic", lambda d: d.__setitem__(slice(0, 4), b"KDMX"), "not a VMDK (magic",
         "info --input-format vmdk")
    case("version-9", lambda d: le("I", d, 4, 9), "version 9")
    case("grain-size-not-pow2", lambda d: le("Q", d, 20, 3), "VMDK grainSize 3 sectors")
    case("grain-size-zero", lambda d: le("Q", d, 20, 0), "VMDK grainSize 0 sectors")
    case("gtes-zero", lambda d: le("I", d, 44, 0), "VMDK numGTEsPerGT 0")
    case("capacity-absurd", lambda d: le("Q", d, 12, 1 << 60), "VMDK capacity 1152921504606846976")
    case("gd-past-end", lambda d: (le("Q", d, 56, 1 << 30), le("Q", d, 48, 1 << 30)),
         "VMDK grain directory")
    case("gt-past-end", lambda d: (le("I", d, gd, 1 << 30), le("I", d, rgd, 1 << 30)),
         "VMDK grain table 0 at sector 1073741824 is past the end")
    case("gte-past-end", lambda d: (le("I", d, gt, 1 << 30), le("I", d, gt + 4, 1 << 30)),
         "VMDK grain 0 at sector 1073741824", "encrypt")
    case("compress-unknown", lambda d: le("H", d, 77, 9), "compressAlgorithm 9")
    case("descriptor-past-end", lambda d: le("Q", d, 28, 1 << 40), "VMDK embedded descriptor")
    case("truncated", lambda d: d.__delitem__(slice(gd + 8, None)), "past the end")

    child = c.work / "child.vmdk"
    run("qemu-img", "create", "-f", "vmdk", "parent-disk.vmdk", "1M", cwd=c.work)
    run("qemu-img", "create", "-f", "vmdk", "-b", "parent-disk.vmdk", "-F", "vmdk",
        child.name, "1M", cwd=c.work)
    c.add("vmdk-delta-disk.vmdk", child.read_bytes(), "info", "is a VMDK delta disk")
    c.add("vmdk-descriptor-missing-extent.vmdk",
          b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
          b'createType="monolithicFlat"\n\nRW 2048 FLAT "no-such-extent-flat.vmdk" 0\n',
          "info", "no-such-extent-flat.vmdk")
    c.add("vmdk-descriptor-no-extents.vmdk",
          b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
          b'createType="monolithicFlat"\n', "info", "VMDK descriptor lists no extents")
    c.add("vmdk-descriptor-binary.vmdk", b"# Disk DescriptorFile\n\xff\xfe\x00\x01" * 8,
          "info", "is not text")
    c.add("vmdk-zero-length.vmdk", b"", "info --input-format vmdk", "is empty (0 bytes)")


# -- VHDX --------------------------------------------------------------------------------------

def vhdx_fix(d: bytearray) -> None:
    for at in (64 * KiB, 128 * KiB):
        if d[at : at + 4] == b"head":
            le("I", d, at + 4, crc32c_zeroed(d[at : at + 4 * KiB], 4))
    for at in (192 * KiB, 256 * KiB):
        if d[at : at + 4] == b"regi":
            le("I", d, at + 4, crc32c_zeroed(d[at : at + 64 * KiB], 4))


def vhdx_cases(c: Corpus) -> None:
    base = c.work / "base.vhdx"
    run("qemu-img", "create", "-f", "vhdx", "-o", "log_size=1M,block_size=1M", base, "4M")
    orig = bytearray(base.read_bytes())
    regions = {}  # region GUID: (offset of its entry in the region table, region offset)
    for k in range(struct.unpack_from("<I", orig, 192 * KiB + 8)[0]):
        at = 192 * KiB + 16 + 32 * k
        regions[bytes(orig[at : at + 16])] = (at - 192 * KiB, struct.unpack_from("<Q", orig, at + 16)[0])
    meta_entry, meta = regions[METADATA_REGION]
    bat_entry, bat = regions[BAT_REGION]
    file_params = None
    for k in range(struct.unpack_from("<H", orig, meta + 10)[0]):
        item, off = struct.unpack_from("<16sI", orig, meta + 32 + 32 * k)
        if item == FILE_PARAMETERS:
            file_params = meta + off
    assert file_params is not None

    def case(what: str, mutate: Callable[[bytearray], None], expect: str, fix: bool = True,
             command: str = "info") -> None:
        d = bytearray(orig)
        mutate(d)
        if fix:
            vhdx_fix(d)
        c.add(f"vhdx-{what}.vhdx", d, command, expect)

    case("bad-signature", lambda d: d.__setitem__(slice(0, 8), b"vhdxfil!"),
         "not a VHDX (file type identifier", command="info --input-format vhdx")

    def flip(*offsets: int) -> Callable[[bytearray], None]:
        def mutate(d: bytearray) -> None:
            for at in offsets:
                d[at + 100] ^= 1
        return mutate

    case("headers-bad-crc", flip(64 * KiB, 128 * KiB), "no valid VHDX header", fix=False)
    case("region-tables-bad-crc", flip(192 * KiB, 256 * KiB), "no valid VHDX region table",
         fix=False)
    case("region-unaligned", lambda d: [le("Q", d, at + meta_entry + 16, meta + 4096)
                                        for at in (192 * KiB, 256 * KiB)],
         "is not whole MiB inside the file")
    case("regions-overlap", lambda d: [le("Q", d, at + bat_entry + 16, meta)
                                       for at in (192 * KiB, 256 * KiB)], "overlap")
    case("metadata-signature", lambda d: d.__setitem__(slice(meta, meta + 8), b"metadat!"),
         "VHDX metadata table signature")
    case("block-size-not-pow2", lambda d: le("I", d, file_params, 3 * MiB),
         "VHDX block size 3145728 is not a power of two")
    case("differencing", lambda d: le("I", d, file_params + 4, 2), "is a differencing VHDX")
    case("bat-past-end", lambda d: le("Q", d, bat, (1 << 40) | 6),
         "VHDX block 0 at offset 1099511627776 is outside the file")
    case("bat-into-header", lambda d: le("Q", d, bat, 6), "VHDX block 0 at offset 0")
    case("bat-partially-present", lambda d: le("Q", d, bat, (4 << 20) | 7), "PARTIALLY_PRESENT")
    case("bat-bad-state", lambda d: le("Q", d, bat, 4), "invalid state 4")
    case("truncated", lambda d: d.__delitem__(slice(3 * MiB + 4096, None)),
         "is not whole MiB inside the file")
    c.add("vhdx-zero-length.vhdx", b"", "info --input-format vhdx", "is empty (0 bytes)")


# -- LUKS1 -------------------------------------------------------------------------------------

SLOT0 = 208  # the first key slot block; each is 48 bytes


def luks1_cases(c: Corpus) -> None:
    img = c.work / "l1.img"
    with open(img, "wb") as f:
        f.truncate(3 * MiB)
    run("cryptsetup", "luksFormat", "--type", "luks1", "--batch-mode", "--key-file", c.key,
        "--pbkdf-force-iterations", "1000", img)
    run("cryptsetup", "luksAddKey", "--batch-mode", "--key-file", c.key,
        "--pbkdf-force-iterations", "1000", img, c.key)
    orig = bytearray(img.read_bytes())
    # cryptsetup fills all eight key slot areas with random bytes; keep slot 0's material (which
    # the cases that get as far as unlocking read), zero the rest so the files compress
    slot0 = struct.unpack_from(">I", orig, SLOT0 + 40)[0] * 512
    orig[slot0 + 512 * -(-64 * 4000 // 512) : 2 * MiB] = bytes(2 * MiB - slot0 - 256000)

    def case(what: str, mutate: Callable[[bytearray], None], expect: str,
             command: str = "verify", material: bool = False) -> None:
        d = bytearray(orig)
        if not material:  # refused while parsing the header: the key material is not read
            d[4096 : 2 * MiB] = bytes(2 * MiB - 4096)
        mutate(d)
        c.add(f"luks1-{what}.img", d, command, expect)

    case("bad-magic", lambda d: d.__setitem__(slice(0, 6), b"LUKS\xba\xbf"), "not a LUKS")
    case("version-2-no-json", lambda d: be("H", d, 6, 2), "LUKS2")
    case("overlapping-key-slots", lambda d: be("I", d, SLOT0 + 48 + 40, 8 + 8),
         "LUKS1 key slots 0 and 1 overlap")
    case("wrong-stripes", lambda d: be("I", d, SLOT0 + 44, 3999), "3999 stripes")
    case("key-material-in-header", lambda d: be("I", d, SLOT0 + 40, 0),
         "material offset 0 overlaps the header")
    case("payload-inside-key-material", lambda d: be("I", d, 104, 100),
         "overlaps the payload at sector 100")
    case("key-bytes-zero", lambda d: be("I", d, 108, 0), "LUKS1 keyBytes 0")
    case("key-bytes-huge", lambda d: be("I", d, 108, 0xFFFFFFFF), "LUKS1 keyBytes 4294967295")
    case("slot-state-bad", lambda d: be("I", d, SLOT0, 0x12345678), "invalid state 0x12345678")
    case("mk-iterations-zero", lambda d: be("I", d, 164, 0), "mkDigestIterations is 0")
    case("cipher-unknown", lambda d: d.__setitem__(slice(8, 40), b"rot13".ljust(32, b"\0")),
         "rot13")
    case("hash-unknown", lambda d: d.__setitem__(slice(72, 104), b"md4x".ljust(32, b"\0")),
         "md4x")
    case("key-slot-past-end", lambda d: d.__delitem__(slice(64 * KiB, None)),
         "LUKS1 payloadOffset 4096 is past the end",
         material=True)
    case("payload-past-end", lambda d: d.__delitem__(slice(2 * MiB - 4096, None)),
         "LUKS1 payloadOffset 4096 is past the end", material=True)
    case("header-truncated", lambda d: d.__delitem__(slice(300, None)), "truncated")
    c.add("luks1-zero-length.img", b"", "verify", "too small for a LUKS header (0 bytes)")


# -- LUKS2 -------------------------------------------------------------------------------------

HDR = 16 * KiB


def luks2_set(d: bytearray, j: dict | bytes, hdr_size: int = HDR) -> None:
    """Write JSON (a dict, or raw bytes of the area) into both copies with valid checksums."""
    text = j if isinstance(j, bytes) else json.dumps(j, separators=(",", ":")).encode()
    for at in (0, hdr_size):
        area = bytearray(d[at : at + hdr_size])
        area[4096:] = text + bytes(hdr_size - 4096 - len(text))
        area[448:512] = bytes(64)
        area[448:480] = hashlib.sha256(area).digest()
        d[at : at + hdr_size] = area


def luks2_cases(c: Corpus) -> None:
    img = c.work / "l2.img"
    with open(img, "wb") as f:
        f.truncate(18 * MiB)
    run("cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--key-file", c.key,
        "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--luks2-keyslots-size", "1M",
        "--offset", "4096", img)
    run("cryptsetup", "luksAddKey", "--batch-mode", "--key-file", c.key, "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", img, c.key)
    orig = bytearray(img.read_bytes())
    j0 = json.loads(bytes(orig[4096:HDR]).rstrip(b"\0"))
    # keep keyslot 0's material (the cases that unlock read it), zero the rest of the area
    end = int(j0["keyslots"]["0"]["area"]["offset"]) + int(j0["keyslots"]["0"]["area"]["size"])
    orig[end : 2 * MiB] = bytes(2 * MiB - end)

    def case(what: str, mutate: Callable[[bytearray], None], expect: str,
             command: str = "verify", material: bool = False) -> None:
        d = bytearray(orig)
        if not material:  # refused while parsing the header: the key material is not read
            d[2 * HDR : 2 * MiB] = bytes(2 * MiB - 2 * HDR)
        mutate(d)
        c.add(f"luks2-{what}.img", d, command, expect)

    def edit(fn: Callable[[dict], None]) -> Callable[[bytearray], None]:
        def mutate(d: bytearray) -> None:
            j = json.loads(json.dumps(j0))
            fn(j)
            luks2_set(d, j)
        return mutate

    case("both-checksums-bad", lambda d: [d.__setitem__(at + 448, d[at + 448] ^ 1)
                                          for at in (0, HDR)], "no valid LUKS2 header")
    case("json-not-nul-padded",
         lambda d: luks2_set(d, json.dumps(j0).encode() + b"\0garbage"), "no valid LUKS2 header")
    case("json-not-json", lambda d: luks2_set(d, b"{\"keyslots\": [1, 2"), "no valid LUKS2 header")

    def overlap(j: dict) -> None:
        j["keyslots"]["1"]["area"]["offset"] = str(int(j["keyslots"]["0"]["area"]["offset"])
                                                   + 4096)
    case("overlapping-keyslot-areas", edit(overlap), "no valid LUKS2 header")
    case("segment-not-aligned",
         edit(lambda j: j["segments"]["0"].__setitem__("offset", str(2 * MiB + 1))),
         "no valid LUKS2 header")
    case("digest-missing-keyslot",
         edit(lambda j: j["digests"]["0"].__setitem__("keyslots", ["0", "1", "7"])),
         "no valid LUKS2 header")
    case("wrong-value-type",
         edit(lambda j: j["keyslots"]["0"].__setitem__("key_size", "64")),
         "no valid LUKS2 header")
    case("keyslot-area-past-keyslots-size",
         edit(lambda j: j["keyslots"]["0"]["area"].__setitem__("offset", str(64 * MiB))),
         "no valid LUKS2 header")
    case("stripes-3999",
         edit(lambda j: j["keyslots"]["0"]["af"].__setitem__("stripes", 3999)),
         "3999")

    case("keyslot-cipher-unknown",
         edit(lambda j: j["keyslots"]["0"]["area"].__setitem__("encryption", "rot13-xts-plain64")),
         "keyslot 0 area encryption: unsupported cipher 'rot13-xts-plain64'")
    case("segment-cipher-unknown",
         edit(lambda j: j["segments"]["0"].__setitem__("encryption", "rot13-xts-plain64")),
         "rot13", material=True)
    case("segment-past-end",
         edit(lambda j: j["segments"]["0"].__setitem__("offset", str(64 * MiB))), "64")
    case("segment-size-past-end",
         edit(lambda j: j["segments"]["0"].__setitem__("size", str(64 * MiB))), "ends past")

    def bad_hdr_size(d: bytearray) -> None:
        for at in (0, HDR):
            be("Q", d, at + 8, 20000)
    case("hdr-size-invalid", bad_hdr_size, "no valid LUKS2 header")
    case("header-only", lambda d: d.__delitem__(slice(2 * HDR, None)), "are larger than the file")
    case("keyslots-truncated", lambda d: d.__delitem__(slice(64 * KiB, None)),
         "are larger than the file",
         material=True)


def only(prefix: str, make: Callable[[Corpus], None]) -> None:
    """Rewrite the files of one maker (names starting with prefix) and their MANIFEST rows,
    leaving the rest of the corpus as it is."""
    manifest = OUT / "MANIFEST.tsv"
    lines = manifest.read_text().splitlines()
    for p in OUT.glob(f"{prefix}*"):
        p.unlink()
    with tempfile.TemporaryDirectory() as work:
        c = Corpus(Path(work))
        make(c)
    kept = [line for line in lines if not line.startswith(prefix)]
    manifest.write_text("\n".join(kept + ["\t".join(row) for row in c.rows]) + "\n")
    print(f"{len(c.rows)} {prefix}* files rewritten in {OUT}")


def main() -> None:
    if sys.argv[1:2] == ["--only-vhdcrypt"]:
        only("vhdcrypt-", vhd_crypt_cases)
        return
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as work:
        c = Corpus(Path(work))
        from tests.tools.make_malformed_inputs import input_cases
        from tests.tools.make_malformed_vdi import vdi_cases

        for make in (vhd_cases, vhd_crypt_cases, qcow2_cases, vmdk_cases, vhdx_cases,
                     luks1_cases, luks2_cases, input_cases, vdi_cases):
            make(c)
    for command in ("info", "encrypt", "verify"):
        c.add(f"raw-zero-length-{command}.img", b"", command,
              "too small for a LUKS header (0 bytes)" if command == "verify" else
              "is empty (0 bytes)")
    with open(OUT / "MANIFEST.tsv", "w") as f:
        f.write("# file\tcommand\texpected error substring (made by tests/tools/make_malformed.py)\n")
        for row in c.rows:
            f.write("\t".join(row) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(c.rows)} files, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
