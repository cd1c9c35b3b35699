"""qcow2+LUKS outputs (what IBM Cloud VPC imports), checked by qemu: `qemu-img info` sees an
encrypted qcow2 with LUKS, `qemu-img compare` with the key finds it identical to the source,
`qemu-img check` finds it clean; holes cost nothing; verify/decrypt/info read lukspack's and
qemu-img's qcow2+LUKS images."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path

import pytest

from tests.helpers import (
    FAST,
    Cli,
    InProcessCli,
    MiB,
    cryptsetup,
    leftovers,
    pattern_disk,
    qemu_img,
    qemu_luks_decrypt,
    run,
    same_prefix,
    tool,
)
from tests.images.flavours import qemu_check_encrypted, qemu_compare_encrypted

QEMU_LUKS_HEADER = 2068480  # qemu's LUKS1 header area in qcow2: payload offset 4040 sectors


@pytest.fixture(scope="module")
def keyfile(session_keyfile: Path) -> Path:
    return session_keyfile


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, keyfile: Path) -> tuple[Path, Path, dict]:
    """(source, output, --json summary) of one encryption, shared by the read-only checks."""
    d = tmp_path_factory.mktemp("qcow2out")
    src = pattern_disk(d / "source.raw", 16)
    out = d / "disk.qcow2"
    p = InProcessCli(d)("encrypt", str(src), str(out), "--key-file", str(keyfile), "--json", *FAST)
    return src, out, json.loads(p.stdout)


@pytest.fixture(scope="module")
def qemu_made(tmp_path_factory: pytest.TempPathFactory, keyfile: Path) -> tuple[Path, Path]:
    """(source, qcow2+LUKS image of it made by qemu-img convert)."""
    d = tmp_path_factory.mktemp("qemumade")
    src = pattern_disk(d / "source.raw", 6)
    enc = d / "qemu.qcow2"
    qemu_img("convert", "--object", f"secret,id=s0,file={keyfile}", "-f", "raw", "-O", "qcow2",
             "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", str(src),
             str(enc))
    return src, enc


def qemu_info(path: Path) -> dict:
    return json.loads(qemu_img("info", "--output=json", str(path)).stdout)


def test_qemu_info_reports_encrypted_qcow2_with_luks(written: tuple[Path, Path, dict]) -> None:
    src, out, _ = written
    info = qemu_info(out)
    assert info["format"] == "qcow2" and info["encrypted"] is True
    assert info["virtual-size"] == src.stat().st_size
    data = info["format-specific"]["data"]
    assert data["compat"] == "1.1"
    enc = data["encrypt"]
    assert enc["format"] == "luks"
    assert (enc["cipher-alg"], enc["cipher-mode"], enc["ivgen-alg"], enc["hash-alg"]) == \
        ("aes-256", "xts", "plain64", "sha256")
    assert enc["payload-offset"] == QEMU_LUKS_HEADER
    assert [s["active"] for s in enc["slots"]] == [True] + [False] * 7


def test_qemu_compare_says_identical(written: tuple[Path, Path, dict], keyfile: Path) -> None:
    src, out, _ = written
    qemu_compare_encrypted(out, keyfile, src)


def test_qemu_check_is_clean(written: tuple[Path, Path, dict], keyfile: Path) -> None:
    _, out, _ = written
    report = qemu_check_encrypted(out, keyfile)
    assert "leaked" not in report
    assert f"Image end offset: {out.stat().st_size}" in report


def test_summary_describes_the_file(written: tuple[Path, Path, dict]) -> None:
    src, out, s = written
    assert s["output_format"] == "qcow2" and s["type"] == "luks1" and s["verified"] is True
    assert s["total_bytes"] == out.stat().st_size
    assert s["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert s["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    # pattern_disk(16): MiB 0, 3, 7, 11, 15 are zeros and are not stored
    assert s["payload_bytes"] == 11 * MiB


def test_mostly_empty_source_gives_a_small_file(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    src = tmp_path / "sparse.raw"
    with open(src, "wb") as f:
        f.truncate(1 << 30)
        f.seek(300 * MiB)
        f.write(secrets.token_bytes(2 * MiB))
        f.seek((1 << 30) - 65536)
        f.write(b"end of disk".ljust(65536, b"."))
    out = tmp_path / "sparse.qcow2"
    cli("encrypt", str(src), str(out), "--key-file", str(keyfile), "--no-verify", *FAST)
    size = out.stat().st_size
    # 2 MiB of LUKS header + 2 MiB + 64 KiB of data + header, L1, 2 L2 tables and refcounts
    assert size <= 4 * MiB + 64 * 1024 + 6 * 65536, size
    assert out.stat().st_blocks * 512 <= size + 65536
    assert qemu_info(out)["virtual-size"] == 1 << 30
    qemu_compare_encrypted(out, keyfile, src)
    qemu_check_encrypted(out, keyfile)


def test_output_format_option_overrides_the_suffix(tmp_path: Path, cli: Cli,
                                                   keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "source.raw", 4)
    as_qcow2 = tmp_path / "disk.img"
    cli("encrypt", str(src), str(as_qcow2), "--key-file", str(keyfile), "--output-format",
        "qcow2", *FAST)
    assert as_qcow2.read_bytes()[:4] == b"QFI\xfb"
    qemu_compare_encrypted(as_qcow2, keyfile, src)
    as_raw = tmp_path / "disk.qcow2"
    cli("encrypt", str(src), str(as_raw), "--key-file", str(keyfile), "--output-format", "raw",
        *FAST)
    assert as_raw.read_bytes()[:6] == b"LUKS\xba\xbe"
    cryptsetup("isLuks", str(as_raw))
    assert same_prefix(qemu_luks_decrypt(as_raw, keyfile, tmp_path / "plain.raw"), src)


@pytest.mark.parametrize("option", [["--pbkdf", "argon2id"], ["--pbkdf-memory", "65536"]])
def test_kdf_options_qemu_luks_cannot_hold_are_refused_first(tmp_path: Path, cli: Cli,
                                                             keyfile: Path,
                                                             option: list[str]) -> None:
    src = pattern_disk(tmp_path / "source.raw", 2)
    err = cli.fails("encrypt", str(src), str(tmp_path / "o.qcow2"), "--key-file", str(keyfile),
                    *option, code=2)  # both conflict with qcow2's LUKS1 (pbkdf2) key slots
    assert "pbkdf" in err.lower() and not (tmp_path / "o.qcow2").exists()
    assert leftovers(tmp_path) == []


def test_size_that_is_not_whole_clusters(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "odd.raw", 3, tail=7 * 512)
    out = tmp_path / "odd.qcow2"
    cli("encrypt", str(src), str(out), "--key-file", str(keyfile), *FAST)
    assert qemu_info(out)["virtual-size"] == src.stat().st_size
    qemu_compare_encrypted(out, keyfile, src)
    qemu_check_encrypted(out, keyfile)


def test_size_that_is_not_whole_sectors_rounds_up(tmp_path: Path, cli: Cli,
                                                  keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "odd.raw", 2, tail=1000)
    out = tmp_path / "odd.qcow2"
    cli("encrypt", str(src), str(out), "--key-file", str(keyfile), *FAST)
    assert qemu_info(out)["virtual-size"] == 2 * MiB + 1024
    cli("verify", str(out), "--key-file", str(keyfile), "--source", str(src))
    plain = tmp_path / "plain.raw"
    cli("decrypt", str(out), str(plain), "--key-file", str(keyfile))
    data = plain.read_bytes()
    assert data[: 2 * MiB + 1000] == src.read_bytes() and data[2 * MiB + 1000 :] == bytes(24)


def test_lukspack_reads_qemu_made_qcow2_luks(qemu_made: tuple[Path, Path], tmp_path: Path,
                                             cli: Cli, keyfile: Path) -> None:
    src, enc = qemu_made
    p = cli("verify", str(enc), "--key-file", str(keyfile), "--source", str(src))
    assert b"matches" in p.stdout
    plain = tmp_path / "plain.raw"
    cli("decrypt", str(enc), str(plain), "--key-file", str(keyfile))
    assert plain.read_bytes() == src.read_bytes()
    assert plain.stat().st_mode & 0o077 == 0
    d = json.loads(cli("info", str(enc), "--json").stdout)
    assert d["format"] == "qcow2" and d["qcow2"]["encrypted"] is True
    assert d["encryption"]["format"] == "luks" and d["encryption"]["payload_offset"] == 4040
    assert d["qcow2"]["crypto_header"]["length"] == QEMU_LUKS_HEADER


def test_same_luks_layout_as_qemu(written: tuple[Path, Path, dict], qemu_made: tuple[Path, Path],
                                  cli: Cli) -> None:
    _, out, _ = written
    ours = json.loads(cli("info", str(out), "--json").stdout)["encryption"]
    theirs = json.loads(cli("info", str(qemu_made[1]), "--json").stdout)["encryption"]
    for field in ("cipher_name", "cipher_mode", "hash_spec", "payload_offset", "mk_bits"):
        assert ours[field] == theirs[field], field
    assert [s.get("key_material_offset") for s in ours["key_slots"]][:1] == \
        [s.get("key_material_offset") for s in theirs["key_slots"]][:1]


def test_lukspack_decrypts_and_verifies_its_own(written: tuple[Path, Path, dict], tmp_path: Path,
                                                cli: Cli, keyfile: Path) -> None:
    src, out, _ = written
    plain = tmp_path / "plain.raw"
    cli("decrypt", str(out), str(plain), "--key-file", str(keyfile))
    assert plain.read_bytes() == src.read_bytes()
    other = pattern_disk(tmp_path / "other.raw", 16, seed=9)
    err = cli.fails("verify", str(out), "--key-file", str(keyfile), "--source", str(other))
    assert "does not decrypt to" in err


def test_wrong_key_is_one_line(written: tuple[Path, Path, dict], tmp_path: Path,
                               cli: Cli) -> None:
    _, out, _ = written
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(base64.b64encode(secrets.token_bytes(32)))
    wrong.chmod(0o600)
    err = cli.fails("verify", str(out), "--key-file", str(wrong))
    assert "no key slot opens" in err


def test_tampered_cluster_fails_verification(written: tuple[Path, Path, dict], tmp_path: Path,
                                             cli: Cli, keyfile: Path) -> None:
    src, out, _ = written
    bad = tmp_path / "tampered.qcow2"
    data = bytearray(out.read_bytes())
    data[2 * MiB + 3 * 65536 + 100] ^= 1  # a data cluster after the LUKS header and L1
    bad.write_bytes(data)
    err = cli.fails("verify", str(bad), "--key-file", str(keyfile), "--source", str(src))
    assert "tampered.qcow2" in err and "does not decrypt" in err


def test_convert_to_plain_qcow2(tmp_path: Path, cli: Cli) -> None:
    src = pattern_disk(tmp_path / "source.raw", 8)
    out = tmp_path / "plain.qcow2"
    cli("convert", str(src), str(out), "--to", "qcow2")
    assert b"No errors were found" in qemu_img("check", str(out)).stdout
    assert b"identical" in qemu_img("compare", "-f", "qcow2", "-F", "raw", str(out),
                                    str(src)).stdout
    assert out.stat().st_size < 7 * MiB  # MiB 0, 3 and 7 are zeros and are not stored
    info = qemu_info(out)
    assert info["format"] == "qcow2" and not info.get("encrypted")


def test_qemu_made_with_small_clusters_and_zero_clusters(tmp_path: Path, cli: Cli,
                                                         keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "source.raw", 4)
    enc = tmp_path / "small.qcow2"
    qemu_img("convert", "--object", f"secret,id=s0,file={keyfile}", "-f", "raw", "-O", "qcow2",
             "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,"
             "cluster_size=4096", str(src), str(enc))
    opts = f"driver=qcow2,encrypt.key-secret=s0,file.filename={enc}"
    run([tool("qemu-io"), "--object", f"secret,id=s0,file={keyfile}", "-c", "write -z 1M 64k",
         "-c", "write -P 0x42 2M 6k", "--image-opts", opts])
    ref = tmp_path / "ref.raw"
    qemu_img("convert", "--object", f"secret,id=s0,file={keyfile}", "--image-opts", opts, "-O",
             "raw", str(ref))
    d = json.loads(cli("info", str(enc), "--json").stdout)
    assert d["qcow2"]["cluster_size"] == 4096 and d["qcow2"]["clusters"]["zero"] == 16
    cli("verify", str(enc), "--key-file", str(keyfile), "--source", str(ref))
    plain = tmp_path / "plain.raw"
    cli("decrypt", str(enc), str(plain), "--key-file", str(keyfile))
    assert plain.read_bytes() == ref.read_bytes() and plain.read_bytes()[2 * MiB] == 0x42
