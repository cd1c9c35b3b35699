"""One key rule per target (keys.key_for_target), the same in every command, held to the peers:
QEMU's UTF-8 rule for qcow2+LUKS secrets (real qemu-img), cryptsetup's --keyfile-size limit and
`open --test-passphrase` (real cryptsetup) for `verify --key-only`, vhd-util's key hash for the
encrypted VHD (the vhd-util samples)."""

from __future__ import annotations

import base64
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from lukspack.cloud.kms import wrap_plaintext
from lukspack.errors import KeyFileError
from lukspack.keys import key_for_target, new_key, vhd_key
from tests.helpers import FAST, Cli, cli_env, pattern_disk, run, tool
from tests.luks.luks_helpers import write_key
from tests.vhd_crypt.conftest import sample_keys, samples  # noqa: F401 (fixtures)

NOT_UTF8 = b"caf\xe9-passphrase"  # Latin-1 e-acute: what QEMU refuses
UTF8 = "pässwörd-ünïcode-ключ".encode()  # not ASCII, valid UTF-8: QEMU takes it


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pattern_disk(tmp_path_factory.mktemp("disk") / "disk.raw", 6)


def qemu_img_create_luks(out: Path, key: Path) -> subprocess.CompletedProcess[bytes]:
    """qemu-img's own qcow2+LUKS; its PBKDF calibration fails now and then on a loaded machine
    ("Unable to get accurate CPU usage"), so that one failure is retried."""
    for _ in range(5):
        p = run([tool("qemu-img"), "create", "-f", "qcow2", "--object",
                 f"secret,id=s0,file={key}", "-o",
                 "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", str(out), "4M"],
                check=False)
        if b"accurate CPU usage" not in p.stderr:
            return p
        out.unlink(missing_ok=True)
    return p


# -- the rule itself ---------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["vpc", "classic", "luks"])
@pytest.mark.parametrize("nbytes", [None, 32, 64])
def test_every_new_key_serves_its_target(target: str, nbytes: int | None) -> None:
    if target == "vpc" and nbytes is not None:
        with pytest.raises(Exception, match="--bytes does not apply"):
            new_key(target, nbytes)
        return
    key, _ = new_key(target, nbytes)
    meaning = key_for_target(target, key)
    assert not meaning.warnings and b"\n" not in key
    if target == "classic":
        assert len(vhd_key(key)) == (nbytes or 64)  # AES-256-XTS unless --bytes 32
        assert meaning.wrap_plaintext == key.decode()  # the base64 DEK IBM's docs wrap


def test_classic_base64_of_another_size_is_refused_by_every_command(tmp_path: Path,
                                                                     disk: Path) -> None:
    """64 base64 characters decode to 48 bytes: encrypt took them as a raw 64-byte key, then
    wrap-key refused them. Now every command refuses them, with the same reason."""
    key = write_key(tmp_path / "k", base64.b64encode(bytes(range(48))))
    cli = Cli(tmp_path)
    for err in (cli.fails("encrypt", disk, "o.vhd", "--key-file", key, "--no-progress"),
                cli.fails("keyhash", "--key-file", key)):
        assert "decodes to 48 bytes" in err, err
    assert not (tmp_path / "o.vhd").exists()
    with pytest.raises(KeyFileError, match="decodes to 48 bytes"):
        wrap_plaintext(key.read_bytes(), "classic")


def test_classic_raw_key_is_wrapped_as_its_base64(tmp_path: Path, disk: Path) -> None:
    raw = bytes(range(100, 164))  # vhd-util's form: the 64 key bytes themselves
    key = write_key(tmp_path / "raw.key", raw)
    cli = Cli(tmp_path)
    cli("encrypt", disk, "o.vhd", "--key-file", key, "--no-progress")
    cli("verify", "o.vhd", "--key-file", key, "--source", disk)
    # what IBM unwraps is the base64 DEK whose decoded bytes are this key
    assert base64.b64decode(wrap_plaintext(raw, "classic")) == raw


