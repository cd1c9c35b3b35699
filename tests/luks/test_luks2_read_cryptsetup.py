"""Images that real cryptsetup made (and cryptsetup or QEMU filled) decrypt correctly in lukspack.

LUKS2 payloads are written by `cryptsetup reencrypt --encrypt` (offline, on a file), LUKS1
payloads by QEMU's LUKS driver. lukspack must unlock them with the key file, find the same volume
key as `cryptsetup luksDump --dump-volume-key`, and decrypt the payload back to the source.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from lukspack import plaintext
from lukspack.crypto.cbc import cbc_reference
from lukspack.luks import luks1, open_luks_path
from tests.helpers import Cli, MiB, cryptsetup, pattern_disk, same_prefix
from tests.luks.luks_helpers import (
    CS_ARGON2I,
    CS_ARGON2ID,
    CS_PBKDF2,
    cs_dump,
    cs_format,
    cs_opens,
    cs_volume_key,
    qemu_fill,
    reencrypt_fill,
    write_key,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pattern_disk(tmp_path_factory.mktemp("src") / "disk.raw", 3)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return write_key(tmp_path / "pass.key", b"an old passphrase\n")  # any bytes, newline too


def _unlocked_key(image: Path, key: Path) -> bytes:
    import os

    fd, vol = open_luks_path(str(image))
    try:
        return bytes(vol.unlock(key.read_bytes()))
    finally:
        os.close(fd)


def _decrypts_to(cli: Cli | None, image: Path, key: Path, source: Path, tmp_path: Path) -> None:
    """`lukspack decrypt` (through the CLI when cli is given, else in-process: faster) gives
    back the source at the start of the payload."""
    out = tmp_path / "plain.raw"
    if cli is not None:
        cli("decrypt", image, out, "--key-file", key, "--force")
    else:
        plaintext.decrypt(str(image), str(out), key.read_bytes(), force=True)
    assert same_prefix(out, source)


LUKS2_CASES = {  # id: cryptsetup luksFormat/reencrypt options
    "xts-plain64-512-sha256-argon2id-4k-16k":
        ["--cipher", "aes-xts-plain64", "--key-size", "512", *CS_ARGON2ID, "--sector-size", "4096"],
    "xts-plain64-256-sha1-pbkdf2-512-32k":
        ["--cipher", "aes-xts-plain64", "--key-size", "256", "--hash", "sha1", *CS_PBKDF2,
         "--sector-size", "512", "--luks2-metadata-size", "32k"],
    "cbc-essiv-256-sha512-argon2i-4k-64k":
        ["--cipher", "aes-cbc-essiv:sha256", "--key-size", "256", "--hash", "sha512", *CS_ARGON2I,
         "--sector-size", "4096", "--luks2-metadata-size", "64k"],
    "cbc-essiv-128-sha256-pbkdf2-512-128k":
        ["--cipher", "aes-cbc-essiv:sha256", "--key-size", "128", *CS_PBKDF2,
         "--sector-size", "512", "--luks2-metadata-size", "128k"],
    "xts-plain-512-sha512-pbkdf2-1k-256k":
        ["--cipher", "aes-xts-plain", "--key-size", "512", "--hash", "sha512", *CS_PBKDF2,
         "--sector-size", "1024", "--luks2-metadata-size", "256k"],
    "cbc-plain64-192-ripemd160-argon2id-2k-1m":
        ["--cipher", "aes-cbc-plain64", "--key-size", "192", "--hash", "ripemd160", *CS_ARGON2ID,
         "--sector-size", "2048", "--luks2-metadata-size", "1m"],
    "xts-plain64-256-sha256-pbkdf2-4k-4m":
        ["--cipher", "aes-xts-plain64", "--key-size", "256", *CS_PBKDF2, "--sector-size", "4096",
         "--luks2-metadata-size", "4m", "--luks2-keyslots-size", "2m"],
}


@pytest.mark.parametrize("opts", LUKS2_CASES.values(), ids=LUKS2_CASES.keys())
def test_luks2_filled_by_cryptsetup_reencrypt(cli: Cli, key: Path, source: Path, tmp_path: Path,
                                              opts: list[str]) -> None:
    image = reencrypt_fill(tmp_path / "cs.img", source, key, *opts)
    assert _unlocked_key(image, key) == cs_volume_key(image, key)
    _decrypts_to(cli, image, key, source, tmp_path)
    assert cli("info", image).stdout.decode() == cs_dump(image)


@pytest.mark.parametrize("metadata", ["16k", "32k", "64k", "128k", "256k", "512k", "1m", "2m",
                                      "4m"])
def test_every_luks2_metadata_size(key: Path, tmp_path: Path, metadata: str) -> None:
    image = cs_format(tmp_path / "cs.img", key, 24 * MiB, "--type", "luks2", *CS_PBKDF2,
                      "--luks2-metadata-size", metadata, "--luks2-keyslots-size", "1m")
    assert _unlocked_key(image, key) == cs_volume_key(image, key)


def test_luks2_any_key_slot_and_priorities(cli: Cli, key: Path, source: Path,
                                           tmp_path: Path) -> None:
    image = reencrypt_fill(tmp_path / "cs.img", source, key, *CS_PBKDF2)
    k5 = write_key(tmp_path / "k5", b"slot five")
    k31 = write_key(tmp_path / "k31", b"slot thirty-one")
    cryptsetup("luksAddKey", "-q", "--key-file", str(key), *CS_ARGON2I, "-S", "5", str(image),
               str(k5))
    cryptsetup("luksAddKey", "-q", "--key-file", str(key), *CS_ARGON2ID, "-S", "31", str(image),
               str(k31))
    cryptsetup("luksKillSlot", "-q", str(image), "0")
    assert not cs_opens(image, key)
    cli.fails("verify", image, "--key-file", key)
    _decrypts_to(None, image, k5, source, tmp_path)
    _decrypts_to(None, image, k31, source, tmp_path)
    cryptsetup("config", "--priority", "ignore", "--key-slot", "31", str(image))
    assert not cs_opens(image, k31)  # an ignored slot is not tried for "any slot" ...
    assert "no key slot opens" in cli.fails("verify", image, "--key-file", k31)  # ... nor here
    assert cli("info", image).stdout.decode() == cs_dump(image)


LUKS1_CASES = {  # id: cryptsetup luksFormat options (QEMU writes the payload)
    "cbc-essiv-256-sha1 (the old default)":
        ["--cipher", "aes-cbc-essiv:sha256", "--key-size", "256", "--hash", "sha1"],
    "xts-plain64-512-sha512": ["--cipher", "aes-xts-plain64", "--key-size", "512",
                               "--hash", "sha512"],
    "xts-plain64-256-sha256": ["--cipher", "aes-xts-plain64", "--key-size", "256"],
    "cbc-essiv-128-sha256": ["--cipher", "aes-cbc-essiv:sha256", "--key-size", "128"],
    "cbc-plain-256-sha256": ["--cipher", "aes-cbc-plain", "--key-size", "256"],
    "xts-plain64-512-align-payload-1": ["--key-size", "512", "--align-payload", "1"],
}


@pytest.mark.parametrize("opts", LUKS1_CASES.values(), ids=LUKS1_CASES.keys())
def test_luks1_filled_by_qemu(cli: Cli, key: Path, source: Path, tmp_path: Path,
                              opts: list[str]) -> None:
    image = cs_format(tmp_path / "cs.img", key, 6 * MiB, "--type", "luks1",
                      "--pbkdf-force-iterations", "1000", *opts)
    qemu_fill(image, source, key)
    assert _unlocked_key(image, key) == cs_volume_key(image, key)
    _decrypts_to(None, image, key, source, tmp_path)


def test_luks1_last_key_slot(cli: Cli, key: Path, source: Path, tmp_path: Path) -> None:
    image = cs_format(tmp_path / "cs.img", key, 6 * MiB, "--type", "luks1",
                      "--pbkdf-force-iterations", "1000")
    k7 = write_key(tmp_path / "k7", b"seven")
    cryptsetup("luksAddKey", "-q", "--key-file", str(key), "--pbkdf-force-iterations", "1000",
               "-S", "7", str(image), str(k7))
    cryptsetup("luksKillSlot", "-q", str(image), "0")
    qemu_fill(image, source, k7)
    _decrypts_to(None, image, k7, source, tmp_path)


def test_luks1_0_unaligned_key_slots(cli: Cli, key: Path, source: Path, tmp_path: Path) -> None:
    """A LUKS 1.0 layout: key slots packed back to back (250 sectors for a 256-bit key, not
    rounded to 4 KiB), payload right after. cryptsetup opens it; so must lukspack. (QEMU refuses
    such slots, so `cryptography`'s CBC writes the payload.)"""
    vk = bytes(range(32))
    material = -(-32 * luks1.STRIPES // luks1.SECTOR)  # 250 sectors
    offsets = [8 + i * material for i in range(luks1.NUM_KEYS)]
    payload = offsets[-1] + material
    hdr = luks1.Luks1Header("aes", "cbc-essiv:sha256", "sha1", payload, 32, b"", bytes(32), 1000,
                            "12345678-1234-1234-1234-123456789abc",
                            [luks1.KeySlot(key_material_offset=o) for o in offsets])
    from lukspack.luks.kdf import pbkdf2

    hdr.mk_digest = bytes(pbkdf2("sha1", vk, hdr.mk_digest_salt, 1000, 20))
    area = bytearray(payload * luks1.SECTOR)
    luks1.set_slot(hdr, area, 3, vk, key.read_bytes(), 1000)
    image = tmp_path / "luks10.img"
    image.write_bytes(bytes(area) + cbc_reference(vk, source.read_bytes(), 0))
    assert offsets[1] % 8 and payload % 2048  # slots not on 4 KiB, payload not on 1 MiB
    assert cs_opens(image, key) and cs_volume_key(image, key) == vk
    _decrypts_to(cli, image, key, source, tmp_path)


def _patch_luks2_json(image: Path, edit) -> None:
    """Edit the JSON of both header copies and fix their checksums (as a writer would)."""
    from lukspack.luks import luks2

    data = image.read_bytes()
    hdr = luks2.read_header(lambda o, n: data[o : o + n], len(data), "x")
    edit(hdr.json)
    primary, secondary = hdr.pack(hdr.bin.seqid + 1)
    with open(image, "r+b") as f:
        f.write(primary)
        f.write(secondary)


def test_unsupported_cipher_is_named(cli: Cli, key: Path, tmp_path: Path) -> None:
    """cryptsetup cannot format serpent here (no device-mapper), so the header is edited."""
    image = cs_format(tmp_path / "cs.img", key, 20 * MiB, "--type", "luks2", *CS_PBKDF2)

    def serpent(j: dict) -> None:
        j["segments"]["0"]["encryption"] = "serpent-xts-plain64"

    _patch_luks2_json(image, serpent)
    assert "cipher: serpent-xts-plain64" in cs_dump(image)
    err = cli.fails("verify", image, "--key-file", key)
    assert "unsupported cipher 'serpent-xts-plain64'" in err

    v1 = cs_format(tmp_path / "v1.img", key, 4 * MiB, "--type", "luks1",
                   "--pbkdf-force-iterations", "1000")
    with open(v1, "r+b") as f:
        f.seek(8)
        f.write(b"twofish".ljust(32, b"\0"))
    assert "Cipher name:   \ttwofish" in cs_dump(v1)
    assert "unsupported cipher 'twofish-xts-plain64'" in cli.fails("verify", v1, "--key-file", key)


def test_luks1_header_fields(key: Path, tmp_path: Path) -> None:
    """keyBytes 16/32/64 and the hashes cryptsetup offers are read back as written."""
    for bits, hash_ in ((128, "sha1"), (256, "sha256"), (512, "sha512")):
        image = cs_format(tmp_path / f"{bits}.img", key, 4 * MiB, "--type", "luks1",
                          "--pbkdf-force-iterations", "1000", "--key-size", str(bits),
                          "--hash", hash_, "--cipher", "aes-cbc-essiv:sha256" if bits < 512
                          else "aes-xts-plain64")
        raw = image.read_bytes()[:1024]
        hdr = luks1.Luks1Header.unpack(raw)
        assert hdr.key_bytes == bits // 8 and hdr.hash_spec == hash_
        assert struct.unpack_from(">I", raw, 108)[0] == bits // 8
        assert _unlocked_key(image, key) == cs_volume_key(image, key)
    assert json.dumps(LUKS1_CASES)  # the list of combinations is reported in docs/luks2.md
