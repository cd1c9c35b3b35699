"""Headers cryptsetup loads but lukspack cannot decrypt (issue 10): `info` dumps them as
`cryptsetup luksDump` does; only opening the payload (verify, decrypt) refuses, with the reason.
And refusals say what a header is in words, never as a Python bytes repr."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lukspack.errors import FormatError, LukspackError, UnsupportedError
from lukspack.luks import open_luks_path
from tests.helpers import MiB, cryptsetup, leftovers, pattern_disk
from tests.luks.luks_helpers import cs_dump, cs_format, cs_opens

HDR = 16384
HUGE = 18446744073709551104  # 2^64 - 512: a valid u64, aligned, far past any file


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    from lukspack.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if not x.startswith("lukspack: warning:")]
    assert len(lines) == 1 and lines[0].startswith("lukspack: error: "), err
    assert "b'" not in lines[0] and "\\x" not in lines[0], lines[0]  # no bytes reprs
    return lines[0]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, session_keyfile: Path) -> Path:
    from tests.helpers import Cli

    d = tmp_path_factory.mktemp("unusual")
    src = pattern_disk(d / "src.raw", 2)
    Cli(d)("encrypt", src, d / "l2.img", "--key-file", session_keyfile, "--type", "luks2",
           "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
    return d / "l2.img"


def edit(image: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the JSON of both copies and re-sum them, as a writer would."""
    data = bytearray(image.read_bytes())
    j = json.loads(bytes(data[4096:HDR]).rstrip(b"\0"))
    change(j)
    text = json.dumps(j, separators=(",", ":")).encode()
    for at in (0, HDR):
        area = data[at : at + HDR]
        area[4096:] = text + bytes(HDR - 4096 - len(text))
        area[448:512] = bytes(64)
        area[448:480] = hashlib.sha256(area).digest()
        data[at : at + HDR] = area
    image.write_bytes(data)


def _unknown_type(j: dict[str, Any]) -> None:
    j["segments"]["0"]["type"] = "linear-x"


def _two_segments(j: dict[str, Any]) -> None:
    s = j["segments"]["0"]
    j["segments"]["0"] = dict(s, size=str(MiB))
    j["segments"]["1"] = dict(s, offset=str(16 * MiB + MiB))
    j["digests"]["0"]["segments"] = ["0", "1"]


def _huge(j: dict[str, Any]) -> None:
    j["segments"]["0"]["size"] = str(HUGE)


def cs_segments(image: Path) -> list[tuple[str, str, int, int | str]]:
    """(id, type, offset, length or "dynamic") of each data segment, from luksDump's text."""
    text = cs_dump(image).split("Data segments:", 1)[1].split("Keyslots:", 1)[0]
    out = []
    for m in re.finditer(r"^  (\d+): (\S+)\n\toffset: (\d+) \[bytes\]\n\tlength: (.+)$", text,
                         re.MULTILINE):
        length = m[4].strip()
        out.append((m[1], m[2], int(m[3]),
                    "dynamic" if length == "(whole device)" else int(length.split()[0])))
    return out


CASES = {
    "unknown segment type": (_unknown_type, UnsupportedError, "segment type 'linear-x'"),
    "two segments": (_two_segments, UnsupportedError, "LUKS2 with 2 segments"),
    "segment length 2^64-512": (_huge, FormatError, f"size {HUGE}) ends past the end"),
}


