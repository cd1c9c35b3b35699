"""`lukspack encrypt --type luks2`: what it writes, judged by cryptsetup.

cryptsetup must dump and open the output; the volume key it prints must decrypt the payload
(with `cryptography`'s XTS, not ours) to the source followed by zeros; the header must be laid
out and checksummed as the LUKS2 specification and cryptsetup say.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lukspack.crypto.xts import xts_reference
from lukspack.luks import luks2, luks2_format
from lukspack.luks import luks2_json as lj
from lukspack.luks.kdf import SlotKdf
from lukspack.luks.metadata import Keyslot
from tests.helpers import Cli, MiB, leftovers, pattern_disk
from tests.luks.luks_helpers import (
    CS_ARGON2ID,
    CS_PBKDF2,
    LP_ARGON2,
    LP_FAST,
    cs_dump,
    cs_format,
    cs_opens,
    cs_volume_key,
    write_key,
)

SRC_BYTES = 3 * MiB + 12345  # not whole MiB: the payload is padded with encrypted zeros


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("src") / "disk.raw"
    pattern_disk(path, 3, tail=12345)
    return path


def _shape(obj: Any) -> Any:
    """Keys in order and value types, recursively: what must match cryptsetup's JSON."""
    if isinstance(obj, dict):
        return [(k, _shape(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [_shape(v) for v in obj]
    return type(obj).__name__


def _json(image: Path) -> dict[str, Any]:
    raw = image.read_bytes()[:luks2.DEFAULT_METADATA_SIZE]
    return json.loads(raw[4096:].rstrip(b"\0"))


CASES = [  # (lukspack options, matching cryptsetup luksFormat options, sector size)
    (["--pbkdf", "pbkdf2", *LP_FAST], CS_PBKDF2, 512),
    (["--pbkdf", "argon2id", *LP_ARGON2], CS_ARGON2ID, 512),
    (["--pbkdf", "argon2i", "--hash", "sha512", *LP_ARGON2, "--pbkdf-parallel", "1"],
     ["--pbkdf", "argon2i", "--hash", "sha512", "--pbkdf-force-iterations", "4",
      "--pbkdf-memory", "32", "--pbkdf-parallel", "1"], 4096),
    (["--pbkdf", "argon2id", *LP_ARGON2, "--pbkdf-parallel", "2"], CS_ARGON2ID, 4096),
    (["--pbkdf", "pbkdf2", "--hash", "sha1", *LP_FAST], [*CS_PBKDF2, "--hash", "sha1"], 4096),
]


@pytest.mark.parametrize(("lp_opts", "cs_opts", "sector"), CASES,
                         ids=["pbkdf2", "argon2id", "argon2i-sha512-4k", "argon2id-4k",
                              "pbkdf2-sha1-4k"])
def test_cryptsetup_opens_and_its_volume_key_decrypts(cli: Cli, keyfile: Path, source: Path,
                                                      tmp_path: Path, lp_opts: list[str],
                                                      cs_opts: list[str], sector: int) -> None:
    out = tmp_path / "out.img"
    cli("encrypt", source, out, "--key-file", keyfile, "--type", "luks2", "--sector-size",
        str(sector), *lp_opts)
    assert out.stat().st_size == 16 * MiB + 4 * MiB
    dump = cs_dump(out)
    assert f"sector: {sector} [bytes]" in dump and "offset: 16777216 [bytes]" in dump
    assert cli("info", out).stdout.decode() == dump  # our luksDump renders the same text
    assert cs_opens(out, keyfile)
    assert not cs_opens(out, write_key(tmp_path / "wrong", b"not the key"))
    key = cs_volume_key(out, keyfile)
    assert len(key) == 64
    data = out.read_bytes()[16 * MiB :]
    plain = xts_reference(key, data, 0, sector, decrypt=True)  # IVs count 512-byte units
    assert plain[:SRC_BYTES] == source.read_bytes()
    assert plain[SRC_BYTES:] == bytes(len(plain) - SRC_BYTES)
    # the JSON has cryptsetup's structure, field for field, in its order
    ref = cs_format(tmp_path / "ref.img", keyfile, 20 * MiB, "--type", "luks2", "--sector-size",
                    str(sector), *cs_opts)
    assert _shape(_json(out)) == _shape(_json(ref))
    ours, theirs = _json(out), _json(ref)
    for j in (ours, theirs):  # values that differ by nature: salts, digests, uuid
        for section in ("keyslots", "digests"):
            for obj in j[section].values():
                for k in ("salt", "digest"):
                    obj.get("kdf", obj).pop(k, None)
    assert ours == theirs


def test_binary_headers(cli: Cli, keyfile: Path, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.img"
    cli("encrypt", source, out, "--key-file", keyfile, "--type", "luks2", "--pbkdf", "pbkdf2",
        *LP_FAST)
    raw = out.read_bytes()[: 2 * 16384]
    fields = ">6sHQQ48s32s64s40s48sQ"
    p = struct.unpack_from(fields, raw, 0)
    s = struct.unpack_from(fields, raw, 16384)
    assert p[0] == b"LUKS\xba\xbe" and s[0] == b"SKUL\xba\xbe"
    assert p[1] == s[1] == 2 and p[2] == s[2] == 16384
    assert p[3] == s[3]  # seqid
    assert (p[9], s[9]) == (0, 16384)  # hdr_offset
    assert p[5].rstrip(b"\0") == b"sha256" and p[7] == s[7] and p[6] != s[6]  # uuid, salts
    for off in (0, 16384):
        area = bytearray(raw[off : off + 16384])
        csum = bytes(area[448:480])
        area[448:512] = bytes(64)
        assert hashlib.sha256(area).digest() == csum
        text = area[4096:].rstrip(b"\0")
        assert b"\0" not in text and area[4096 + len(text) :] == bytes(12288 - len(text))
    j = json.loads(raw[4096:16384].rstrip(b"\0"))
    assert j["config"] == {"json_size": "12288", "keyslots_size": str(16 * MiB - 32768)}
    assert j["keyslots"]["0"]["area"]["offset"] == "32768"
    assert j["keyslots"]["0"]["area"]["size"] == "258048"  # 64 * 4000 rounded up to 4 KiB
    assert j["keyslots"]["0"]["af"] == {"type": "luks1", "stripes": 4000, "hash": "sha256"}
    assert j["segments"]["0"]["size"] == "dynamic"


def test_calibrated_argon2id(cli: Cli, keyfile: Path, source: Path, tmp_path: Path) -> None:
    """No forced cost: cryptsetup's benchmark picks time and memory for --iter-time."""
    out = tmp_path / "out.img"
    cli("encrypt", source, out, "--key-file", keyfile, "--type", "luks2", "--iter-time", "100",
        "--pbkdf-memory", "16384")
    kdf = _json(out)["keyslots"]["0"]["kdf"]
    assert kdf["type"] == "argon2id" and kdf["time"] >= 4 and 32 <= kdf["memory"] <= 16384
    assert cs_opens(out, keyfile)


@pytest.mark.parametrize(("args", "message"), [
    (["--type", "luks1", "--pbkdf", "argon2id"], "usage error: LUKS1 key slots use pbkdf2 only"),
    (["--type", "luks1", "--sector-size", "4096"],
     "usage error: --sector-size 4096 needs --type luks2 (LUKS1 has 512-byte sectors only)"),
    (["--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-memory", "65536"],
     "usage error: --pbkdf-memory and --pbkdf-parallel do not apply to pbkdf2"),
    (["--type", "luks2", "--pbkdf", "argon2id", "--pbkdf-force-iterations", "3"], "minimum 4"),
    (["--type", "luks2", "--pbkdf-memory", "16"], "--pbkdf-memory 16 is outside"),
    (["--type", "luks2", "--pbkdf-parallel", "8"], "--pbkdf-parallel 8 is outside 1..4"),
    (["--type", "luks2", "--hash", "md5x"], "usage error: --hash md5x is not a known hash"),
])
def test_bad_kdf_options_fail_before_writing(cli: Cli, keyfile: Path, source: Path,
                                            tmp_path: Path, args: list[str], message: str) -> None:
    """Combinations that cannot work are usage errors (exit 2); values out of range exit 1."""
    code = 2 if "usage error" in message else 1
    err = cli.fails("encrypt", source, tmp_path / "out.img", "--key-file", keyfile, *args,
                    code=code)
    assert message in err
    assert not (tmp_path / "out.img").exists() and not leftovers(tmp_path)


def test_size_says_luks2_needs_16_mib(cli: Cli, source: Path) -> None:
    out = cli("size", source, "--type", "luks2").stdout.decode()
    assert "header bytes:  16777216" in out and "total MiB:     20" in out
    assert "RAW + 16 MiB" in out and "too small" in out
    r = json.loads(cli("size", source, "--type", "luks2", "--json").stdout)
    assert r["total_bytes"] == 16 * MiB + 4 * MiB and not r["documented_fits"]


# -- header pack/parse round trips ----------------------------------------------------------

def _image(metadata: int, sector: int, slots: list[tuple[str, int]]) -> tuple[bytes, dict]:
    """A LUKS2 metadata area with keyslots of the given KDF types and key sizes, packed by us."""
    key = bytes(range(64))
    base = luks2_format.format_luks2(key, b"pw", SlotKdf("pbkdf2", 1000),
                                     digest_iterations=1000, sector_size=sector,
                                     metadata_size=metadata, data_offset=2 * metadata + 2 * MiB)
    hdr = luks2.read_header(lambda o, n: base[o : o + n], len(base), "x")
    j = hdr.json
    offset = 2 * metadata + luks2_format.keyslot_area_size(64)
    for i, (kind, size) in enumerate(slots, start=1):
        kdf = SlotKdf(kind, 4 if kind != "pbkdf2" else 1000, "sha256",
                      32 if kind != "pbkdf2" else 0, 1 if kind != "pbkdf2" else 0)
        area = luks2_format.keyslot_area_size(size)
        j["keyslots"][str(i)] = luks2_format.keyslot_json(Keyslot(
            i, size, kdf, bytes(32), kdf.hash, luks2.STRIPES, offset, area, "aes-xts-plain64", 64))
        j["digests"]["0"]["keyslots"].append(str(i))
        offset += area
    hdr.bin.seqid = 7
    primary, secondary = hdr.pack(7)
    return primary + secondary + base[2 * metadata :], j


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metadata=st.sampled_from(lj.METADATA_SIZES[:4]), sector=st.sampled_from([512, 4096]),
       slots=st.lists(st.tuples(st.sampled_from(["pbkdf2", "argon2i", "argon2id"]),
                                st.just(64)), max_size=5))
def test_header_round_trip(metadata: int, sector: int, slots: list[tuple[str, int]]) -> None:
    data, j = _image(metadata, sector, slots)
    hdr = luks2.read_header(lambda o, n: data[o : o + n], len(data), "x")
    assert hdr.json == j and hdr.bin.seqid == 7 and hdr.status == ("ok", "ok")
    assert lj.parse_json_area(data[4096:metadata]) == j
    assert hdr.active_keyslots() == [str(i) for i in range(len(slots) + 1)]
