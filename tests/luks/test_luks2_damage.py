"""LUKS2 headers damaged on purpose: recovered or refused as cryptsetup does.

cryptsetup is the oracle, always on a copy (as root it repairs the file it reads). Damaging one
copy must leave the image usable; damaging both, or writing JSON that breaks a rule cryptsetup
enforces (with valid checksums on both copies), must be refused with the reason.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lukspack.errors import FormatError
from lukspack.luks import open_luks_path
from tests.helpers import Cli, InProcessCli, MiB, cryptsetup, pattern_disk
from tests.luks.luks_helpers import LP_FAST, cs_opens, write_key

HDR = 16384


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("img")
    src = pattern_disk(d / "src.raw", 1)
    key = write_key(d / "k", b"Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWo=")
    InProcessCli(d)("encrypt", src, d / "luks2.img", "--key-file", key, "--type", "luks2", "--pbkdf",
           "pbkdf2", *LP_FAST)
    return d / "luks2.img", key, src


@pytest.fixture
def image(pristine: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copy(pristine[0], tmp_path / "img"))


@pytest.fixture
def key(pristine: tuple[Path, Path, Path]) -> Path:
    return pristine[1]


def cs_accepts(image: Path, key: Path) -> bool:
    """cryptsetup's verdict, on a copy it may repair."""
    probe = image.with_name(image.name + ".cs")
    shutil.copy(image, probe)
    try:
        return cs_opens(probe, key)
    finally:
        probe.unlink()