# -- VPC: QEMU's UTF-8 rule --------------------------------------------------------------------

def test_non_utf8_passphrase_refused_as_qemu_refuses_it(tmp_path: Path, disk: Path) -> None:
    bad = write_key(tmp_path / "bad.key", NOT_UTF8)
    q = qemu_img_create_luks(tmp_path / "qemu.qcow2", bad)
    assert q.returncode != 0 and b"not valid UTF-8" in q.stderr, q.stderr
    err = Cli(tmp_path).fails("encrypt", disk, "o.qcow2", "--key-file", bad, *FAST,
                              "--no-progress")
    assert "must be UTF-8" in err and not (tmp_path / "o.qcow2").exists()
    with pytest.raises(KeyFileError, match="UTF-8"):
        wrap_plaintext(NOT_UTF8, "vpc")



def test_a_nul_byte_is_refused_as_qemu_refuses_it(tmp_path: Path, disk: Path) -> None:
    """Valid UTF-8 with a NUL in it: QEMU still says "not valid UTF-8" (it validates the secret
    as a C string), so the image would open in lukspack and never in QEMU or VPC."""
    nul = write_key(tmp_path / "nul.key", b"abcdefghijklmnopqrstuvwxyz012345\0tail6789")
    q = qemu_img_create_luks(tmp_path / "qemu.qcow2", nul)
    assert q.returncode != 0 and b"not valid UTF-8" in q.stderr, q.stderr
    err = Cli(tmp_path).fails("encrypt", disk, "o.qcow2", "--key-file", nul, *FAST,
                              "--no-progress")
    assert "cannot hold a NUL byte (at byte 32)" in err and not (tmp_path / "o.qcow2").exists(), err
    with pytest.raises(KeyFileError, match="NUL"):
        wrap_plaintext(nul.read_bytes(), "vpc")

def test_utf8_passphrase_taken_as_qemu_takes_it(tmp_path: Path, disk: Path) -> None:
    from tests.images.flavours import qemu_compare_encrypted

    good = write_key(tmp_path / "good.key", UTF8)
    q = qemu_img_create_luks(tmp_path / "qemu.qcow2", good)
    assert q.returncode == 0, q.stderr
    p = Cli(tmp_path)("encrypt", disk, "o.qcow2", "--key-file", good, *FAST, "--no-progress")
    assert b"not a data encryption key" in p.stderr  # a warning, not a refusal
    qemu_compare_encrypted(tmp_path / "o.qcow2", good, disk)
    assert Cli(tmp_path)("verify", "--key-only", "qemu.qcow2", "--key-file", good).returncode == 0


def test_ibm_example_passphrase_is_a_warning_for_vpc(tmp_path: Path, disk: Path) -> None:
    key = write_key(tmp_path / "abc123", b"abc123")  # IBM's VPC example
    p = Cli(tmp_path)("encrypt", disk, "o.qcow2", "--key-file", key, *FAST, "--no-progress",
                      "--json")
    assert json.loads(p.stdout)["warnings"] and b"keygen --for vpc" in p.stderr
    assert wrap_plaintext(b"abc123", "vpc") == "YWJjMTIz"


def test_add_key_refuses_non_utf8_in_qcow2_only(tmp_path: Path, disk: Path) -> None:
    from tests.images.flavours import qemu_compare_encrypted

    key = write_key(tmp_path / "k", base64.b64encode(os.urandom(32)))
    bad = write_key(tmp_path / "bad", NOT_UTF8)
    good = write_key(tmp_path / "good", UTF8)
    cli = Cli(tmp_path)
    cli("encrypt", disk, "o.qcow2", "--key-file", key, *FAST, "--no-progress")
    before = (tmp_path / "o.qcow2").read_bytes()
    err = cli.fails("add-key", "o.qcow2", "--key-file", key, "--new-key-file", bad, *FAST)
    assert "must be UTF-8" in err and (tmp_path / "o.qcow2").read_bytes() == before
    cli("add-key", "o.qcow2", "--key-file", key, "--new-key-file", good, *FAST)
    cli("remove-key", "o.qcow2", "--key-file", key)
    qemu_compare_encrypted(tmp_path / "o.qcow2", good, disk)  # QEMU opens it with the new key
    # RAW LUKS: cryptsetup takes any bytes, so lukspack does too
    cli("encrypt", disk, "o.luks", "--key-file", key, *FAST, "--no-progress")
    cli("add-key", "o.luks", "--key-file", key, "--new-key-file", bad, *FAST)
    run([tool("cryptsetup"), "open", "--test-passphrase", "--key-file", str(bad),
         str(tmp_path / "o.luks")])


