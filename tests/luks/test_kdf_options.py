"""KDF options are checked before any output exists (issue 10), with cryptsetup's limits and
cryptsetup as the oracle: costs that do not fit the 32-bit fields, an --iter-time whose PBKDF2
count would not fit them, and combinations that cannot work (usage errors, exit 2)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lukspack.errors import UnsupportedError, UsageError
from lukspack.luks import kdf, luks1
from lukspack.luks.format import KdfOptions, plan_header
from lukspack.luks.keyslots import add_key
from tests.helpers import MiB, cryptsetup, leftovers, pattern_disk
from tests.luks.luks_helpers import cs_format, write_key

BIG = "5000000000"  # over 2^32


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """lukspack in-process: (exit code, stderr)."""
    from lukspack.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    return int(e.value.code or 0), capsys.readouterr().err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("lukspack: warning:")]
    assert len(lines) == 1 and lines[0].startswith(("lukspack: error: ",
                                                    "lukspack: usage error: ")), err
    assert "Traceback" not in err and "OverflowError" not in err
    return lines[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pattern_disk(tmp_path_factory.mktemp("src") / "src.raw", 4)


@pytest.mark.parametrize(("args", "message"), [
    (["--type", "luks1", "--pbkdf-force-iterations", BIG], f"{BIG} is above the maximum"),
    (["--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", BIG], "above the max"),
    (["--type", "luks2", "--pbkdf", "argon2id", "--pbkdf-force-iterations", BIG], "above the max"),
    (["--type", "luks1", "--iter-time", "5000000"], "above the maximum 4294967295 of a key slot"),
    (["--type", "luks2", "--pbkdf", "pbkdf2", "--iter-time", "5000000"], "of a key slot"),
    (["--type", "luks1", "--iter-time", BIG], f"--iter-time {BIG} is outside 1..4294967295"),
])
@pytest.mark.parametrize("suffix", [".img", ".qcow2"])
def test_costs_out_of_range_fail_before_any_output(capsys: pytest.CaptureFixture[str],
                                                   session_keyfile: Path, source: Path,
                                                   tmp_path: Path, args: list[str], message: str,
                                                   suffix: str) -> None:
    """Before: an OverflowError traceback after the whole payload was written."""
    if suffix == ".qcow2" and "luks2" in args:
        args = ["--type", "luks1", *args[2:]]
        if "argon2id" in args:
            return  # qcow2 holds LUKS1: that is the usage error below
        args = [a for a in args if a not in ("--pbkdf", "pbkdf2")]
    out = tmp_path / f"out{suffix}"
    start = time.monotonic()
    code, err = run_cli(capsys, "encrypt", source, out, "--key-file", session_keyfile, *args)
    assert code == 1 and message in one_line(err)
    assert not out.exists() and not leftovers(tmp_path)
    assert time.monotonic() - start < 20  # no payload, no hour-long derivation


def test_cryptsetup_refuses_the_same_costs(session_keyfile: Path, tmp_path: Path) -> None:
    image = tmp_path / "cs.img"
    image.write_bytes(bytes(4 * MiB))
    for args in (["--type", "luks1", "--pbkdf-force-iterations", BIG],
                 ["--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", BIG],
                 ["--type", "luks1", "--iter-time", "5000000"]):
        p = cryptsetup("luksFormat", "-q", "--key-file", str(session_keyfile), *args, str(image),
                       check=False)
        assert p.returncode != 0, args
    assert image.read_bytes() == bytes(4 * MiB)


@pytest.mark.parametrize(("args", "message", "want"), [
    (["--type", "luks1", "--pbkdf", "argon2id"], "LUKS1 key slots use pbkdf2 only", 2),
    (["--type", "luks2", "--hash", "md5x"], "md5x", 2),
    (["--type", "luks1", "--hash", "whirlpool9"], "whirlpool9", 2),
    (["--type", "luks1", "--pbkdf-memory", "65536"], "do not apply to pbkdf2", 2),  # a conflict
])
@pytest.mark.parametrize("suffix", [".img", ".qcow2"])
def test_impossible_combinations_are_usage_errors(capsys: pytest.CaptureFixture[str],
                                                  session_keyfile: Path, source: Path,
                                                  tmp_path: Path, args: list[str], message: str,
                                                  want: int, suffix: str) -> None:
    if suffix == ".qcow2":
        args = ["--type", "luks1", *args[2:]]
    out = tmp_path / f"out{suffix}"
    code, err = run_cli(capsys, "encrypt", source, out, "--key-file", session_keyfile, *args)
    assert code == want and message in one_line(err)
    assert not out.exists() and not leftovers(tmp_path)


def test_add_key_checks_options_before_unlocking(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    """add-key refuses bad options before the (slow) unlock and changes nothing."""
    key = write_key(tmp_path / "k", b"old")
    new = write_key(tmp_path / "new", b"new")
    image = cs_format(tmp_path / "l1.img", key, 4 * MiB, "--type", "luks1",
                      "--pbkdf-force-iterations", "1000")
    before = image.read_bytes()
    for args, code, message in ((["--pbkdf", "argon2id"], 2, "pbkdf2 only"),
                                (["--pbkdf-force-iterations", BIG], 1, "above the maximum"),
                                (["--iter-time", BIG], 1, "is outside 1..4294967295")):
        got, err = run_cli(capsys, "add-key", image, "--key-file", key, "--new-key-file", new,
                           *args)
        assert got == code and message in one_line(err)
    assert image.read_bytes() == before


def test_the_checks_themselves() -> None:
    with pytest.raises(UnsupportedError, match="above the maximum 4294967295"):
        KdfOptions(force_iterations=1 << 32).check("luks1")
    with pytest.raises(UnsupportedError, match="above the maximum"):
        KdfOptions(force_iterations=1 << 32, pbkdf="argon2i").check("luks2")
    KdfOptions(force_iterations=(1 << 32) - 1).check("luks1")  # the largest that fits
    with pytest.raises(UsageError):
        KdfOptions(pbkdf="argon2id").check("luks1")
    with pytest.raises(UsageError):
        KdfOptions(hash="md4x").check("luks2")
    with pytest.raises(UnsupportedError, match="512-byte sectors only"):
        plan_header("luks1", KdfOptions(), sector_size=4096)
    with pytest.raises(UsageError, match="--type luks3"):
        plan_header("luks3", KdfOptions())
    assert UsageError.exit_code == 2
    with pytest.raises(UnsupportedError, match="outside 1..4294967295"):  # never OverflowError
        luks1.format_luks1(bytes(64), b"pw", slot_iterations=1 << 32, digest_iterations=1000)
    with pytest.raises(UnsupportedError, match="of a key slot"):
        kdf.pbkdf2_cost("sha256", 64, iter_time_ms=(1 << 32) - 1)


def test_library_add_key_refuses_before_writing(tmp_path: Path) -> None:
    key = write_key(tmp_path / "k", b"old")
    image = cs_format(tmp_path / "l1.img", key, 4 * MiB, "--type", "luks1",
                      "--pbkdf-force-iterations", "1000")
    before = image.read_bytes()
    with pytest.raises(UnsupportedError, match="above the maximum"):
        add_key(str(image), b"old", b"new", KdfOptions(hash=None, force_iterations=1 << 33))
    assert image.read_bytes() == before