def poke(image: Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_json(image: Path, at: int = 0) -> dict[str, Any]:
    return json.loads(image.read_bytes()[at + 4096 : at + HDR].rstrip(b"\0"))


def rewrite(image: Path, json_area: bytes) -> None:
    """Put json_area (raw, padded to the area with NULs) in both copies, valid checksums."""
    assert len(json_area) <= HDR - 4096
    with open(image, "r+b") as f:
        for at in (0, HDR):
            f.seek(at)
            area = bytearray(f.read(HDR))
            area[4096:] = json_area + bytes(HDR - 4096 - len(json_area))
            area[448:512] = bytes(64)
            area[448:480] = hashlib.sha256(area).digest()
            f.seek(at)
            f.write(area)


def edit(image: Path, change: Callable[[dict[str, Any]], None]) -> None:
    j = read_json(image)
    change(j)
    rewrite(image, json.dumps(j, separators=(",", ":")).encode())


# -- one copy damaged: recovered ---------------------------------------------------------------

RECOVERABLE = {
    "primary JSON byte": (4096 + 10, b"X", "primary header checksum mismatch"),
    "primary magic": (0, b"\0" * 6, "primary header magic"),
    "primary hdr_size": (8, struct.pack(">Q", 12345), "primary header hdr_size 12345"),
    "primary binary header wiped": (0, b"\0" * 4096, "primary header magic"),
    "secondary JSON byte": (HDR + 4096 + 10, b"X", "secondary header checksum mismatch"),
    "secondary magic": (HDR, b"LUKS\xba\xbe", "secondary header magic"),
    "secondary checksum": (HDR + 448, b"\0" * 32, "secondary header checksum mismatch"),
}


@pytest.mark.parametrize(("offset", "data", "warning"), RECOVERABLE.values(),
                         ids=RECOVERABLE.keys())
def test_one_damaged_copy_still_opens(cli: Cli, image: Path, key: Path,
                                      pristine: tuple[Path, Path, Path], offset: int,
                                      data: bytes, warning: str) -> None:
    poke(image, offset, data)
    assert cs_accepts(image, key)
    p = cli("verify", image, "--key-file", key, "--source", pristine[2])
    assert warning in p.stderr.decode() and "using the" in p.stderr.decode()
    info = json.loads(cli("info", image, "--json").stdout)["luks"]
    assert warning in " ".join(info["headers"].values())


def test_both_copies_damaged_is_refused(cli: Cli, image: Path, key: Path) -> None:
    poke(image, 4096 + 10, b"X")
    poke(image, HDR + 4096 + 10, b"X")
    assert not cs_accepts(image, key)
    err = cli.fails("verify", image, "--key-file", key)
    assert "no valid LUKS2 header: primary header checksum mismatch" in err
    assert "secondary header checksum mismatch" in err


def test_newer_secondary_wins(cli: Cli, image: Path, key: Path, tmp_path: Path) -> None:
    """Of two good copies the higher seqid wins (a write that stopped after the secondary)."""
    old_primary = image.read_bytes()[:HDR]
    new_key = write_key(tmp_path / "new", b"added later")
    cli("add-key", image, "--key-file", key, "--new-key-file", new_key, "--pbkdf", "pbkdf2",
        *LP_FAST)
    poke(image, 0, old_primary)  # primary back to the old seqid, still a valid copy
    assert cs_accepts(image, new_key)
    p = cli("verify", image, "--key-file", new_key)
    assert "primary header is older" in p.stderr.decode()


# -- JSON that breaks cryptsetup's rules, on both copies: refused --------------------------------

def _overlap(j: dict[str, Any]) -> None:
    j["keyslots"]["1"] = copy.deepcopy(j["keyslots"]["0"])
    j["keyslots"]["1"]["area"]["offset"] = str(32768 + 4096)
    j["digests"]["0"]["keyslots"].append("1")


def _json_size_32k(j: dict[str, Any]) -> None:
    """A 32 KiB header in the JSON (keyslots moved to fit), but 16 KiB in the binary header."""
    j["config"]["json_size"] = "28672"
    j["config"]["keyslots_size"] = str(16 * MiB - 65536)
    j["keyslots"]["0"]["area"]["offset"] = "65536"


def _no_segments(j: dict[str, Any]) -> None:
    j["segments"] = {}
    j["digests"]["0"]["segments"] = []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(j: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        obj = j
        for p in parents:
            obj = obj[p]
        if value is KeyError:
            del obj[last]
        else:
            obj[last] = value

    return change


REFUSED = {
    "overlapping keyslot areas": (_overlap, "keyslot 1 area (offset 36864) overlaps keyslot 0"),
    "segment offset not aligned": (_set("segments/0/offset", "16777217"),
                                   "segment 0 offset 16777217 is not aligned to 512 bytes"),
    "digest names a missing keyslot": (_set("digests/0/keyslots", ["0", "3"]),
                                       "digest 0 keyslots names keyslot '3', which does not exist"),
    "key_size is a string": (_set("keyslots/0/key_size", "64"),
                             'keyslot 0 "key_size" is string "64", not integer'),
    "sector_size is a string": (_set("segments/0/sector_size", "512"),
                                'segment 0 "sector_size" is string "512", not integer'),
    "offset is a number": (_set("segments/0/offset", 16777216),
                           'segment 0 "offset" is integer 16777216, not string'),
    "iterations is a string": (_set("keyslots/0/kdf/iterations", "1000"),
                               'keyslot 0 kdf "iterations" is string "1000", not integer'),
    "json_size differs from hdr_size": (_json_size_32k,
                                        "config json_size 28672 differs from the binary header"),
    "keyslots_size not 4 KiB": (_set("config/keyslots_size", "16740000"),
                                "config keyslots_size 16740000 is not a multiple of 4096"),
    "keyslot area past the keyslots area": (_set("keyslots/0/area/offset", str(16 * MiB)),
                                            "ends past the keyslots area"),
    "segment size not a whole sector": (_set("segments/0/sector_size", 4096),
                                        "not aligned to its sector_size"),
    "keyslot without digest": (_set("digests/0/keyslots", []),
                               "keyslot 0 is assigned to 0 digests"),
    "no segments": (_no_segments, "segments section is empty"),
    "no tokens section": (_set("tokens", KeyError), 'JSON has no "tokens"'),
    "negative key_size": (_set("keyslots/0/key_size", -1), '"key_size" is -1, outside'),
    "segment without digest": (_set("digests/0/segments", []),
                               "crypt segment 0 is not assigned to any digest"),
}


def _refusal(image: Path) -> str:
    """The error lukspack gives for an image (in-process: the CLI's one-line form of the same
    message is checked once, in test_invalid_json_through_the_cli)."""
    with pytest.raises(FormatError) as e:
        fd, _vol = open_luks_path(str(image))
        os.close(fd)
    return str(e.value)


@pytest.mark.parametrize(("change", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_invalid_json_is_refused_with_its_reason(image: Path, key: Path, change: Callable,
                                                 reason: str) -> None:
    if reason == "not aligned to its sector_size":
        edit(image, _set("segments/0/size", str(3 * 512)))  # a fixed size of 1536 bytes ...
    edit(image, change)  # ... and then 4096-byte sectors
    assert not cs_accepts(image, key)
    err = _refusal(image)
    assert "no valid LUKS2 header: primary header: " in err and reason in err, err
    assert err.count(reason) == 2  # both copies, each with its reason


def test_invalid_json_through_the_cli(cli: Cli, image: Path, key: Path) -> None:
    edit(image, _overlap)
    for command in (["verify", image, "--key-file", key], ["info", image],
                    ["decrypt", image, image.with_name("out"), "--key-file", key]):
        err = cli.fails(*command)
        assert "keyslot 1 area (offset 36864) overlaps keyslot 0" in err


def test_json_not_nul_padded(cli: Cli, image: Path, key: Path) -> None:
    text = json.dumps(read_json(image), separators=(",", ":")).encode()
    rewrite(image, text + b"  x")
    assert not cs_accepts(image, key)
    err = cli.fails("verify", image, "--key-file", key)
    assert f"JSON area is not NUL-padded: byte 0x20 at offset {len(text)}" in err
    rewrite(image, text + b"\0\0\0x")  # garbage after NULs
    assert not cs_accepts(image, key)
    assert "is not NUL-padded: byte 0x78" in cli.fails("verify", image, "--key-file", key)


def test_extra_kdf_fields_are_repaired_as_cryptsetup_does(cli: Cli, image: Path, key: Path,
                                                          pristine: tuple[Path, Path, Path]
                                                          ) -> None:
    """cryptsetup drops KDF fields that do not belong to the type before validating."""
    edit(image, _set("keyslots/0/kdf/memory", 1024))
    assert cs_accepts(image, key)
    cli("verify", image, "--key-file", key, "--source", pristine[2])


def test_json_whitespace_is_refused(cli: Cli, image: Path, key: Path) -> None:
    """The JSON area must start with '{' (cryptsetup's validate_json_area)."""
    text = json.dumps(read_json(image), separators=(",", ":")).encode()
    rewrite(image, b" " + text)
    assert not cs_accepts(image, key)
    assert "does not start with '{'" in cli.fails("verify", image, "--key-file", key)


def test_truncated_image(cli: Cli, image: Path, key: Path) -> None:
    with open(image, "r+b") as f:
        f.truncate(HDR + 2048)
    assert not cs_accepts(image, key)
    err = cli.fails("verify", image, "--key-file", key)
    assert "past the end of the file" in err or "larger than the file" in err


def test_both_copies_damaged_are_shown_by_cryptsetup_neither(image: Path) -> None:
    poke(image, 0, b"\0" * 8)
    poke(image, HDR, b"\0" * 8)
    assert cryptsetup("luksDump", str(image), check=False).returncode != 0
