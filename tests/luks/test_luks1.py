"""LUKS1 header pack/parse, layout, and unlock; cryptsetup-made LUKS1 images read by lukspack."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lukspack.errors import FormatError, WrongKeyError
from lukspack.luks import luks1, open_luks_path
from tests.helpers import MiB, cryptsetup, pattern_disk, qemu_img

slot_st = st.builds(
    luks1.KeySlot,
    active=st.sampled_from([luks1.KEY_ACTIVE, luks1.KEY_DISABLED]),
    iterations=st.integers(0, 2**32 - 1),
    salt=st.binary(min_size=32, max_size=32),
    key_material_offset=st.just(0),
    stripes=st.just(luks1.STRIPES),
)


@settings(max_examples=60, deadline=None)
@given(cipher=st.sampled_from(["aes", "twofish", "serpent"]),
       mode=st.sampled_from(["xts-plain64", "cbc-essiv:sha256", "cbc-plain"]),
       hash_spec=st.sampled_from(["sha1", "sha256", "sha512"]),
       key_bytes=st.sampled_from([16, 32, 64]),
       digest=st.binary(min_size=20, max_size=20), salt=st.binary(min_size=32, max_size=32),
       iterations=st.integers(1, 2**32 - 1), slots=st.lists(slot_st, min_size=8, max_size=8))
def test_header_pack_unpack_round_trip(cipher: str, mode: str, hash_spec: str, key_bytes: int,
                                       digest: bytes, salt: bytes, iterations: int,
                                       slots: list[luks1.KeySlot]) -> None:
    offsets, payload = luks1.slot_layout(key_bytes)
    for s, o in zip(slots, offsets, strict=True):
        s.key_material_offset = o
    hdr = luks1.Luks1Header(cipher, mode, hash_spec, payload, key_bytes, digest, salt, iterations,
                            "c8e3f0d0-6f4e-4a43-9b7f-6e1d8b5b7c11", slots)
    packed = hdr.pack()
    assert len(packed) == luks1.HEADER_SIZE
    again = luks1.Luks1Header.unpack(packed, "x")
    assert again == hdr
    assert again.pack() == packed


def test_layout_matches_cryptsetup_for_512_bit_keys() -> None:
    offsets, payload = luks1.slot_layout(64)
    assert offsets == [8, 512, 1016, 1520, 2024, 2528, 3032, 3536]
    assert payload == 4096 and luks1.header_bytes(64) == 2 * MiB


def _area(vk: bytes, pw: bytes) -> bytes:
    return luks1.format_luks1(vk, pw, slot_iterations=1000, digest_iterations=1000)


def test_unlock_with_right_and_wrong_passphrase() -> None:
    vk = os.urandom(64)
    area = _area(vk, b"secret passphrase")
    hdr = luks1.Luks1Header.unpack(area, "mem")

    def read_at(o: int, n: int) -> bytes:
        return area[o : o + n]

    assert bytes(hdr.unlock(read_at, b"secret passphrase")) == vk
    with pytest.raises(WrongKeyError):
        hdr.unlock(read_at, b"secret passphrasf")


@pytest.mark.parametrize("field,offset,value,message", [
    ("magic", 0, b"LUKX", "magic"),
    ("version", 6, b"\x00\x02", "version"),
    ("stripes", 208 + 44, (3999).to_bytes(4, "big"), "3999 stripes"),
    ("slot state", 208, b"\x12\x34\x56\x78", "invalid state"),
    ("slot offset", 208 + 40, (0).to_bytes(4, "big"), "overlaps the header"),
    ("slot overlap", 208 + 48 + 40, (9).to_bytes(4, "big"), "overlap"),
    ("slot past payload", 208 + 7 * 48 + 40, (4000).to_bytes(4, "big"), "overlaps the payload"),
])
def test_damaged_headers_are_refused(field: str, offset: int, value: bytes, message: str) -> None:
    area = bytearray(_area(os.urandom(64), b"pw"))
    area[offset : offset + len(value)] = value
    with pytest.raises(FormatError, match=message):
        luks1.Luks1Header.unpack(bytes(area), "bad.img")


@pytest.mark.parametrize("hash_spec", ["sha256", "sha1", "sha512"])
def test_reads_cryptsetup_luks1_filled_through_qemu(tmp_path: Path, hash_spec: str) -> None:
    """cryptsetup makes the container, QEMU's LUKS driver writes the data, lukspack reads it."""
    key = tmp_path / "key"
    key.write_bytes(os.urandom(20).hex().encode() + b"\n")  # any key file: not a DEK
    img = tmp_path / "cs.img"
    src = pattern_disk(tmp_path / "src.raw", 6)
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
    cryptsetup("luksFormat", "--type", "luks1", "--batch-mode", "--hash", hash_spec,
               "--key-file", str(key), "--pbkdf-force-iterations", "1000", str(img))
    qemu_img("convert", "-n", "-f", "raw", str(src), "--object", f"secret,id=s0,file={key}",
             "--target-image-opts", f"driver=luks,key-secret=s0,file.filename={img}")
    fd, vol = open_luks_path(str(img))
    try:
        assert vol.version == 1 and vol.header.hash_spec == hash_spec
        vk = vol.unlock(key.read_bytes())
        payload = os.pread(fd, vol.payload_size, vol.payload_offset)
    finally:
        os.close(fd)
    cipher = vol.sector_cipher(vk)
    buf = bytearray(payload)
    cipher.decrypt(buf, 0)
    assert bytes(buf[: 6 * MiB]) == src.read_bytes()

