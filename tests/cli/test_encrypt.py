"""End to end: `lukspack encrypt` outputs checked by cryptsetup and QEMU's LUKS driver."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from lukspack.crypto.xts import XtsCipher
from tests.helpers import FAST, Cli, MiB, cryptsetup, pattern_disk, qemu_img, qemu_luks_decrypt, same_prefix


def test_keygen_writes_a_dek(tmp_path: Path, cli: Cli) -> None:
    key = tmp_path / "k"
    cli("keygen", key)
    data = key.read_bytes()
    assert len(data) == 44 and b"\n" not in data
    assert len(base64.b64decode(data, validate=True)) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    err = cli.fails("keygen", key)
    assert "already exists" in err and key.read_bytes() == data


@pytest.fixture(params=["vpc-dynamic", "vpc-fixed", "raw"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    """(image given to lukspack, the RAW bytes it stands for as qemu-img reads them)."""
    raw = pattern_disk(tmp_path / "src.raw", 11, tail=5 * 512)
    if request.param == "raw":
        return raw, raw
    img = tmp_path / "src.vhd"
    sub = ["-o", "subformat=fixed"] if request.param == "vpc-fixed" else []
    qemu_img("convert", "-f", "raw", "-O", "vpc", *sub, str(raw), str(img))
    ref = tmp_path / "ref.raw"
    qemu_img("convert", "-f", "vpc", "-O", "raw", str(img), str(ref))
    return img, ref


def test_encrypt_interop(tmp_path: Path, cli: Cli, keyfile: Path, source: tuple[Path, Path]) -> None:
    img, ref = source
    out = tmp_path / "enc.img"
    p = cli("encrypt", img, out, "--key-file", keyfile, "--json", *FAST)
    summary = json.loads(p.stdout)
    size = ref.stat().st_size
    payload = -(-size // MiB) * MiB
    assert out.stat().st_size == 2 * MiB + payload == summary["total_bytes"]
    assert summary["verified"] is True
    assert summary["source_sha256"] == hashlib.sha256(ref.read_bytes()).hexdigest()
    assert summary["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()

    dump = cryptsetup("luksDump", str(out)).stdout.decode()
    assert "Version:       \t1" in dump and "xts-plain64" in dump and "Payload offset:\t4096" in dump
    assert "MK bits:       \t512" in dump and "Key Slot 0: ENABLED" in dump
    cryptsetup("luksOpen", "--test-passphrase", "--key-file", str(keyfile), str(out))
    wrong = tmp_path / "wrong"
    cli("keygen", wrong)
    p = cryptsetup("luksOpen", "--test-passphrase", "--key-file", str(wrong), str(out), check=False)
    assert p.returncode != 0

    plain = qemu_luks_decrypt(out, keyfile, tmp_path / "qemu.raw")
    assert plain.stat().st_size == payload
    assert same_prefix(plain, ref)
    with open(plain, "rb") as f:
        f.seek(size)
        assert f.read() == bytes(payload - size)  # the padding decrypts to zeros


def test_volume_key_from_cryptsetup_decrypts_the_payload(tmp_path: Path, cli: Cli,
                                                         keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "s.raw", 3)
    out = tmp_path / "e.img"
    cli("encrypt", src, out, "--key-file", keyfile, *FAST)
    dump = cryptsetup("luksDump", "--dump-volume-key", "--batch-mode", "--key-file", str(keyfile),
                      str(out)).stdout.decode()
    hexkey = "".join(dump.split("MK dump:")[1].split())
    vk = bytes.fromhex(hexkey)
    assert len(vk) == 64
    data = bytearray(out.read_bytes()[2 * MiB :])
    XtsCipher(vk).decrypt(data, 0)
    assert bytes(data) == src.read_bytes()


def test_default_kdf_calibration_and_commands(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "s.raw", 2, tail=512)
    out = tmp_path / "e.img"
    cli("encrypt", src, out, "--key-file", keyfile, "--iter-time", "100", "--no-verify")
    info = json.loads(cli("info", out, "--json").stdout)
    assert info["format"] == "luks1" and info["luks"]["key_slots"][0]["enabled"]
    assert info["luks"]["key_slots"][0]["iterations"] >= 1000
    assert "salt" in info["luks"]["key_slots"][0]
    text = cli("info", out).stdout.decode()
    assert "Key Slot 0: ENABLED" in text and "Key Slot 1: DISABLED" in text

    v = json.loads(cli("verify", out, "--key-file", keyfile, "--source", src, "--json").stdout)
    assert v["matches_source"] and v["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    cli("decrypt", out, tmp_path / "d.raw", "--key-file", keyfile)
    d = tmp_path / "d.raw"
    assert stat.S_IMODE(d.stat().st_mode) == 0o600
    assert d.stat().st_size == 3 * MiB and same_prefix(d, src)


def test_key_from_stdin(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "s.raw", 1)
    out = tmp_path / "e.img"
    cli("encrypt", src, out, "--key-file", "-", *FAST, input=keyfile.read_bytes())
    cryptsetup("luksOpen", "--test-passphrase", "--key-file", str(keyfile), str(out))
    cli("verify", out, "--key-file", "-", input=keyfile.read_bytes())


def test_size_command_does_the_arithmetic(tmp_path: Path, cli: Cli) -> None:
    src = tmp_path / "s.raw"
    with open(src, "wb") as f:
        f.truncate(10 * MiB + 512)
    r = json.loads(cli("size", src, "--json").stdout)
    assert r["source_bytes"] == 10 * MiB + 512
    assert r["header_bytes"] == 2 * MiB and r["total_bytes"] == 13 * MiB and r["total_mib"] == 13
    assert r["documented_fits"] is True
    r2 = json.loads(cli("size", src, "--type", "luks2", "--json").stdout)
    assert r2["header_bytes"] == 16 * MiB and r2["total_mib"] == 27
    assert r2["documented_fits"] is False
    assert "truncated" in cli("size", src, "--type", "luks2").stdout.decode()


def test_sparse_source_reads_only_its_data(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    raw = tmp_path / "sparse.raw"
    with open(raw, "wb") as f:
        f.truncate(256 * MiB)
        f.seek(100 * MiB)
        f.write(os.urandom(2 * MiB))
    vhd = tmp_path / "sparse.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on", str(raw), str(vhd))
    out = tmp_path / "e.img"
    s = json.loads(cli("encrypt", vhd, out, "--key-file", keyfile, "--json", *FAST).stdout)
    assert s["virtual_size"] == 256 * MiB
    assert s["source_bytes_read"] < 3 * MiB
    assert s["verified"]


def _has_direct_io(directory: Path) -> bool:
    probe = directory / "direct-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
    os.close(fd)
    return True


def test_no_verify_writes_the_payload_with_direct_io(tmp_path: Path, cli: Cli,
                                                     keyfile: Path) -> None:
    """--no-verify sends the payload through O_DIRECT where the filesystem has it; cryptsetup's
    volume key and QEMU's LUKS driver read back exactly the source."""
    src = pattern_disk(tmp_path / "s.raw", 9, tail=777)
    out = tmp_path / "e.img"
    s = json.loads(cli("encrypt", src, out, "--key-file", keyfile, "--no-verify", "--json",
                       *FAST).stdout)
    assert s["direct_io"] is _has_direct_io(tmp_path)
    assert s["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    plain = qemu_luks_decrypt(out, keyfile, tmp_path / "qemu.raw")
    assert same_prefix(plain, src)
    with open(plain, "rb") as f:
        f.seek(src.stat().st_size)
        assert not any(f.read())
    # with verification the writes stay buffered, so the read-back finds them in the page cache
    s = json.loads(cli("encrypt", src, tmp_path / "v.img", "--key-file", keyfile, "--json",
                       *FAST).stdout)
    assert s["direct_io"] is False and s["verified"] is True
