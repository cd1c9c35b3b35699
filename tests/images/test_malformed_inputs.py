"""Malformed qcow2, VMDK and VHDX inputs: one clear line naming the file, the field and the
value, exit code 1, no traceback and no output left behind. Each case damages an image qemu-img
made from the same pattern disk."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import FAST, Cli, MiB, leftovers, pattern_disk, qemu_img
from tests.images.flavours import vmware_stream

Mutate = Callable[[bytearray, Path], bytearray | None]


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bases")
    src = pattern_disk(d / "source.raw", 4)
    made = {}
    for name, args in {
        "qcow2": ["-O", "qcow2"],
        "qcow2c": ["-c", "-O", "qcow2"],
        "vmdk": ["-O", "vmdk", "-o", "subformat=monolithicSparse"],
        "stream": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
        "vhdx": ["-O", "vhdx", "-o", "block_size=1M"],
    }.items():
        out = d / f"{name}.img"
        qemu_img("convert", "-f", "raw", *args, str(src), str(out))
        made[name] = out
    made["vmware"] = vmware_stream(src, d / "vmware.vmdk")
    return made


# -- qcow2 -------------------------------------------------------------------------------------

def q_header(d: bytearray) -> tuple[int, int, int]:
    """(cluster size, L1 table offset, offset of the first L2 table)."""
    bits = struct.unpack_from(">I", d, 20)[0]
    l1 = struct.unpack_from(">Q", d, 40)[0]
    l2 = struct.unpack_from(">Q", d, l1)[0] & 0x00FFFFFFFFFFFE00
    return 1 << bits, l1, l2


def q_first_entry(d: bytearray, compressed: bool) -> int:
    """Offset in the file of the first L2 entry of the wanted kind."""
    _, _, l2 = q_header(d)
    for i in range(8192):
        e = struct.unpack_from(">Q", d, l2 + 8 * i)[0]
        if e and bool(e & (1 << 62)) == compressed:
            return l2 + 8 * i
    raise AssertionError("no such L2 entry")


def q_set(fmt: str, at: int, value: int) -> Mutate:
    def mutate(d: bytearray, _p: Path) -> None:
        struct.pack_into(fmt, d, at, value)
    return mutate


def q_l1_past_end(d: bytearray, _p: Path) -> None:
    _, l1, _ = q_header(d)
    struct.pack_into(">Q", d, l1, (1 << 63) | (len(d) + 10 * 65536))


def q_data_past_end(d: bytearray, _p: Path) -> None:
    at = q_first_entry(d, compressed=False)
    struct.pack_into(">Q", d, at, (1 << 63) | (len(d) + 100 * 65536))


def q_data_unaligned(d: bytearray, _p: Path) -> None:
    at = q_first_entry(d, compressed=False)
    e = struct.unpack_from(">Q", d, at)[0]
    struct.pack_into(">Q", d, at, e + 512)


def q_bad_deflate(d: bytearray, _p: Path) -> None:
    at = q_first_entry(d, compressed=True)
    e = struct.unpack_from(">Q", d, at)[0]
    x = 62 - (16 - 8)
    coff = e & ((1 << x) - 1)
    d[coff : coff + 64] = b"\xff" * 64


def q_extension_overflow(d: bytearray, _p: Path) -> None:
    hl = struct.unpack_from(">I", d, 100)[0]
    struct.pack_into(">II", d, hl, 0x6803F857, 70000)


QCOW2_CASES: dict[str, tuple[str, Mutate, tuple[str, ...]]] = {
    "version": ("qcow2", q_set(">I", 4, 4), ("qcow2 version 4",)),
    "cluster_bits": ("qcow2", q_set(">I", 20, 31), ("cluster_bits 31",)),
    "l1_size": ("qcow2", q_set(">I", 36, 0), ("l1_size 0 is too small",)),
    "l1_offset": ("qcow2", q_set(">Q", 40, 1 << 40), ("L1 table", "past the end of the file")),
    "size": ("qcow2", q_set(">Q", 24, 1 << 62), ("qcow2 size", "absurd")),
    "corrupt_bit": ("qcow2", q_set(">Q", 72, 2), ("marked corrupt",)),
    "unknown_feature": ("qcow2", q_set(">Q", 72, 1 << 40), ("incompatible_features 0x",)),
    "crypt_method": ("qcow2", q_set(">I", 32, 1), ("legacy AES",)),
    "extension": ("qcow2", q_extension_overflow, ("header extension 0x6803f857",
                                                  "past the first cluster")),
    "l2_past_end": ("qcow2", q_l1_past_end, ("L2 table offset 0x", "of L1 entry 0",
                                             "past the end of the file")),
    "data_past_end": ("qcow2", q_data_past_end, ("data cluster offset 0x", "guest cluster",
                                                 "past the end of the file")),
    "data_unaligned": ("qcow2", q_data_unaligned, ("not aligned to the cluster size",)),
    "bad_deflate": ("qcow2c", q_bad_deflate, ("compressed cluster at offset 0x", "inflate")),
}


# -- VMDK --------------------------------------------------------------------------------------

def v_first_gte(d: bytearray) -> int:
    gd = struct.unpack_from("<Q", d, 56)[0] * 512
    gt = struct.unpack_from("<I", d, gd)[0] * 512
    for i in range(512):
        if struct.unpack_from("<I", d, gt + 4 * i)[0] > 1:
            return gt + 4 * i
    raise AssertionError("no allocated grain")


def v_grain_past_end(d: bytearray, _p: Path) -> None:
    struct.pack_into("<I", d, v_first_gte(d), len(d) // 512 + 1000)


def v_bad_grain_data(d: bytearray, _p: Path) -> None:
    at = struct.unpack_from("<I", d, v_first_gte(d))[0] * 512
    d[at + 12 : at + 76] = b"\x00\xff" * 32


def v_zero_marker_size(d: bytearray, _p: Path) -> None:
    at = struct.unpack_from("<I", d, v_first_gte(d))[0] * 512
    struct.pack_into("<I", d, at + 8, 0)


def v_broken_footer(d: bytearray, _p: Path) -> None:
    struct.pack_into("<I", d, len(d) - 512 + 12, 7)  # end-of-stream marker type


def v_flat_descriptor(text: str, truncate_extent: bool = False) -> Mutate:
    def mutate(_d: bytearray, p: Path) -> bytearray:
        (p.parent / "raw-extent.bin").write_bytes(bytes(4 * MiB if not truncate_extent else MiB))
        return bytearray(text.encode())
    return mutate


DESCRIPTOR = '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n' \
             'createType="monolithicFlat"\n{extent}\n'

VMDK_CASES: dict[str, tuple[str, Mutate, tuple[str, ...]]] = {
    "version": ("vmdk", q_set("<I", 4, 7), ("sparse extent version 7",)),
    "grain_size": ("vmdk", q_set("<Q", 20, 0), ("grainSize 0",)),
    "gtes": ("vmdk", q_set("<I", 44, 4096), ("numGTEsPerGT 4096",)),
    "compress": ("vmdk", q_set("<H", 77, 9), ("compressAlgorithm 9",)),
    "gd_offset": ("vmdk", q_set("<Q", 56, 1 << 30), ("grain directory", "outside the file")),
    "grain_past_end": ("vmdk", v_grain_past_end, ("VMDK grain", "past the end of the file")),
    "bad_grain_data": ("stream", v_bad_grain_data, ("compressed grain", "does not inflate")),
    "marker_size": ("stream", v_zero_marker_size, ("marker", "compressed size 0")),
    "footer": ("vmware", v_broken_footer, ("footer is invalid",)),
    "extent_line": ("vmdk", v_flat_descriptor(DESCRIPTOR.format(extent="RW 8192 FLAT")),
                    ("descriptor line 6", "without a file name")),
    "flat_truncated": ("vmdk", v_flat_descriptor(
        DESCRIPTOR.format(extent='RW 8192 FLAT "raw-extent.bin" 0'), truncate_extent=True),
        ("raw-extent.bin", "is truncated", "the file has 1048576")),
    "extent_type": ("vmdk", v_flat_descriptor(
        DESCRIPTOR.format(extent='RW 8192 VMFSRDM "raw-extent.bin"')), ("VMFSRDM extents",)),
}


# -- VHDX --------------------------------------------------------------------------------------

def x_regions(d: bytearray) -> dict[str, tuple[int, int]]:
    names = {"6677c22d23f600429d64115e9bfd4a08": "bat", "06a27c8b90479a4bb8fe575f050f886e": "meta"}
    count = struct.unpack_from("<I", d, 192 * 1024 + 8)[0]
    out = {}
    for k in range(count):
        g, off, length, _ = struct.unpack_from("<16sQII", d, 192 * 1024 + 16 + 32 * k)
        out[names[g.hex()]] = (off, length)
    return out


def x_meta_item(d: bytearray, index: int) -> int:
    meta = x_regions(d)["meta"][0]
    return meta + struct.unpack_from("<I", d, meta + 32 + 32 * index + 16)[0]


def x_first_present(d: bytearray) -> int:
    bat = x_regions(d)["bat"][0]
    for i in range(64):
        if struct.unpack_from("<Q", d, bat + 8 * i)[0] & 7 == 6:
            return bat + 8 * i
    raise AssertionError("no present block")


def x_both(at: int, data: bytes) -> Mutate:
    def mutate(d: bytearray, _p: Path) -> None:
        for base in (at, at + 64 * 1024):
            d[base : base + len(data)] = data
    return mutate


def x_block_past_end(d: bytearray, _p: Path) -> None:
    struct.pack_into("<Q", d, x_first_present(d), (4000 << 20) | 6)


def x_partial(d: bytearray, _p: Path) -> None:
    at = x_first_present(d)
    struct.pack_into("<Q", d, at, struct.unpack_from("<Q", d, at)[0] | 7)


def x_state(d: bytearray, _p: Path) -> None:
    at = x_first_present(d)
    struct.pack_into("<Q", d, at, (struct.unpack_from("<Q", d, at)[0] & ~7) | 5)


def x_block_size(d: bytearray, _p: Path) -> None:
    struct.pack_into("<I", d, x_meta_item(d, 0), 3 * MiB)


def x_virtual_size(d: bytearray, _p: Path) -> None:
    struct.pack_into("<Q", d, x_meta_item(d, 1), 1000)


def x_truncate(d: bytearray, _p: Path) -> bytearray:
    return d[: 512 * 1024]


VHDX_CASES: dict[str, tuple[str, Mutate, tuple[str, ...]]] = {
    "headers": ("vhdx", x_both(64 * 1024 + 4, b"\x12\x34\x56\x78"),
                ("no valid VHDX header", "checksum 0x78563412 is wrong")),
    "region_tables": ("vhdx", x_both(192 * 1024, b"xxxx"), ("no valid VHDX region table",
                                                             "signature b'xxxx'")),
    "block_past_end": ("vhdx", x_block_past_end, ("VHDX block 1 at offset", "outside the file")),
    "partially_present": ("vhdx", x_partial, ("PARTIALLY_PRESENT",)),
    "bad_state": ("vhdx", x_state, ("invalid state 5",)),
    "block_size": ("vhdx", x_block_size, ("VHDX block size 3145728",)),
    "virtual_size": ("vhdx", x_virtual_size, ("virtual disk size 1000",)),
    "truncated": ("vhdx", x_truncate, ("too small for a VHDX",)),
}


def damaged(bases: dict[str, Path], base: str, mutate: Mutate, directory: Path,
            suffix: str) -> Path:
    path = directory / f"damaged{suffix}"
    data = bytearray(bases[base].read_bytes())
    result = mutate(data, path)
    path.write_bytes(result if result is not None else data)
    return path


def expect_one_line(cli: Cli, image: Path, keyfile: Path, words: tuple[str, ...]) -> None:
    err = cli.fails("encrypt", str(image), "out.qcow2", "--key-file", str(keyfile), *FAST)
    assert image.name in err, err
    for w in words:
        assert w in err, (w, err)
    assert not (image.parent / "out.qcow2").exists()
    assert leftovers(image.parent) == []


@pytest.mark.parametrize("case", list(QCOW2_CASES))
def test_malformed_qcow2(case: str, bases: dict[str, Path], tmp_path: Path, cli: Cli,
                         keyfile: Path) -> None:
    base, mutate, words = QCOW2_CASES[case]
    expect_one_line(cli, damaged(bases, base, mutate, tmp_path, ".qcow2"), keyfile, words)


@pytest.mark.parametrize("case", list(VMDK_CASES))
def test_malformed_vmdk(case: str, bases: dict[str, Path], tmp_path: Path, cli: Cli,
                        keyfile: Path) -> None:
    base, mutate, words = VMDK_CASES[case]
    expect_one_line(cli, damaged(bases, base, mutate, tmp_path, ".vmdk"), keyfile, words)


@pytest.mark.parametrize("case", list(VHDX_CASES))
def test_malformed_vhdx(case: str, bases: dict[str, Path], tmp_path: Path, cli: Cli,
                        keyfile: Path) -> None:
    base, mutate, words = VHDX_CASES[case]
    expect_one_line(cli, damaged(bases, base, mutate, tmp_path, ".vhdx"), keyfile, words)


@pytest.mark.parametrize("magic", [b"QFI\xfb", b"KDMV", b"vhdxfile"])
def test_truncated_right_after_the_magic(magic: bytes, tmp_path: Path, cli: Cli,
                                         keyfile: Path) -> None:
    image = tmp_path / "stub.bin"
    image.write_bytes(magic + bytes(40))
    expect_one_line(cli, image, keyfile, ())
