"""Key derivation (PBKDF2 now; Argon2 arrives with LUKS2) and cryptsetup-style calibration.

PBKDF2 is OpenSSL's PKCS5_PBKDF2_HMAC through hashlib, which releases the GIL, so a key slot can be
derived or opened while other threads encrypt the payload.

Calibration follows cryptsetup's `crypt_pbkdf_check`: start at 2^15 iterations and grow the count
(x16 below 62 ms, x8 below 125 ms, x4 below 250 ms, else x2) until one run takes over 500 ms; the
rate of that run, in iterations per second, sets the counts for the requested time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lukspack.errors import UnsupportedError

HASHES = ("sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")
LUKS_MKD_ITERATIONS_MS = 125  # cryptsetup: the volume-key digest costs 1/8 s
MIN_ITERATIONS = 1000  # cryptsetup's LUKS_SLOT_ITERATIONS_MIN and LUKS_MKD_ITERATIONS_MIN
_CALIBRATION_MS = 500


def check_hash(name: str) -> str:
    name = name.lower()
    if name not in HASHES or name not in hashlib.algorithms_available:
        raise UnsupportedError(f"unsupported hash {name!r} (supported: {', '.join(HASHES)})")
    return name


_memo: dict[tuple, bytearray] | None = None
_memo_lock = threading.Lock()


@contextmanager
def remember() -> Iterator[None]:
    """Within this block, a derivation with exactly the same inputs is computed once.

    `encrypt` derives the key slot's key, writes the header, then verifies by unlocking the header
    it reads back from disk with the key file. Every input of that second derivation (hash, salt,
    iterations, passphrase) comes from the disk, so the check is complete; only the identical
    computation, seconds long by design, is not repeated. Remembered keys are wiped on exit.
    """
    global _memo
    with _memo_lock:
        _memo = {}
    try:
        yield
    finally:
        with _memo_lock:
            for value in (_memo or {}).values():
                value[:] = bytes(len(value))
            _memo = None


def memoized(key: tuple, compute) -> bytearray:  # noqa: ANN001 - compute: () -> bytes
    """compute(), or the result of the same call inside an active remember() block (a copy)."""
    with _memo_lock:
        memo = _memo
        if memo is not None and key in memo:
            return bytearray(memo[key])
    result = bytearray(compute())
    if memo is not None:
        with _memo_lock:
            memo[key] = bytearray(result)
    return result


def pbkdf2(hash_name: str, password: bytes | bytearray, salt: bytes, iterations: int,
           length: int) -> bytearray:
    """PBKDF2-HMAC; the result is a bytearray the caller wipes."""
    if iterations < 1:
        raise ValueError(f"PBKDF2 iterations must be at least 1, not {iterations}")
    name = check_hash(hash_name)
    key = ("pbkdf2", name, hashlib.sha256(password).digest(), bytes(salt), iterations, length)
    return memoized(key, lambda: hashlib.pbkdf2_hmac(name, bytes(password), salt, iterations,
                                                     length))


def pbkdf2_rate(hash_name: str, key_length: int) -> int:
    """PBKDF2 iterations per second for this hash and output length, measured as cryptsetup does."""
    iterations = 1 << 15
    while True:
        start = time.perf_counter()
        hashlib.pbkdf2_hmac(check_hash(hash_name), b"foobarfo", b"0123456789abcdef0123456789abcdef",
                            iterations, key_length)
        ms = (time.perf_counter() - start) * 1000
        if ms > _CALIBRATION_MS:
            return max(1, int(iterations * 1000 / ms))
        iterations <<= 4 if ms <= 62 else 3 if ms <= 125 else 2 if ms <= 250 else 1


@dataclass(frozen=True)
class Pbkdf2Cost:
    slot_iterations: int
    digest_iterations: int


def pbkdf2_cost(hash_name: str, key_length: int, iter_time_ms: int = 2000,
                force_iterations: int | None = None) -> Pbkdf2Cost:
    """Iteration counts for a LUKS1 key slot and volume-key digest, as `cryptsetup luksFormat`."""
    if force_iterations is not None:
        if force_iterations < MIN_ITERATIONS:
            raise UnsupportedError(
                f"--pbkdf-force-iterations {force_iterations} is below the minimum {MIN_ITERATIONS}")
        return Pbkdf2Cost(force_iterations, MIN_ITERATIONS)
    if iter_time_ms < 1:
        raise UnsupportedError(f"--iter-time must be at least 1 ms, not {iter_time_ms}")
    rate = pbkdf2_rate(hash_name, key_length)
    return Pbkdf2Cost(
        slot_iterations=max(MIN_ITERATIONS, rate * iter_time_ms // 1000),
        digest_iterations=max(MIN_ITERATIONS, rate * LUKS_MKD_ITERATIONS_MS // 1000),
    )
