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
from tests.helpers import FAST, Cli, MiB, pattern_disk, qemu_img, qemu_luks_decrypt, same_prefix, tool
from tests.images.flavours import (
    FLAVOURS,
    SOURCE_MIB,
    check_reader,
    copy,
    encrypt_and_compare,
    make,
    read_all,
)

NAMES = [n for n in FLAVOURS if n.startswith("vhdx")]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pattern_disk(tmp_path_factory.mktemp("src") / "source.raw", SOURCE_MIB)


@pytest.mark.parametrize("name", NAMES)
def test_flavour_reads_and_encrypts_like_qemu(name: str, source: Path, tmp_path: Path, cli: Cli,
                                               keyfile: Path) -> None:
    image, ref = make(name, source, tmp_path)
    check_reader(name, image, ref, "vhdx")
    encrypt_and_compare(cli, image, ref, keyfile, tmp_path)


def test_fixed_vhdx_to_raw_luks(source: Path, tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    image, ref = make("vhdx-fixed", source, tmp_path)
    out = tmp_path / "out.img"
    cli("encrypt", str(image), str(out), "--key-file", str(keyfile), *FAST)
    plain = qemu_luks_decrypt(out, keyfile, tmp_path / "plain.raw")
    assert same_prefix(plain, ref)


def test_detected_by_content_not_name(source: Path, tmp_path: Path, cli: Cli,
                                      keyfile: Path) -> None:
    image, ref = make("vhdx-dynamic", source, tmp_path)
    disguised = copy(image, tmp_path / "disk.vhd")
    encrypt_and_compare(cli, disguised, ref, keyfile, tmp_path)


def test_info(source: Path, tmp_path: Path, cli: Cli) -> None:
    image, _ref = make("vhdx-fixed", source, tmp_path)
    d = json.loads(cli("info", str(image), "--json").stdout)
    assert d["format"] == "vhdx" and d["virtual_size"] == SOURCE_MIB * MiB
    assert d["vhdx"]["type"] == "fixed" and d["vhdx"]["block_size"] == MiB


def dirty_log_vhdx(path: Path) -> Path:
    """A VHDX whose log holds an entry that was not applied: qemu-io writes (qemu logs its BAT
    updates) and aborts; then the headers are pointed at the log entry's GUID, as a crash
    between writing the log and applying it leaves them."""
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
    path.write_bytes(data)
    return path


def test_dirty_log_is_refused_then_reads_after_qemu_replays_it(tmp_path: Path, cli: Cli,
                                                                keyfile: Path) -> None:
    image = dirty_log_vhdx(tmp_path / "dirty.vhdx")
    p = subprocess.run([tool("qemu-img"), "info", str(image)], capture_output=True, text=True)
    assert p.returncode != 0 and "log that needs to be replayed" in p.stderr  # qemu agrees
    err = cli.fails("encrypt", str(image), "out.qcow2", "--key-file", str(keyfile), *FAST)
    assert "dirty.vhdx" in err and "log" in err and "qemu-img check -r all" in err
    qemu_img("check", "-r", "all", str(image))
    ref = tmp_path / "ref.raw"
    qemu_img("convert", "-O", "raw", str(image), str(ref))
    data, _read, _extents, _fmt = read_all(image)
    assert data == ref.read_bytes() and data[5 * MiB] == 0x66
    encrypt_and_compare(cli, image, ref, keyfile, tmp_path)
