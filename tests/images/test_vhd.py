"""VHD reading checked against qemu-img's vpc driver, and lukspack's VHD writer read by qemu."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lukspack.errors import FormatError, UnsupportedError
from lukspack.images import detect_format, open_image
from lukspack.images.vhd import DYN_HEADER, FOOTER, pack_footer
from tests.helpers import Cli, MiB, pattern_disk, qemu_img, same_prefix


def _read_all(path: Path) -> tuple[bytes, int, int]:
    with open_image(str(path)) as img:
        buf = bytearray(img.virtual_size)
        img.read_into(0, buf)
        return bytes(buf), img.bytes_read, img.virtual_size


@pytest.mark.parametrize("opts", [
    [],                                   # dynamic, creator 'qemu', size rounded to CHS
    ["-o", "subformat=fixed"],
    ["-o", "force_size=on"],              # dynamic, creator 'qem2', exact current_size
    ["-o", "subformat=fixed,force_size=on"],
], ids=["dynamic", "fixed", "dynamic-force_size", "fixed-force_size"])
def test_reads_qemu_vhd_like_qemu(tmp_path: Path, opts: list[str]) -> None:
    src = pattern_disk(tmp_path / "src.raw", 13, tail=3 * 512)  # not a CHS multiple
    vhd = tmp_path / "disk.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", *opts, str(src), str(vhd))
    ref = tmp_path / "ref.raw"
    qemu_img("convert", "-f", "vpc", "-O", "raw", str(vhd), str(ref))
    data, _, size = _read_all(vhd)
    assert size == ref.stat().st_size
    assert data == ref.read_bytes()
    assert data[: src.stat().st_size] == src.read_bytes()


def test_dynamic_vhd_holes_are_not_read(tmp_path: Path) -> None:
    """A 64 MiB disk with 4 MiB of data: only the allocated blocks come from the file."""
    src = tmp_path / "sparse.raw"
    with open(src, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(10 * MiB)
        f.write(b"\x5a" * (4 * MiB))
    vhd = tmp_path / "sparse.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on", str(src), str(vhd))
    data, bytes_read, size = _read_all(vhd)
    assert size == 64 * MiB and data == src.read_bytes()
    with open_image(str(vhd)) as img:
        allocated = img.allocated_size()
    assert allocated == 4 * MiB
    assert bytes_read < 5 * MiB  # header, footer, BAT and 2 blocks; not 64 MiB


@pytest.mark.parametrize("to", ["vhd-dynamic", "vhd-fixed"])
def test_lukspack_vhd_output_reads_identically_in_qemu(tmp_path: Path, cli: Cli, to: str) -> None:
    src = pattern_disk(tmp_path / "src.raw", 9, tail=1000)  # padded to a whole sector
    with open(src, "r+b") as f:  # MiB 4..7 zero: one whole 2 MiB block stays a hole
        f.seek(4 * MiB)
        f.write(bytes(4 * MiB))
    out = tmp_path / "out.vhd"
    cli("convert", src, out, "--to", to)
    back = tmp_path / "back.raw"
    qemu_img("convert", "-f", "vpc", "-O", "raw", str(out), str(back))
    assert back.stat().st_size == 9 * MiB + 1024
    assert same_prefix(back, src)
    assert back.read_bytes()[src.stat().st_size :] == bytes(24)
    if to == "vhd-dynamic":
        with open_image(str(out)) as img:
            assert img.allocated_size() == img.virtual_size - 4 * MiB


def test_fixed_vhd_is_recognised_by_its_footer_and_the_name_breaks_ties(tmp_path: Path) -> None:
    src = pattern_disk(tmp_path / "src.raw", 4)
    vhd = tmp_path / "disk.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on", str(src),
             str(vhd))
    import os

    fd = os.open(vhd, os.O_RDONLY)
    try:
        assert detect_format(str(vhd), fd) == "vhd"
        # what `qemu-img convert -O raw` makes of a fixed VHD without -f vpc: footer kept as data
        assert detect_format(str(tmp_path / "disk.raw"), fd) == "raw"
    finally:
        os.close(fd)


def _patch_footer(path: Path, at_end: bool, **fields: int) -> None:
    data = bytearray(path.read_bytes())
    off = len(data) - 512 if at_end else 0
    data[off : off + 512] = pack_footer(FOOTER.unpack(data, off)._replace(**fields))
    path.write_bytes(bytes(data))


@pytest.fixture
def dyn_vhd(tmp_path: Path) -> Path:
    src = pattern_disk(tmp_path / "src.raw", 6)
    vhd = tmp_path / "dyn.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on", str(src), str(vhd))
    return vhd


def test_differencing_vhd_is_refused(dyn_vhd: Path) -> None:
    _patch_footer(dyn_vhd, True, disk_type=4)
    _patch_footer(dyn_vhd, False, disk_type=4)
    with pytest.raises(UnsupportedError, match="differencing"):
        open_image(str(dyn_vhd))


def test_damaged_end_footer_falls_back_to_the_copy(dyn_vhd: Path) -> None:
    data = bytearray(dyn_vhd.read_bytes())
    data[-512 + 70] ^= 0xFF  # inside the footer checksum-covered bytes
    dyn_vhd.write_bytes(bytes(data))
    with open_image(str(dyn_vhd)) as img:
        assert "copy at 0" in img.info()["notes"][0]


def test_dynamic_header_checksum_is_verified(dyn_vhd: Path) -> None:
    data = bytearray(dyn_vhd.read_bytes())
    data[512 + 20] ^= 1  # max_table_entries, covered by the dynamic header checksum
    dyn_vhd.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="dynamic header checksum"):
        open_image(str(dyn_vhd))


def test_bat_entry_past_the_end_is_refused(dyn_vhd: Path) -> None:
    data = bytearray(dyn_vhd.read_bytes())
    table = struct.unpack_from(">Q", data, 512 + 16)[0]
    struct.pack_into(">I", data, table, 0x7FFFFFF0)
    dyn_vhd.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="block 0 points past the end"):
        open_image(str(dyn_vhd))


def test_chs_disagreement_is_reported(tmp_path: Path) -> None:
    src = pattern_disk(tmp_path / "src.raw", 5, tail=512)
    vhd = tmp_path / "f.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on", str(src), str(vhd))
    with open_image(str(vhd)) as img:
        info = img.info()
    assert info["virtual_size"] == 5 * MiB + 512
    assert any("CHS geometry" in n for n in info["notes"])
    assert DYN_HEADER.size == 1024 and FOOTER.size == 512