@pytest.mark.parametrize(("change", "error", "reason"), CASES.values(), ids=CASES.keys())
def test_info_dumps_what_luksdump_dumps(capsys: pytest.CaptureFixture[str], pristine: Path,
                                        session_keyfile: Path, tmp_path: Path,
                                        change: Callable[[dict[str, Any]], None],
                                        error: type[LukspackError], reason: str) -> None:
    image = Path(shutil.copy(pristine, tmp_path / "odd.img"))
    edit(image, change)
    want = cs_segments(image)  # cryptsetup loads and dumps it ...
    assert want and cs_opens(image, session_keyfile)  # ... and its key slots still open
    code, out, err = run_cli(capsys, "info", image, "--json")
    assert code == 0, err
    got = [(s["id"], s["type"], s["offset"], s["length"])
           for s in json.loads(out)["luks"]["segments"]]
    assert got == want
    code, out, err = run_cli(capsys, "info", image)  # the text form too
    assert code == 0, err
    assert all(f"  {sid}: {stype}" in out for sid, stype, _, _ in want), out

    fd, vol = open_luks_path(str(image))  # the library: opens, names the problem
    os.close(fd)
    assert vol.payload_problem is not None and reason in vol.payload_problem
    with pytest.raises(error, match=re.escape(reason)):
        vol.check_payload()
    with pytest.raises(error):
        vol.unlock(session_keyfile.read_bytes())

    for argv in (["verify", image, "--key-file", session_keyfile],
                 ["decrypt", image, tmp_path / "plain.raw", "--key-file", session_keyfile]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 1 and reason in error_line(err)
    assert not (tmp_path / "plain.raw").exists() and not leftovers(tmp_path)


def test_reencryption_magic_is_said_in_words(capsys: pytest.CaptureFixture[str],
                                             session_keyfile: Path, tmp_path: Path) -> None:
    """cryptsetup-reencrypt (offline LUKS1 reencryption) sets the magic to LUKS 0xde 0xad while
    it works (cryptsetup src/utils_reencrypt_luks1.c, NOMAGIC); cryptsetup itself then refuses
    the header, and lukspack says what it is."""
    image = cs_format(tmp_path / "l1.img", session_keyfile, 4 * MiB, "--type", "luks1",
                      "--pbkdf-force-iterations", "1000")
    with open(image, "r+b") as f:
        f.seek(4)
        f.write(b"\xde\xad")
    assert cryptsetup("luksDump", str(image), check=False).returncode != 0
    # (`info` sniffs formats in images/, which takes the file for RAW: the lead's detection)
    for argv in (["verify", image, "--key-file", session_keyfile],
                 ["decrypt", image, tmp_path / "out.raw", "--key-file", session_keyfile]):
        code, _, err = run_cli(capsys, *argv)
        line = error_line(err)
        assert code == 1 and "in the middle of an offline reencryption" in line, line
        assert "LUKS 0xde 0xad" in line


@pytest.mark.parametrize("magic", [bytes(6), b"LUKX\xba\xbe", b"\xff\xfe\x00\x01\x80\x7f"])
def test_foreign_magic_is_shown_as_hex(capsys: pytest.CaptureFixture[str],
                                       session_keyfile: Path, tmp_path: Path,
                                       magic: bytes) -> None:
    image = cs_format(tmp_path / "l1.img", session_keyfile, 4 * MiB, "--type", "luks1",
                      "--pbkdf-force-iterations", "1000")
    with open(image, "r+b") as f:
        f.write(magic)
    with pytest.raises(FormatError) as e:
        open_luks_path(str(image))
    assert f"magic {magic.hex()} in hex" in str(e.value)
    code, _, err = run_cli(capsys, "verify", image, "--key-file", session_keyfile)
    assert code == 1 and "not a LUKS container" in error_line(err)


def test_damaged_copy_warnings_have_no_bytes_reprs(pristine: Path, tmp_path: Path) -> None:
    image = Path(shutil.copy(pristine, tmp_path / "img"))
    with open(image, "r+b") as f:
        f.write(bytes(6))  # primary magic gone; the secondary opens it
    with pytest.warns(UserWarning) as warned:
        fd, vol = open_luks_path(str(image))
    os.close(fd)
    text = " ".join(str(w.message) for w in warned)
    assert "primary header magic 000000000000 (hex) is not LUKS 0xba 0xbe" in text
    assert "b'" not in text and "\\x" not in text
    assert vol.dump()["headers"]["primary"].startswith("primary header magic 000000000000")
