"""AES-XTS: IEEE 1619 vectors, and the vectorised engine against OpenSSL's per-sector XTS."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lukspack.crypto.openssl import AesEcb, backend_name
from lukspack.crypto.xts import XtsCipher, xts_reference
from tests.vectors import load

VECTORS = load("ieee1619_xts_aes.txt")


def test_vector_file_has_aes128_and_aes256() -> None:
    sizes = {len(v["Key1"]) // 2 for v in VECTORS}
    assert sizes == {16, 32} and len(VECTORS) >= 6


@pytest.mark.parametrize("v", VECTORS, ids=[f"vector{v['Vector']}" for v in VECTORS])
def test_ieee1619_encrypt_and_decrypt(v: dict[str, str]) -> None:
    key = bytes.fromhex(v["Key1"] + v["Key2"])
    ptx, ctx = bytes.fromhex(v["PTX"]), bytes.fromhex(v["CTX"])
    cipher = XtsCipher(key, sector_size=len(ptx), iv_step=1)
    buf = bytearray(ptx)
    cipher.encrypt(buf, int(v["DUSN"], 16))
    assert buf.hex() == v["CTX"]
    cipher.decrypt(buf, int(v["DUSN"], 16))
    assert bytes(buf) == ptx
    assert ctx != ptx


@pytest.mark.parametrize("sector_size", [512, 1024, 4096])
@pytest.mark.parametrize("key_bytes", [32, 64])
def test_matches_openssl_per_sector_xts(sector_size: int, key_bytes: int) -> None:
    key = os.urandom(key_bytes)
    data = os.urandom(3 * 1024 * 1024 + 8 * sector_size)  # crosses internal pass boundaries
    first_iv = 123456789
    buf = bytearray(data)
    XtsCipher(key, sector_size).encrypt(buf, first_iv)
    assert bytes(buf) == xts_reference(key, data, first_iv, sector_size)
    XtsCipher(key, sector_size).decrypt(buf, first_iv)
    assert bytes(buf) == data


@settings(max_examples=40, deadline=None)
@given(key=st.binary(min_size=64, max_size=64).filter(lambda k: k[:32] != k[32:]),
       sectors=st.integers(1, 40), first_iv=st.integers(0, 2**64 - 1 - 40 * 8),
       shift=st.sampled_from([512, 4096]), seed=st.integers(0, 2**32))
def test_random_inputs_and_offsets(key: bytes, sectors: int, first_iv: int, shift: int,
                                   seed: int) -> None:
    import random

    data = random.Random(seed).randbytes(sectors * shift)
    buf = bytearray(data)
    XtsCipher(key, shift).encrypt(buf, first_iv)
    assert bytes(buf) == xts_reference(key, data, first_iv, shift)


def test_iv_counts_512_byte_units_with_4096_byte_sectors() -> None:
    """cryptsetup: sector k of 4096 bytes has IV 8k (iv_large_sectors off)."""
    key = os.urandom(64)
    data = os.urandom(2 * 4096)
    big = bytearray(data)
    XtsCipher(key, 4096).encrypt(big, 16)
    second = xts_reference(key, data[4096:], 24, 4096)
    assert bytes(big[4096:]) == second


def test_iv_overflow_is_refused() -> None:
    with pytest.raises(ValueError):
        XtsCipher(os.urandom(64)).encrypt(bytearray(1024), 2**64 - 1)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        XtsCipher(os.urandom(40))
    with pytest.raises(ValueError):
        XtsCipher(os.urandom(64)).encrypt(bytearray(700), 0)


def test_ecb_backend_releases_the_gil_here() -> None:
    """The ctypes path is what lets two threads encrypt at once; it must be active in CI."""
    assert backend_name().startswith("libcrypto"), backend_name()
    key = os.urandom(32)
    a = bytearray(os.urandom(4096))
    b = bytearray(a)
    AesEcb(key, encrypt=True).run(a)
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    assert bytes(a) == enc.update(bytes(b)) + enc.finalize()
