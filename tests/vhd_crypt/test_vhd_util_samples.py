"""lukspack against the real vhd-util's output (../shared/vectors/vhd-util): the key hashes it
printed, the plaintext behind its encrypted VHDs, and the same ciphertext and metadata when
lukspack encrypts the same source with the same key."""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path

import pytest

from lukspack.containers.encrypted_vhd import TABLE_OFFSET
from lukspack.errors import WrongKeyError
from lukspack.images.vhd_crypt import (
    encrypted_vhd_info,
    is_encrypted_vhd,
    key_hash,
    open_encrypted_vhd,
)
from lukspack.keys import decode_vhd_key
from tests.vhd_crypt.drive import (
    IBM_EXAMPLE_DEK,
    IBM_EXAMPLE_HASH,
    KEY_HASHES,
    PLAINTEXT_SHA256,
    VECTORS,
    drive,
    independent_decrypt,
)
from tests.vhd_crypt.vhdutil_check import check

SIZES = {"aes256": 64, "aes128": 32}


@pytest.mark.parametrize("name", sorted(KEY_HASHES))
def test_key_hash_is_what_vhd_util_printed(name: str, samples: Path) -> None:
    raw = (VECTORS / f"{name}.key").read_bytes()
    assert len(raw) == SIZES[name]
    assert key_hash(raw).hex() == KEY_HASHES[name]
    # the base64 DEK decodes to the same key
    assert decode_vhd_key((VECTORS / f"{name}.dek").read_bytes()) == raw
    assert decode_vhd_key(raw) == raw


def test_ibm_documented_example_key_hash() -> None:
    key = decode_vhd_key(IBM_EXAMPLE_DEK)
    assert bytes(key) == base64.b64decode(IBM_EXAMPLE_DEK) and len(key) == 64
    assert key_hash(key).hex() == IBM_EXAMPLE_HASH
    assert key_hash(key, b"\x01" * 32).hex() != IBM_EXAMPLE_HASH  # the nonce is hashed first


@pytest.mark.parametrize("name", sorted(KEY_HASHES))
@pytest.mark.parametrize("form", ["key", "dek"])
def test_samples_decrypt_to_the_plaintext(name: str, form: str, samples: Path) -> None:
    path = samples / f"vs-{name}.vhd"
    assert is_encrypted_vhd(str(path)) and not is_encrypted_vhd(str(samples / "vs.vhd"))
    with open_encrypted_vhd(str(path), (VECTORS / f"{name}.{form}").read_bytes()) as img:
        assert img.virtual_size == 8 << 20 and img.key_bits == SIZES[name] * 8
        buf = bytearray(img.virtual_size)
        img.read_into(0, buf)
        assert hashlib.sha256(buf).hexdigest() == PLAINTEXT_SHA256
        assert img.quirk_sectors == 0  # qemu marked every sector of its blocks present
        # unaligned reads across a block boundary and inside sectors
        part = bytearray(5000)
        img.read_into((4 << 20) - 1234, part)
        assert part == buf[(4 << 20) - 1234 : (4 << 20) - 1234 + 5000]
        assert img.bytes_read < 7 << 20  # block 1 is unallocated: never read
    raw = (VECTORS / f"{name}.key").read_bytes()
    assert hashlib.sha256(independent_decrypt(path, raw)).hexdigest() == PLAINTEXT_SHA256


def test_wrong_key_is_refused_before_decrypting(samples: Path) -> None:
    wrong = (VECTORS / "aes128.key").read_bytes()
    with pytest.raises(WrongKeyError, match="does not match the image's key hash 0581755f"):
        open_encrypted_vhd(str(samples / "vs-aes256.vhd"), wrong)
    with pytest.raises(WrongKeyError):
        open_encrypted_vhd(str(samples / "vs-aes256.vhd"), bytes(64))