# -- --keyfile-size, as cryptsetup -------------------------------------------------------------

def test_keyfile_size_past_the_end_is_refused_as_cryptsetup_does(tmp_path: Path) -> None:
    from tests.luks.luks_helpers import cs_format

    key = write_key(tmp_path / "k", b"0123456789abcdef")
    img = cs_format(tmp_path / "l.img", key, 20 << 20, "--type", "luks1",
                    "--pbkdf-force-iterations", "1000")
    cs = run([tool("cryptsetup"), "open", "--test-passphrase", "--key-file", str(key), "-l", "17",
              str(img)], check=False)
    assert cs.returncode != 0 and b"Cannot read requested amount of data" in cs.stderr
    cli = Cli(tmp_path)
    err = cli.fails("verify", "--key-only", img, "--key-file", key, "-l", "17")
    assert "--keyfile-size 17 is larger than the 16 bytes" in err
    err = cli.fails("verify", "--key-only", img, "--key-file", key, "--keyfile-offset", "4",
                    "-l", "13")
    assert "12 bytes the key file has after --keyfile-offset 4" in err
    assert cli("verify", "--key-only", img, "--key-file", key, "-l", "16").returncode == 0


# -- verify --key-only, as cryptsetup open --test-passphrase ----------------------------------

@pytest.mark.parametrize("kind", ["luks1", "luks2", "qcow2"])
def test_key_only_against_images_the_peers_made(tmp_path: Path, kind: str) -> None:
    from tests.luks.luks_helpers import cs_format

    right = write_key(tmp_path / "right", b"right passphrase")
    wrong = write_key(tmp_path / "wrong", b"wrong passphrase")
    if kind == "qcow2":
        img = tmp_path / "q.qcow2"
        assert qemu_img_create_luks(img, right).returncode == 0
    else:
        img = cs_format(tmp_path / f"{kind}.img", right, 20 << 20, "--type", kind,
                        "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
        for key, code in ((right, 0), (wrong, 2)):  # cryptsetup's own answer
            cs = run([tool("cryptsetup"), "open", "--test-passphrase", "--key-file", str(key),
                      str(img)], check=False)
            assert cs.returncode == code, cs.stderr
    cli = Cli(tmp_path)
    p = cli("verify", "--key-only", img, "--key-file", right, "--json")
    r = json.loads(p.stdout)
    assert r["key_opens"] is True and "disk_sha256" not in r  # nothing decrypted
    err = cli.fails("verify", "--key-only", img, "--key-file", wrong)
    assert "Traceback" not in err
    assert cli.fails("verify", "--key-only", img, "--key-file", right, "--source", img, code=2)


def test_key_only_against_the_vhd_util_samples(samples: Path,  # noqa: F811
                                               sample_keys: dict[str, Path]) -> None:  # noqa: F811
    cli = Cli(samples)
    for key in ("aes256.key", "aes256.dek"):
        p = cli("verify", "--key-only", "vs-aes256.vhd", "--key-file", sample_keys[key])
        assert b"nothing decrypted" in p.stdout
    err = cli.fails("verify", "--key-only", "vs-aes256.vhd", "--key-file",
                    sample_keys["aes128.key"])
    assert "key hash" in err


# -- keygen ------------------------------------------------------------------------------------

def test_keygen_dash_writes_to_standard_output(tmp_path: Path) -> None:
    p = Cli(tmp_path)("keygen", "-", "--for", "classic")
    assert not (tmp_path / "-").exists()
    assert len(base64.b64decode(p.stdout, validate=True)) == 64 and b"standard output" in p.stderr


def test_keygen_dash_on_a_terminal_is_refused(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "lukspack", "keygen", "-"], cwd=tmp_path,
                           env=cli_env(), stdout=follower, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert p.returncode == 1 and b"refusing to print a key on a terminal" in p.stderr
    assert not (tmp_path / "-").exists()



@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_keygen_dash_unwritable_standard_output_is_one_line(tmp_path: Path, stdout: str) -> None:
    """A full device or a closed standard output: one error line, exit 1, no traceback, and no
    "wrote a key" (nothing was written)."""
    with open("/dev/full", "wb") as full:
        p = subprocess.run([sys.executable, "-m", "lukspack", "keygen", "-"], cwd=tmp_path,
                           env=cli_env(), stdout=full if stdout == "full" else None,
                           stderr=subprocess.PIPE, timeout=60,
                           preexec_fn=None if stdout == "full" else lambda: os.close(1))
    err = p.stderr.decode()
    assert p.returncode == 1 and "Traceback" not in err and "Exception" not in err, err
    assert err.count("\n") == 1 and "-: cannot write the key to standard output" in err, err
    assert "wrote" not in err and not (tmp_path / "-").exists()


def test_keygen_empty_name_is_a_usage_error(tmp_path: Path) -> None:
    err = Cli(tmp_path).fails("keygen", "", code=2)
    assert "name a file to write the new key to" in err and os.listdir(tmp_path) == []


def test_a_result_on_a_full_standard_output_is_one_line(tmp_path: Path) -> None:
    Cli(tmp_path)("sample", "s.raw", "--size", "4")
    with open("/dev/full", "wb") as full:
        p = subprocess.run([sys.executable, "-m", "lukspack", "info", "--json", "s.raw"],
                           cwd=tmp_path, env=cli_env(), stdout=full, stderr=subprocess.PIPE,
                           timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 1 and "Traceback" not in err and err.count("\n") == 1, err
    assert "standard output: cannot write the result: No space left on device" in err

def test_verify_says_qemu_cannot_use_a_non_utf8_slot(tmp_path: Path, disk: Path) -> None:
    """An image whose slot holds a non-UTF-8 passphrase (what add-key wrote before the rule):
    lukspack opens it and says QEMU will not, as qemu-img shows."""
    from lukspack.luks import keyslots
    from lukspack.luks.format import KdfOptions

    key = write_key(tmp_path / "k", base64.b64encode(os.urandom(32)))
    bad = write_key(tmp_path / "bad", NOT_UTF8)
    cli = Cli(tmp_path)
    cli("encrypt", disk, "o.qcow2", "--key-file", key, *FAST, "--no-progress")
    with keyslots._open_rw(str(tmp_path / "o.qcow2")) as t:  # the old add-key, without the rule
        keyslots._add_luks1(t, t.vol.header, key.read_bytes(), NOT_UTF8,
                            KdfOptions(force_iterations=1000), None)
    for args in (["--key-only"], ["--source", str(disk)]):
        p = cli("verify", "o.qcow2", "--key-file", bad, *args)
        assert b"QEMU and IBM Cloud VPC do not" in p.stdout and b"UTF-8" in p.stdout
    q = run([tool("qemu-img"), "compare", "--object", f"secret,id=s0,file={bad}", "--image-opts",
             f"driver=qcow2,encrypt.key-secret=s0,file.filename={tmp_path / 'o.qcow2'}",
             f"driver=raw,file.filename={disk}"], check=False)
    assert q.returncode != 0 and b"not valid UTF-8" in q.stderr
    assert b"note:" not in cli("verify", "o.qcow2", "--key-file", key, "--key-only").stdout
