"""AES-CBC (essiv, plain64, plain) and AES-XTS (plain64, plain) sector ciphers against
`cryptography`'s own modes, one sector at a time; and the dm-crypt cipher names."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lukspack.crypto.cbc import CbcCipher, cbc_reference
from lukspack.crypto.sector import check_cipher, make_sector_cipher, split_cipher_spec
from lukspack.crypto.xts import xts_reference
from lukspack.errors import UnsupportedError


@pytest.mark.parametrize("key_bytes", [16, 24, 32])
@pytest.mark.parametrize("sector_size", [512, 4096])
@pytest.mark.parametrize("iv_mode", ["essiv", "plain64", "plain"])
def test_cbc_matches_reference_both_ways(key_bytes: int, sector_size: int, iv_mode: str) -> None:
    key, data = os.urandom(key_bytes), os.urandom(sector_size * 21)
    first = (1 << 32) - 40 if iv_mode == "plain" else 987654321  # plain wraps at 2^32
    c = CbcCipher(key, sector_size, iv_mode)
    buf = bytearray(data)
    c.encrypt(buf, first)
    assert bytes(buf) == cbc_reference(key, data, first, sector_size, iv_mode)
    assert bytes(buf) != data
    c.decrypt(buf, first)
    assert bytes(buf) == data
    c.close()


def test_cbc_iv_counts_512_byte_units_with_4096_byte_sectors() -> None:
    """Sector k of a 4096-byte-sector buffer starting at IV n has IV n + 8k, as dm-crypt."""
    key, data = os.urandom(32), os.urandom(3 * 4096)
    buf = bytearray(data)
    make_sector_cipher("aes", "cbc-essiv:sha256", key, 4096).encrypt(buf, 16)
    for k in range(3):
        one = cbc_reference(key, data[k * 4096 : (k + 1) * 4096], 16 + 8 * k, 4096)
        assert bytes(buf[k * 4096 : (k + 1) * 4096]) == one


def test_essiv_salt_is_the_hash_of_the_key() -> None:
    key, data = os.urandom(32), os.urandom(512)
    buf = bytearray(data)
    make_sector_cipher("aes", "cbc-essiv:sha256", key).encrypt(buf, 5)
    assert bytes(buf) == cbc_reference(key, data, 5, essiv_hash="sha256")
    assert bytes(buf) != cbc_reference(key, data, 5, iv_mode="plain64")


def test_cbc_pass_boundaries() -> None:
    """More than one 1 MiB pass: IVs continue across passes."""
    key, data = os.urandom(16), os.urandom(3 * 1024 * 1024 + 512 * 7)
    buf = bytearray(data)
    make_sector_cipher("aes", "cbc-plain64", key).encrypt(buf, 3)
    assert bytes(buf) == cbc_reference(key, data, 3, iv_mode="plain64")


def test_xts_plain_wraps_the_iv_at_32_bits() -> None:
    key, data = os.urandom(64), os.urandom(512 * 6)
    first = (1 << 32) - 3
    buf = bytearray(data)
    make_sector_cipher("aes", "xts-plain", key).encrypt(buf, first)
    want = b"".join(xts_reference(key, data[i * 512 : (i + 1) * 512], (first + i) & 0xFFFFFFFF)
                    for i in range(6))
    assert bytes(buf) == want
    plain64 = bytearray(data)
    make_sector_cipher("aes", "xts-plain64", key).encrypt(plain64, first)
    assert plain64[:1536] == buf[:1536] and plain64[1536:] != buf[1536:]


@settings(max_examples=25, deadline=None)
@given(key=st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
       sectors=st.integers(1, 40), first=st.integers(0, (1 << 40)),
       mode=st.sampled_from(["cbc-essiv:sha256", "cbc-plain64", "cbc-plain"]))
def test_cbc_round_trip_property(key: bytes, sectors: int, first: int, mode: str) -> None:
    data = os.urandom(sectors * 512)
    buf = bytearray(data)
    c = make_sector_cipher("aes", mode, key)
    c.encrypt(buf, first)
    c.decrypt(buf, first)
    assert bytes(buf) == data


def test_aes192_xts_round_trip() -> None:
    data = os.urandom(4096 * 3)
    buf = bytearray(data)
    c = make_sector_cipher("aes", "xts-plain64", os.urandom(48), 4096)
    c.encrypt(buf, 8)
    assert bytes(buf) != data
    c.decrypt(buf, 8)
    assert bytes(buf) == data


@pytest.mark.parametrize(("spec", "key_bytes", "message"), [
    ("serpent-xts-plain64", 64, "unsupported cipher 'serpent-xts-plain64'"),
    ("twofish-cbc-essiv:sha256", 32, "unsupported cipher 'twofish-cbc-essiv:sha256'"),
    ("aes-cbc-essiv:sha1", 32, "unsupported cipher 'aes-cbc-essiv:sha1'"),
    ("aes-ecb", 16, "unsupported cipher 'aes-ecb'"),
    ("aes-xts-plain64", 16, "with a 128-bit key is not supported"),
    ("aes-cbc-essiv:sha256", 64, "with a 512-bit key is not supported"),
    ("capi:xts(aes)-plain64", 64, "unsupported cipher"),
])
def test_unsupported_ciphers_are_named(spec: str, key_bytes: int, message: str) -> None:
    with pytest.raises(UnsupportedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_cipher(*split_cipher_spec(spec), key_bytes)
