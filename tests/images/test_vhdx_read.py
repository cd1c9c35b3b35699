"""VHDX inputs (dynamic, fixed, with and without ZERO blocks) read exactly as qemu reads them and
encrypt to what qemu decrypts; a dirty log is refused as qemu refuses it read-only, and the image
reads correctly once qemu has replayed the log."""

from __future__ import annotations

import json
import resource
import struct
import subprocess
from pathlib import Path

import pytest

from lukspack.images.crc32c import crc32c_zeroed
from tests.helpers import FAST, Cli, MiB, qemu_img, tool
from tests.images.flavours import (
    SOURCE_MIB,
    copy,
    encrypt_and_compare,
    make,
    read_all,
)


def test_info(source: Path, tmp_path: Path, cli: Cli) -> None:
    image, _ref = make("vhdx-fixed", source, tmp_path)
    d = json.loads(cli("info", str(image), "--json").stdout)
    assert d["format"] == "vhdx" and d["virtual_size"] == SOURCE_MIB * MiB
    assert d["vhdx"]["type"] == "fixed" and d["vhdx"]["block_size"] == MiB


def vhdx_regions(data: bytes | bytearray) -> dict[str, int]:
    count = struct.unpack_from("<I", data, 192 * 1024 + 8)[0]
    names = {"6677c22d": "bat", "06a27c8b": "metadata"}
    out = {}
    for k in range(count):
        g, off, _length, _req = struct.unpack_from("<16sQII", data, 192 * 1024 + 16 + 32 * k)
        out[names[g.hex()[:8]]] = off
    return out


def dirty_log_vhdx(path: Path, *, stale_bat: bool) -> Path:
    """A VHDX whose log holds an entry that was not applied, as a crash leaves it.

    qemu-io writes two blocks (qemu logs each BAT update) and aborts; the headers are then
    pointed at the last log entry's GUID, and with stale_bat the BAT in place is reset to
    'not present', so only a replay of the log tells that blocks 0 and 5 hold data."""
    qemu_img("create", "-f", "vhdx", "-o", "block_size=1M", str(path), "16M")
    subprocess.run([tool("qemu-io"), "-f", "vhdx", "-c", "write -P 0x55 0 1M", "-c",
                    "write -P 0x66 5M 1M", "-c", "abort", str(path)], capture_output=True,
                   preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
    data = bytearray(path.read_bytes())
    log_offset = struct.unpack_from("<Q", data, 64 * 1024 + 72)[0]
    entries = [(struct.unpack_from("<Q", data, o + 16)[0], bytes(data[o + 32 : o + 48]))
               for o in range(log_offset, log_offset + MiB, 4096) if data[o : o + 4] == b"loge"]
    assert entries, "qemu-io left no log entry"
    guid = max(entries)[1]
    for h in (64 * 1024, 128 * 1024):
        data[h + 48 : h + 64] = guid
        struct.pack_into("<I", data, h + 4, crc32c_zeroed(bytes(data[h : h + 4096]), 4))
    if stale_bat:
        bat = vhdx_regions(data)["bat"]
        data[bat : bat + 4096] = bytes(4096)
    path.write_bytes(data)
    return path


def qemu_replayed(image: Path, directory: Path) -> Path:
    """qemu's reading of a dirty image: it refuses it read-only, replays it with check -r all
    on a copy; returns the raw disk of that copy."""
    p = subprocess.run([tool("qemu-img"), "info", str(image)], capture_output=True, text=True)
    assert p.returncode != 0 and "log that needs to be replayed" in p.stderr
    fixed = copy(image, directory / "replayed-by-qemu.vhdx")
    qemu_img("check", "-r", "all", str(fixed))
    ref = directory / "ref.raw"
    qemu_img("convert", "-O", "raw", str(fixed), str(ref))
    return ref


@pytest.mark.parametrize("stale_bat", [True, False], ids=["stale-bat", "already-applied"])
def test_dirty_log_is_replayed_in_memory_like_qemu(stale_bat: bool, tmp_path: Path, cli: Cli,
                                                   keyfile: Path) -> None:
    image = dirty_log_vhdx(tmp_path / "dirty.vhdx", stale_bat=stale_bat)
    before = image.read_bytes()
    ref = qemu_replayed(image, tmp_path)
    data, _read, _extents, _fmt = read_all(image)
    assert data == ref.read_bytes()
    assert data[0] == 0x55 and data[5 * MiB] == 0x66 and data[2 * MiB] == 0
    d = json.loads(cli("info", str(image), "--json").stdout)
    assert d["vhdx"]["log_entries_replayed"] == 1
    encrypt_and_compare(cli, image, ref, keyfile, tmp_path)
    assert image.read_bytes() == before  # replayed in memory: the input is never written


def test_log_of_a_truncated_file_is_refused(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    image = dirty_log_vhdx(tmp_path / "cut.vhdx", stale_bat=True)
    data = bytearray(image.read_bytes())
    log_offset = struct.unpack_from("<Q", data, 64 * 1024 + 72)[0]
    guid = bytes(data[64 * 1024 + 48 : 64 * 1024 + 64])
    for o in range(log_offset, log_offset + MiB, 4096):
        if data[o : o + 4] == b"loge" and data[o + 32 : o + 48] == guid:
            struct.pack_into("<Q", data, o + 48, 1 << 40)  # FlushedFileOffset
            length = struct.unpack_from("<I", data, o + 8)[0]
            struct.pack_into("<I", data, o + 4, crc32c_zeroed(bytes(data[o : o + length]), 4))
    image.write_bytes(data)
    p = subprocess.run([tool("qemu-img"), "check", "-r", "all", str(copy(image, tmp_path / "q.vhdx"))],
                       capture_output=True)
    assert p.returncode != 0  # qemu refuses to replay it too
    err = cli.fails("encrypt", str(image), "out.qcow2", "--key-file", str(keyfile), *FAST)
    assert "cut.vhdx" in err and "flushed up to 1099511627776" in err and "truncated" in err