def test_info_shows_nonce_key_hash_and_batmap(samples: Path) -> None:
    info = encrypted_vhd_info(str(samples / "vs-aes256.vhd"))
    e = info["encrypted_vhd"]
    assert e["encrypted"] and e["nonce"] == "0" * 64 and e["key_hash"] == KEY_HASHES["aes256"]
    # what `vhd-util read -p` printed (vectors README)
    assert (e["batmap_offset"], e["batmap_size"], e["batmap_version"]) == (2560, 1, "0x00010002")
    assert info["vhd"]["creator_application"] == "tap\0"
    assert info["vhd"]["creator_version"] == "0x00010003"
    assert info["vhd"]["table_offset"] == 1536 and info["vhd"]["max_table_entries"] == 4
    assert info["vhd"]["block_size"] == 2 << 20 and info["virtual_size"] == 8 << 20
    assert e["full_blocks"] == e["allocated_blocks"] == 3


def test_our_checker_accepts_what_vhd_util_checked(samples: Path) -> None:
    """`vhd-util check -n vs-aes256.vhd` said valid; the checker the tests use agrees."""
    for name in ("vs-aes256.vhd", "vs-aes128.vhd"):
        assert check(samples / name) is None


def _sectors(path: Path) -> dict[str, object]:
    d = path.read_bytes()
    table, entries = struct.unpack_from(">QI", d, 512 + 16)[0], struct.unpack_from(">I", d, 512 + 28)[0]
    bat = struct.unpack_from(f">{entries}I", d, table)
    blocks = {i: d[e * 512 : (e + 1 + 4096) * 512] for i, e in enumerate(bat) if e != 0xFFFFFFFF}
    hdr_at = table + 512
    return {"footer": d[-512:], "footer_copy": d[:512], "header": d[512:1536],
            "bat_sector": d[TABLE_OFFSET:hdr_at], "batmap_header": d[hdr_at : hdr_at + 512],
            "batmap": d[hdr_at + 512 : hdr_at + 1024], "bat": bat, "blocks": blocks,
            "size": len(d)}


def _footer_fields(f: bytes) -> tuple:
    # everything but time_stamp (24), checksum (64) and unique_id (68-83)
    return f[:24], f[28:64], f[84:]


@pytest.mark.parametrize("name", sorted(KEY_HASHES))
def test_encrypting_vs_vhd_writes_what_vhd_util_wrote(name: str, samples: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "ours.vhd"
    drive(samples / "vs.vhd", out, (VECTORS / f"{name}.dek").read_bytes())
    ours, theirs = _sectors(out), _sectors(samples / f"vs-{name}.vhd")
    assert ours["bat"] == theirs["bat"] == (7, 0xFFFFFFFF, 4111, 8215)
    assert ours["blocks"].keys() == theirs["blocks"].keys()
    for i in theirs["blocks"]:  # the sector bitmap and the ciphertext of every allocated sector
        assert ours["blocks"][i] == theirs["blocks"][i], f"block {i} differs"
    for field in ("header", "bat_sector", "batmap_header", "batmap"):
        assert ours[field] == theirs[field], field
    assert _footer_fields(ours["footer"]) == _footer_fields(theirs["footer"])
    assert ours["footer"] == ours["footer_copy"]
    assert ours["size"] == theirs["size"]
    assert check(out) is None


def test_reads_from_several_threads(samples: Path) -> None:
    """An engine verifier may read from worker threads: each gets its own cipher."""
    from concurrent.futures import ThreadPoolExecutor

    key = (VECTORS / "aes128.key").read_bytes()
    whole = bytearray(8 << 20)
    with open_encrypted_vhd(str(samples / "vs-aes128.vhd"), key) as img:
        img.read_into(0, whole)

        def part(i: int) -> bytes:
            buf = bytearray(1 << 20)
            img.read_into(i << 20, buf)
            return bytes(buf)

        with ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(part, range(8)))
    assert b"".join(parts) == whole
    assert hashlib.sha256(whole).hexdigest() == PLAINTEXT_SHA256
