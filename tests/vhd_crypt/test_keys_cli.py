"""Encrypted-VHD keys: the key-file forms, `lukspack keygen --for`, `lukspack keyhash` (printed
exactly as `vhd-util key -C` / `key -p` print, per the vectors README and IBM's docs)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from lukspack.errors import KeyFileError
from lukspack.keys import decode_vhd_key, dek_rule_broken, generate_passphrase
from tests.helpers import Cli
from tests.luks.luks_helpers import write_key
from tests.vhd_crypt.drive import IBM_EXAMPLE_DEK, IBM_EXAMPLE_HASH, KEY_HASHES, VECTORS, lk

# -- key-file forms ----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [32, 64])
def test_base64_and_raw_forms(n: int) -> None:
    raw = os.urandom(n)
    text = base64.b64encode(raw)
    assert decode_vhd_key(text) == raw
    assert decode_vhd_key(text + b"\n") == raw  # `echo DEK > FILE`
    assert decode_vhd_key(raw) == raw


def test_base64_text_of_another_size_is_never_a_raw_key() -> None:
    text = b"A" * 64  # 64 bytes, but base64 text decoding to 48: refused, never the raw key
    with pytest.raises(KeyFileError, match="decodes to 48 bytes"):
        decode_vhd_key(text, name="k.key")


@pytest.mark.parametrize("data", [b"", b"x" * 31, b"x" * 63, b"y" * 65,
                                  base64.b64encode(bytes(40)), base64.b64encode(bytes(16))])
def test_other_sizes_are_refused_in_one_line(data: bytes) -> None:
    with pytest.raises(KeyFileError) as e:
        decode_vhd_key(data, name="k.key")
    assert str(e.value).startswith("k.key: not an encrypted-VHD key") and "\n" not in str(e.value)


# -- keygen ------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["vhd", "classic"])
@pytest.mark.parametrize("nbytes", [None, "32", "64"])
def test_keygen_for_vhd(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str,
                        nbytes: str | None) -> None:
    key = tmp_path / "k"
    args = ["keygen", str(key), "--for", target] + (["--bytes", nbytes] if nbytes else [])
    code, out, err = lk(capsys, *args)
    assert code == 0 and out == ""
    data = key.read_bytes()
    want = int(nbytes or 64)
    assert len(base64.b64decode(data, validate=True)) == want and b"\n" not in data
    assert len(decode_vhd_key(data)) == want
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert f"AES-{want * 4}-XTS" in err


def test_keygen_for_vpc_is_a_printable_passphrase(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "p"
    assert lk(capsys, "keygen", str(key), "--for", "vpc")[0] == 0
    data = key.read_bytes()
    assert len(data) == 44 and data.isalnum() and b"\n" not in data
    assert dek_rule_broken(data) is None  # `lukspack encrypt` takes it as it takes a DEK
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert generate_passphrase() != generate_passphrase()
    code, _, err = lk(capsys, "keygen", str(tmp_path / "q"), "--for", "vpc", "--bytes", "32")
    assert code == 2 and "--bytes does not apply" in err


def test_keygen_default_is_still_the_luks_dek(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "d"
    assert lk(capsys, "keygen", str(key))[0] == 0
    data = key.read_bytes()
    assert len(data) == 44 and len(base64.b64decode(data)) == 32 and dek_rule_broken(data) is None


def test_keygen_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = write_key(tmp_path / "k", b"keep me")
    code, out, err = lk(capsys, "keygen", str(key), "--for", "vhd")
    assert code == 1 and "already exists" in err and err.count("\n") == 1
    assert key.read_bytes() == b"keep me"


# -- keyhash -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(KEY_HASHES))
@pytest.mark.parametrize("form", ["key", "dek"])
def test_keyhash_prints_what_vhd_util_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              name: str, form: str, samples: Path) -> None:
    key = write_key(tmp_path / f"{name}.{form}", (VECTORS / f"{name}.{form}").read_bytes())
    code, out, err = lk(capsys, "keyhash", "--key-file", str(key))
    assert (code, out, err) == (0, KEY_HASHES[name] + "\n", "")


def test_keyhash_of_ibm_documented_example(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    dek = write_key(tmp_path / "aes512.dek", IBM_EXAMPLE_DEK)
    assert lk(capsys, "keyhash", "--key-file", str(dek))[1] == IBM_EXAMPLE_HASH + "\n"
    raw = write_key(tmp_path / "aes512.key", base64.b64decode(IBM_EXAMPLE_DEK))
    assert lk(capsys, "keyhash", "--key-file", str(raw))[1] == IBM_EXAMPLE_HASH + "\n"
    out = lk(capsys, "keyhash", "--key-file", str(raw), "--nonce", "01" * 32)[1]
    assert len(out) == 65 and out != IBM_EXAMPLE_HASH + "\n"


def test_keyhash_of_an_image_is_vhd_util_key_p(samples: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = lk(capsys, "keyhash", str(samples / "vs-aes256.vhd"))
    assert (code, out) == (0, "0" * 64 + " " + KEY_HASHES["aes256"] + "\n")


def test_keyhash_checks_a_key_against_an_image(samples: Path, sample_keys: dict[str, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = lk(capsys, "keyhash", str(samples / "vs-aes128.vhd"), "--key-file",
                      str(sample_keys["aes128.dek"]))
    assert code == 0 and "the key matches" in out and "AES-128-XTS" in out
    code, out, err = lk(capsys, "keyhash", str(samples / "vs-aes128.vhd"), "--key-file",
                        str(sample_keys["aes256.key"]))
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("lukspack: error: ") and "does not match the image's key hash" in err


def test_keyhash_usage_and_bad_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lk(capsys, "keyhash")[0] == 2
    bad = write_key(tmp_path / "bad.key", b"0123456789")
    code, out, err = lk(capsys, "keyhash", "--key-file", str(bad))
    assert code == 1 and out == "" and f"{bad}: not an encrypted-VHD key: 10 bytes" in err
    assert lk(capsys, "keyhash", "--key-file", str(bad), "--nonce", "zz")[0] == 2


def test_keyhash_subprocess_exit_codes(tmp_path: Path, samples: Path) -> None:
    cli = Cli(tmp_path)
    key = write_key(tmp_path / "k", (VECTORS / "aes256.key").read_bytes())
    assert cli("keyhash", "--key-file", key).stdout.decode() == KEY_HASHES["aes256"] + "\n"
    err = cli.fails("keyhash", samples / "vs.vhd")  # a plain qemu VHD: no key hash
    assert "is not 'tap'" in err
    cli.fails("keyhash", code=2)


def test_key_jobs_from_python(tmp_path: Path, samples: Path, sample_keys: dict[str, Path]) -> None:
    """lukspack.api.keys: what the commands call, with the same rules and typed errors."""
    from lukspack.api import KeySource, exit_code
    from lukspack.api.keys import KeygenRequest, KeyhashRequest, keygen, keyhash
    from lukspack.errors import UsageError

    dek = write_key(tmp_path / "aes512.dek", IBM_EXAMPLE_DEK)
    assert keyhash(KeyhashRequest(key=KeySource(str(dek)))).key_hash == IBM_EXAMPLE_HASH
    r = keyhash(KeyhashRequest(str(samples / "vs-aes256.vhd")))
    assert (r.nonce, r.key_hash, r.matches) == ("0" * 64, KEY_HASHES["aes256"], None)
    r = keyhash(KeyhashRequest(str(samples / "vs-aes128.vhd"),
                               KeySource(str(sample_keys["aes128.dek"]))))
    assert r.matches is True and r.key_bits == 256
    for bad in ({}, {"image": "x.vhd", "nonce": "00" * 32}, {"key": KeySource(str(dek)),
                                                             "nonce": "zz"}):
        with pytest.raises(UsageError) as e:
            KeyhashRequest(**bad)  # type: ignore[arg-type]
        assert exit_code(e.value) == 2
    out = tmp_path / "new.dek"
    g = keygen(KeygenRequest(str(out), "classic"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and g.where == f"{out} (mode 0600)"
    assert len(decode_vhd_key(bytearray(out.read_bytes()), name="new")) == 64
    with pytest.raises(KeyFileError):
        keygen(KeygenRequest(str(out)))  # never over an existing file
    with pytest.raises(UsageError):
        KeygenRequest(str(tmp_path / "x"), "aws")
