"""AES-XTS: IEEE 1619 vectors, and both engines (OpenSSL's XTS looped in C, and numpy) against
OpenSSL's per-sector XTS called from Python."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lukspack.crypto.openssl import AesEcb, backend_name, native_xts_available
from lukspack.crypto.xts import XtsCipher, xts_reference
from tests.vectors import load

VECTORS = load("ieee1619_xts_aes.txt")


def test_vector_file_has_aes128_and_aes256() -> None:
    sizes = {len(v["Key1"]) // 2 for v in VECTORS}
    assert sizes == {16, 32} and len(VECTORS) >= 6


ENGINES = ["openssl", "numpy"]


def test_native_engine_is_built_and_chosen() -> None:
    """scripts/test.sh installs lukspack with its C loop; "auto" must pick OpenSSL's XTS."""
    assert native_xts_available()
    assert XtsCipher(os.urandom(64)).engine == "openssl"
    assert XtsCipher(os.urandom(64), engine="numpy").engine == "numpy"
    assert XtsCipher(os.urandom(48)).engine == "numpy"  # OpenSSL has no AES-192-XTS


def test_key_openssl_refuses_falls_back_to_numpy_and_leaves_openssl_clean() -> None:
    key = bytes(32) * 2  # equal halves: OpenSSL's XTS refuses them, IEEE 1619 vector 1 uses them
    assert XtsCipher(key).engine == "numpy"
    with pytest.raises(ValueError):
        XtsCipher(key, engine="openssl")
    test_ecb_backend_releases_the_gil_here()  # `cryptography` finds no stale OpenSSL error


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("v", VECTORS, ids=[f"vector{v['Vector']}" for v in VECTORS])
def test_ieee1619_encrypt_and_decrypt(v: dict[str, str], engine: str) -> None:
    key = bytes.fromhex(v["Key1"] + v["Key2"])
    ptx, ctx = bytes.fromhex(v["PTX"]), bytes.fromhex(v["CTX"])
    if engine == "openssl" and key[: len(key) // 2] == key[len(key) // 2 :]:
        engine = "numpy"  # OpenSSL refuses equal halves (tested above)
    cipher = XtsCipher(key, sector_size=len(ptx), iv_step=1, engine=engine)
    assert cipher.engine == engine
    buf = bytearray(ptx)
    cipher.encrypt(buf, int(v["DUSN"], 16))
    assert buf.hex() == v["CTX"]
    cipher.decrypt(buf, int(v["DUSN"], 16))
    assert bytes(buf) == ptx
    assert ctx != ptx


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("sector_size", [512, 1024, 4096])
@pytest.mark.parametrize("key_bytes", [32, 64])
def test_matches_openssl_per_sector_xts(sector_size: int, key_bytes: int, engine: str) -> None:
    key = os.urandom(key_bytes)
    data = os.urandom(3 * 1024 * 1024 + 8 * sector_size)  # crosses internal pass boundaries
    first_iv = 123456789
    buf = bytearray(data)
    XtsCipher(key, sector_size, engine=engine).encrypt(buf, first_iv)
    assert bytes(buf) == xts_reference(key, data, first_iv, sector_size)
    XtsCipher(key, sector_size, engine=engine).decrypt(buf, first_iv)
    assert bytes(buf) == data


@pytest.mark.parametrize("engine", ENGINES)
def test_plain_iv_wraps_at_32_bits(engine: str) -> None:
    """aes-xts-plain: the IV is the sector number mod 2^32, as dm-crypt's `plain`."""
    key = os.urandom(64)
    data = os.urandom(4 * 512)
    buf = bytearray(data)
    XtsCipher(key, iv_bits=32, engine=engine).encrypt(buf, 2**32 - 2)
    wrapped = xts_reference(key, data[:1024], 2**32 - 2) + xts_reference(key, data[1024:], 0)
    assert bytes(buf) == wrapped


@settings(max_examples=40, deadline=None)
@given(key=st.binary(min_size=64, max_size=64).filter(lambda k: k[:32] != k[32:]),
       sectors=st.integers(1, 40), first_iv=st.integers(0, 2**64 - 1 - 40 * 8),
       shift=st.sampled_from([512, 4096]), seed=st.integers(0, 2**32),
       engine=st.sampled_from(ENGINES))
def test_random_inputs_and_offsets(key: bytes, sectors: int, first_iv: int, shift: int,
                                   seed: int, engine: str) -> None:
    import random

    data = random.Random(seed).randbytes(sectors * shift)
    buf = bytearray(data)
    XtsCipher(key, shift, engine=engine).encrypt(buf, first_iv)
    assert bytes(buf) == xts_reference(key, data, first_iv, shift)
    XtsCipher(key, shift, engine=engine).decrypt(buf, first_iv)
    assert bytes(buf) == data


def test_iv_counts_512_byte_units_with_4096_byte_sectors() -> None:
    """cryptsetup: sector k of 4096 bytes has IV 8k (iv_large_sectors off)."""
    key = os.urandom(64)
    data = os.urandom(2 * 4096)
    big = bytearray(data)
    XtsCipher(key, 4096).encrypt(big, 16)
    second = xts_reference(key, data[4096:], 24, 4096)
    assert bytes(big[4096:]) == second


@pytest.mark.parametrize("engine", ENGINES)
def test_iv_overflow_is_refused(engine: str) -> None:
    with pytest.raises(ValueError):
        XtsCipher(os.urandom(64), engine=engine).encrypt(bytearray(1024), 2**64 - 1)


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_sizes_are_refused(engine: str) -> None:
    with pytest.raises(ValueError):
        XtsCipher(os.urandom(40), engine=engine)
    with pytest.raises(ValueError):
        XtsCipher(os.urandom(64), engine=engine).encrypt(bytearray(700), 0)
    with pytest.raises(TypeError):  # the C loop writes in place: read-only buffers are refused
        XtsCipher(os.urandom(64), engine=engine).encrypt(bytes(1024), 0)


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


def test_first_ciphers_made_by_many_threads_at_once() -> None:
    """Regression: worker threads loading libcrypto at the same moment once got a second ctypes
    handle without all return types declared, and crashed. Each run is a fresh process."""
    import subprocess
    import sys

    script = """
import os, threading
from lukspack.crypto.xts import XtsCipher
from lukspack.crypto.openssl import AesEcb
go = threading.Barrier(6)
def work(i):
    go.wait()
    c = XtsCipher(os.urandom(64)) if i % 2 else AesEcb(os.urandom(32), encrypt=True)
    buf = bytearray(8192)
    (c.encrypt(buf, i) if i % 2 else c.run(buf))
ts = [threading.Thread(target=work, args=(i,)) for i in range(6)]
[t.start() for t in ts]; [t.join() for t in ts]
"""
    for _ in range(12):
        p = subprocess.run([sys.executable, "-c", script], capture_output=True)
        assert p.returncode == 0, p.stderr.decode()
