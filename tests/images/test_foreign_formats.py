"""Formats qemu-img reads and lukspack does not (images/sniff.FOREIGN) are refused by every
command that takes a source, before any output exists, in one line naming the format and the
`qemu-img convert` command that makes a qcow2 of it; they are never read as RAW. The images are
made by qemu-img where it can create the format (qed, qcow, parallels), else crafted with the
magic of qemu's probe function; for bochs and cloop qemu-img itself opens the crafted file as
that format, and the suggested command is run to show it works."""

from __future__ import annotations

import json
import shlex
import struct
import zlib
from pathlib import Path

import pytest

from tests.helpers import FAST, Cli, MiB, leftovers, qemu_img

CLOOP_MAGIC = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"


def bochs(path: Path) -> Path:
    """A 1 MiB growing Bochs redolog with no extent allocated (qemu's block/bochs.c)."""
    h = bytearray(512)
    h[0:32] = b"Bochs Virtual HD Image".ljust(32, b"\0")
    h[32:48] = b"Redolog".ljust(16, b"\0")
    h[48:64] = b"Growing".ljust(16, b"\0")
    catalog, extent = 16, 64 * 1024
    struct.pack_into("<IIIIIIQ", h, 64, 0x00020000, 512, catalog, 1, extent, 0, catalog * extent)
    path.write_bytes(bytes(h) + b"\xff" * (catalog * 4))
    return path


def cloop(path: Path) -> Path:
    """A cloop V2.0 image of two 64 KiB zlib blocks (qemu's block/cloop.c)."""
    bs, n = 64 * 1024, 2
    blk = zlib.compress(bytes(bs))
    first = 128 + 8 + (n + 1) * 8
    offsets = b"".join(struct.pack(">Q", first + i * len(blk)) for i in range(n + 1))
    path.write_bytes(CLOOP_MAGIC.ljust(128, b"\0") + struct.pack(">II", bs, n) + offsets
                     + blk * n)
    return path


def dmg(path: Path) -> Path:
    """Data and a UDIF "koly" trailer (its signature, version 4, header size 512): what the end
    of every DMG holds. qemu's dmg driver probes by the name .dmg, so this is the signature."""
    trailer = bytearray(512)
    trailer[0:12] = b"koly\x00\x00\x00\x04\x00\x00\x02\x00"
    path.write_bytes(bytes(range(256)) * 64 + bytes(trailer))
    return path


def created(fmt: str) -> object:
    def make(path: Path) -> Path:
        qemu_img("create", "-f", fmt, str(path), "4M")
        return path
    return make


CASES = {  # qemu-img's format name -> (file name, maker, does qemu-img open it as that format)
    "qed": ("disk.qed", created("qed"), True),
    "qcow": ("disk.qcow", created("qcow"), True),
    "parallels": ("disk.hdd", created("parallels"), True),
    "bochs": ("disk.img", bochs, True),
    "cloop": ("disk.cloop", cloop, True),
    "dmg": ("disk.dmg", dmg, False),
}


@pytest.mark.parametrize("fmt", list(CASES))
def test_refused_before_any_output(fmt: str, tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    name, maker, qemu_opens = CASES[fmt]
    src = maker(tmp_path / name)  # type: ignore[operator]
    if qemu_opens:  # qemu-img probes it as this format: the name in the message is qemu's
        assert json.loads(qemu_img("info", "--output=json", str(src)).stdout)["format"] == fmt
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out.qcow2"
    for args in (["encrypt", src, out, "--key-file", keyfile, *FAST],
                 ["encrypt", src, tmp_path / "out.img", "--key-file", keyfile, *FAST],
                 ["convert", src, tmp_path / "out.raw", "--to", "raw"],
                 ["info", src], ["size", src]):
        err = cli.fails(*args)
        assert f"(qemu-img format {fmt}), which lukspack does not read" in err, err
        assert f"qemu-img convert -f {fmt} -O qcow2 {src} " in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == before and not leftovers(tmp_path)
    if qemu_opens:  # the command the message gives makes a qcow2 lukspack reads
        command = err.split("convert it first: ", 1)[1]
        qemu_img(*shlex.split(command)[1:])
        target = Path(shlex.split(command)[-1])
        assert json.loads(cli("info", target, "--json").stdout)["format"] == "qcow2"


def test_qcow1_named_qcow2_gets_a_different_output_name(tmp_path: Path, cli: Cli) -> None:
    src = tmp_path / "old.qcow2"
    qemu_img("create", "-f", "qcow", str(src), "1M")
    err = cli.fails("info", src)
    assert "is a qcow (version 1) image" in err
    assert err.endswith(f"qemu-img convert -f qcow -O qcow2 {src} {tmp_path / 'old-converted.qcow2'}")
    assert cli.fails("info", src, "-f", "qcow2") == err  # named the same with --input-format


def test_explicit_raw_is_still_raw(tmp_path: Path, cli: Cli) -> None:
    """--input-format raw is the user's word, as with qemu-img -f raw: the file is its disk."""
    src = tmp_path / "disk.qed"
    qemu_img("create", "-f", "qed", str(src), "4M")
    info = json.loads(cli("info", src, "--json", "-f", "raw").stdout)
    assert info["format"] == "raw" and info["virtual_size"] == src.stat().st_size


def test_in_an_ova_member(tmp_path: Path, cli: Cli) -> None:
    from tests.images.ova_files import make_ova, ovf

    disk = tmp_path / "disk1.vmdk"
    qemu_img("create", "-f", "qed", str(disk), "4M")
    ova = make_ova(tmp_path / "x.ova", ovf([("disk1.vmdk", 4 * MiB)]), [disk])
    err = cli.fails("info", ova)
    assert "disk disk1.vmdk: is a QED (QEMU enhanced disk) image (qemu-img format qed)" in err
    assert "extract it and convert it with `qemu-img convert -f qed -O qcow2`" in err


def test_refused_in_a_real_process(tmp_path: Path, process_cli: Cli, keyfile: Path) -> None:
    src = tmp_path / "disk.qed"
    qemu_img("create", "-f", "qed", str(src), "4M")
    err = process_cli.fails("encrypt", src, tmp_path / "out.qcow2", "--key-file", keyfile, *FAST)
    assert "(qemu-img format qed)" in err and not (tmp_path / "out.qcow2").exists()
    assert not leftovers(tmp_path)
