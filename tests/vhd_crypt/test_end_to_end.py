"""The encrypted VHD through the engine (`lukspack.encrypt.encrypt`) and the CLI: encrypt from every
input format, then info, verify and decrypt, checked against the source, against an independent
decryption and against what the real vhd-util wrote."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

import pytest

from lukspack.encrypt import encrypt
from lukspack.options import EncryptOptions, StreamOptions
from tests.helpers import Cli, MiB, leftovers, qemu_img
from tests.luks.luks_helpers import write_key
from tests.vhd_crypt.drive import BLOCK, KEY_HASHES, PLAINTEXT_SHA256, VECTORS, independent_decrypt, lk
from tests.vhd_crypt.test_container import INPUTS, plaintext, sparse_source
from tests.vhd_crypt.vhdutil_check import check

KEY = bytes(range(7, 71))




@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sparse_source(tmp_path_factory.mktemp("e2e") / "src.raw", 11, tail=512 * 3)


@pytest.mark.parametrize("fmt", sorted(INPUTS))
def test_engine_from_every_input(fmt: str, source: Path, tmp_path: Path) -> None:
    image = source
    if INPUTS[fmt] is not None:
        image = tmp_path / f"in.{fmt}"
        qemu_img("convert", "-f", "raw", *INPUTS[fmt], str(source), str(image))
    want = plaintext(image)
    out = tmp_path / "out.vhd"
    s = encrypt(str(image), str(out), base64.b64encode(KEY), EncryptOptions())
    assert s["output_format"] == "vhd" and s["verified"] and s["key_bits"] == 512
    rounded = -(-len(want) // BLOCK) * BLOCK
    assert s["disk_bytes"] == rounded == 12 * MiB
    padded = want + bytes(rounded - len(want))
    assert s["disk_sha256"] == hashlib.sha256(padded).hexdigest()
    assert independent_decrypt(out, KEY) == padded
    assert check(out) is None
    assert s["total_bytes"] == out.stat().st_size
    assert not leftovers(tmp_path)


def test_engine_writes_what_vhd_util_wrote(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "ours.img"  # no .vhd suffix: the option says it
    key = (VECTORS / "aes128.key").read_bytes()
    opts = EncryptOptions(output_format="vhd", stream=StreamOptions(chunk_size=8 * MiB))
    s = encrypt(str(samples / "vs.vhd"), str(out), key, opts)
    assert s["key_hash"] == KEY_HASHES["aes128"] and s["key_bits"] == 256
    ours, theirs = out.read_bytes(), (samples / "vs-aes128.vhd").read_bytes()
    assert len(ours) == len(theirs)
    bat = struct.unpack_from(">4I", theirs, 1536)
    assert struct.unpack_from(">4I", ours, 1536) == bat
    for entry in bat:
        if entry != 0xFFFFFFFF:  # sector bitmap and ciphertext of every allocated sector
            lo, hi = entry * 512, (entry + 1 + 4096) * 512
            assert ours[lo:hi] == theirs[lo:hi]
    assert ours[512:3072] == theirs[512:3072]  # header, BAT sector, batmap header, batmap


def test_cli_encrypt_info_verify_decrypt(source: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    dek = tmp_path / "dek"
    assert lk(capsys, "keygen", dek, "--for", "vhd")[0] == 0
    out = tmp_path / "disk.vhd"
    code, so, err = lk(capsys, "encrypt", source, out, "--key-file", dek, "--json")
    assert code == 0, err
    s = json.loads(so)
    assert s["output_format"] == "vhd" and s["cipher"] == "aes-xts-plain"
    code, so, _ = lk(capsys, "keyhash", "--key-file", dek)
    assert so.strip() == s["key_hash"]
    code, so, _ = lk(capsys, "info", out, "--json")
    info = json.loads(so)["encrypted_vhd"]
    assert code == 0 and info["key_hash"] == s["key_hash"] and info["nonce"] == "0" * 64
    code, so, err = lk(capsys, "verify", out, "--key-file", dek, "--source", source)
    assert code == 0 and "matches" in so, err
    plain = tmp_path / "plain.raw"
    code, so, err = lk(capsys, "decrypt", out, plain, "--key-file", dek)
    assert code == 0, err
    data = plain.read_bytes()
    assert data[: source.stat().st_size] == source.read_bytes()
    assert not any(data[source.stat().st_size :]) and len(data) == 12 * MiB


def test_cli_raw_key_and_wrong_key(source: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_key(tmp_path / "raw.key", KEY)  # vhd-util's form: 64 raw bytes, not a DEK
    out = tmp_path / "disk.vhd"
    assert lk(capsys, "encrypt", source, out, "--key-file", raw, "--no-verify")[0] == 0
    b64 = write_key(tmp_path / "b64.key", base64.b64encode(KEY) + b"\n")
    assert lk(capsys, "verify", out, "--key-file", b64, "--source", source)[0] == 0
    wrong = write_key(tmp_path / "wrong.key", bytes(64))
    code, so, err = lk(capsys, "verify", out, "--key-file", wrong)
    assert code == 1 and so == "" and err.count("\n") == 1
    assert "does not match the image's key hash" in err
    code, _, err = lk(capsys, "decrypt", out, tmp_path / "p.raw", "--key-file", wrong)
    assert code == 1 and not (tmp_path / "p.raw").exists() and not leftovers(tmp_path)
    bad = write_key(tmp_path / "bad.key", b"short")
    code, _, err = lk(capsys, "encrypt", source, tmp_path / "x.vhd", "--key-file", bad)
    assert code == 1 and "not an encrypted-VHD key" in err and not (tmp_path / "x.vhd").exists()


def test_cli_reads_the_vhd_util_samples(samples: Path, sample_keys: dict[str, Path],
                                        tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    for name in ("aes256", "aes128"):
        for form in ("key", "dek"):
            p = cli("verify", samples / f"vs-{name}.vhd", "--key-file",
                    sample_keys[f"{name}.{form}"], "--json")
            assert json.loads(p.stdout)["disk_sha256"] == PLAINTEXT_SHA256
    err = cli.fails("verify", samples / "vs-aes256.vhd", "--key-file", sample_keys["aes128.key"])
    assert "does not match the image's key hash" in err
    err = cli.fails("encrypt", samples / "vs-aes256.vhd", tmp_path / "x.img", "--key-file",
                    sample_keys["aes256.dek"])
    assert "is already an encrypted VHD" in err


def test_a_size_vhd_util_cannot_copy(tmp_path: Path) -> None:
    """vhd-util copy fails on a dynamic VHD of 19 MiB + 1536 bytes (force_size): "Failed to
    encrypt block 9: -34". lukspack rounds up to 20 MiB; the tail reads as zeros."""
    raw = sparse_source(tmp_path / "odd.raw", 19, tail=1536)
    vhd = tmp_path / "odd.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on",
             str(raw), str(vhd))
    out = tmp_path / "odd-enc.vhd"
    s = encrypt(str(vhd), str(out), KEY, EncryptOptions())
    assert s["virtual_size"] == 19 * MiB + 1536 and s["disk_bytes"] == 20 * MiB
    assert independent_decrypt(out, KEY) == raw.read_bytes() + bytes(MiB - 1536)
    assert check(out) is None
    info = json.loads(qemu_img("info", "-f", "vpc", "--output", "json", str(out)).stdout)
    assert info["virtual-size"] == 20 * MiB


def test_size_type_vhd(source: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, so, _ = lk(capsys, "size", source, "--type", "vhd", "--json")
    r = json.loads(so)
    assert code == 0 and r["virtual_size"] == 12 * MiB and r["header_bytes"] == 3072
    out = tmp_path / "o.vhd"
    s = encrypt(str(source), str(out), KEY, EncryptOptions())
    assert r["min_total_bytes"] <= s["total_bytes"] <= r["max_total_bytes"]
