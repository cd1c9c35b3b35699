"""VirtualBox VDI (images/vdi.py) against qemu-img, its peer: the allocation qemu maps, the bytes
qemu reads (discarded blocks and sizes that are not whole blocks or sectors included), and the
commands that take a source (encrypt, convert, info, size). The flavours themselves (dynamic,
fixed, zero blocks) are in test_flavours; malformed VDIs in the checked-in corpus
(tests/tools/make_malformed_vdi.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tests.helpers import FAST, Cli, MiB, pattern_disk, qemu_img, qemu_luks_decrypt, same_prefix
from tests.images.flavours import convert, make, read_all, vdi_zero_blocks


def qemu_map(image: Path) -> list[tuple[int, int]]:
    """The ranges qemu-img map says hold data, merged."""
    out: list[tuple[int, int]] = []
    for e in json.loads(qemu_img("map", "--output=json", "-f", "vdi", str(image)).stdout):
        if e["data"]:
            if out and out[-1][1] == e["start"]:
                out[-1] = (out[-1][0], e["start"] + e["length"])
            else:
                out.append((e["start"], e["start"] + e["length"]))
    return out


def allocated(extents: list[tuple[int, int, bool]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for off, n, alloc in extents:
        if alloc:
            if out and out[-1][1] == off:
                out[-1] = (out[-1][0], off + n)
            else:
                out.append((off, off + n))
    return out


def test_dynamic_allocation_is_what_qemu_maps(source: Path, tmp_path: Path) -> None:
    for name in ("vdi-dynamic", "vdi-zero-blocks", "vdi-written-zeroes", "vdi-fixed"):
        image, ref = make(name, source, tmp_path)
        data, _read, extents, fmt = read_all(image)
        assert fmt == "vdi" and data == ref.read_bytes()
        assert allocated(extents) == qemu_map(image), name


def test_zero_blocks_read_as_zeros_without_reading(source: Path, tmp_path: Path) -> None:
    """Block map entries 0xFFFFFFFE over blocks that hold data: lukspack and qemu both read
    zeros there, and lukspack does not read the file for them."""
    image = vdi_zero_blocks(source, tmp_path / "z.vdi")
    ref = tmp_path / "z.raw"
    qemu_img("convert", "-f", "vdi", "-O", "raw", str(image), str(ref))
    src = source.read_bytes()
    assert src[2 * MiB : 3 * MiB] == bytes([2]) * MiB and any(src[5 * MiB : 6 * MiB])
    data, bytes_read, extents, _ = read_all(image)
    assert data == ref.read_bytes()
    assert data[2 * MiB : 3 * MiB] == bytes(MiB) and data[5 * MiB : 6 * MiB] == bytes(MiB)
    for mib in (2, 5):
        assert any(off <= mib * MiB and mib * MiB + MiB <= off + n and not a
                   for off, n, a in extents), (mib, extents)
    holes = sum(n for _, n, a in extents if not a)
    assert bytes_read <= len(data) - holes + 4096  # the header and the block map


def test_last_block_partly_used(tmp_path: Path) -> None:
    """A disk that is not whole 1 MiB blocks: dynamic and fixed read as qemu reads them."""
    src = pattern_disk(tmp_path / "odd.raw", 5, tail=300 * 512)
    for opts in ((), ("-o", "static=on")):
        image = convert(src, tmp_path / f"odd{len(opts)}.vdi", "-O", "vdi", *opts)
        ref = tmp_path / f"odd{len(opts)}.raw"
        qemu_img("convert", "-f", "vdi", "-O", "raw", str(image), str(ref))
        data, _, _, _ = read_all(image)
        assert len(data) == 5 * MiB + 300 * 512
        assert data == ref.read_bytes() == src.read_bytes()


def test_disk_size_not_whole_sectors_is_rounded_up_as_qemu_does(tmp_path: Path) -> None:
    src = pattern_disk(tmp_path / "s.raw", 2)
    image = convert(src, tmp_path / "s.vdi", "-O", "vdi")
    d = bytearray(image.read_bytes())
    struct.pack_into("<Q", d, 0x170, 2 * MiB - 700)  # cbDisk: as VBoxManage convertfromraw
    image.write_bytes(bytes(d))
    info = json.loads(qemu_img("info", "--output=json", str(image)).stdout)
    ref = tmp_path / "s.ref"
    qemu_img("convert", "-f", "vdi", "-O", "raw", str(image), str(ref))
    data, _, _, _ = read_all(image)
    assert len(data) == info["virtual-size"] == 2 * MiB - 512
    assert data == ref.read_bytes()


def test_commands_take_a_vdi(source: Path, tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    """info, size, convert and encrypt (to LUKS RAW: cryptsetup's format) read a .vdi by its
    content, as they read every other format."""
    image, ref = make("vdi-dynamic", source, tmp_path)
    info = json.loads(cli("info", str(image), "--json").stdout)
    assert info["format"] == "vdi" and info["virtual_size"] == ref.stat().st_size
    assert info["vdi"]["image_type"] == "dynamic" and info["vdi"]["block_size"] == MiB
    assert info["vdi"]["blocks_allocated"] == 8  # 12 MiB: MiB 0, 3, 7, 11 are zeros
    size = json.loads(cli("size", str(image), "--json").stdout)
    assert size["source_bytes"] == ref.stat().st_size
    raw = tmp_path / "c.raw"
    cli("convert", str(image), str(raw), "--to", "raw")
    assert raw.read_bytes() == ref.read_bytes()
    out = tmp_path / "e.img"
    cli("encrypt", str(image), str(out), "--key-file", str(keyfile), *FAST, "-f", "vdi")
    assert same_prefix(qemu_luks_decrypt(out, keyfile, tmp_path / "plain.raw"), ref)
