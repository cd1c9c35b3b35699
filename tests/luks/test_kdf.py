"""Key derivation: Argon2 parameters and limits as cryptsetup's, calibration, PBKDF2 digests.

That our Argon2i/Argon2id derive what cryptsetup derives is tested by unlocking cryptsetup's
key slots (test_luks2_read_cryptsetup.py); here: limits, options and calibration.
"""

from __future__ import annotations

import os
import time

import pytest

from lukspack.errors import FormatError, LukspackError, UnsupportedError
from lukspack.luks import kdf
from lukspack.luks.format import KdfOptions


def test_argon2_variants_differ_and_are_deterministic() -> None:
    salt = b"s" * 32
    a = kdf.argon2("argon2id", b"pw", salt, 4, 64, 1, 32)
    assert a == kdf.argon2("argon2id", b"pw", salt, 4, 64, 1, 32)
    assert a != kdf.argon2("argon2i", b"pw", salt, 4, 64, 1, 32)
    assert a != kdf.argon2("argon2id", b"pw", salt, 4, 64, 2, 32)  # lanes change the result
    assert len(kdf.argon2("argon2id", b"pw", salt, 4, 64, 1, 64)) == 64


def test_argon2_bad_parameters_are_a_format_error() -> None:
    with pytest.raises(FormatError, match="memory 8 KiB, 4 threads"):
        kdf.argon2("argon2id", b"pw", b"s" * 32, 4, 8, 4, 32)


def test_slot_kdf_forced_values_are_used_as_given() -> None:
    k = kdf.slot_kdf("argon2i", "sha512", 64, force_iterations=5, memory_kb=100, parallel=1)
    assert k == kdf.SlotKdf("argon2i", 5, "sha512", 100, 1)
    p = kdf.slot_kdf("pbkdf2", "sha1", 32, force_iterations=1234)
    assert p == kdf.SlotKdf("pbkdf2", 1234, "sha1")


def test_argon2_defaults_are_cryptsetups() -> None:
    """1 GiB (at most half the RAM) and 4 threads (at most the CPUs), as cryptsetup 2.6."""
    k = kdf.slot_kdf("argon2id", "sha256", 64, force_iterations=4)
    assert k.memory == min(1024 * 1024, kdf.adjusted_phys_memory_kb())
    assert k.parallel == min(4, os.cpu_count() or 1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pbkdf": "argon2id", "force_iterations": 3}, "below the minimum 4"),
    ({"pbkdf": "pbkdf2", "force_iterations": 999}, "below the minimum 1000"),
    ({"pbkdf": "argon2id", "memory_kb": 31}, "--pbkdf-memory 31 is outside 32..4194304"),
    ({"pbkdf": "argon2id", "memory_kb": 4 * 1024 * 1024 + 1}, "outside 32..4194304"),
    ({"pbkdf": "argon2i", "parallel": 5}, "--pbkdf-parallel 5 is outside 1..4"),
    ({"pbkdf": "pbkdf2", "memory_kb": 1024}, "do not apply to pbkdf2"),
    ({"pbkdf": "pbkdf2", "parallel": 2}, "do not apply to pbkdf2"),
    ({"pbkdf": "scrypt"}, "unsupported PBKDF 'scrypt'"),
])
def test_slot_kdf_limits(kwargs: dict, message: str) -> None:
    pbkdf = kwargs.pop("pbkdf")
    with pytest.raises(UnsupportedError, match=message):
        kdf.slot_kdf(pbkdf, "sha256", 64, check_only=True, **kwargs)


def test_luks1_takes_pbkdf2_only() -> None:
    with pytest.raises(LukspackError, match="LUKS1 key slots use pbkdf2 only"):
        KdfOptions(pbkdf="argon2id").slot_kdf("luks1", 64, check_only=True)
    assert KdfOptions().slot_kdf("luks2", 64, check_only=True) is None  # argon2id by default


def test_unknown_hash_is_refused() -> None:
    with pytest.raises(UnsupportedError, match="unsupported hash 'md4x'"):
        kdf.slot_kdf("pbkdf2", "md4x", 64, check_only=True)


def test_argon2_calibration_hits_the_target_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """cryptsetup's search, on a clock the test controls (no wall-clock assertion: the machine
    is shared): a derivation costs t * m / 8192 ms; with 64 MiB allowed and 300 ms asked for, the
    costs found take 285..330 ms, within cryptsetup's -5 %..+10 %."""
    now = [0.0]

    def fake_argon2(kind, password, salt, t, m, parallel, length, **kw):  # noqa: ANN001, ANN003, ANN202
        now[0] += t * m / 8192 / 1000
        return bytearray(length)

    monkeypatch.setattr(kdf, "argon2", fake_argon2)
    monkeypatch.setattr(kdf.time, "perf_counter", lambda: now[0])
    t, m = kdf.argon2_calibrate("argon2id", 64, 300, 64 * 1024, 1)
    assert t >= kdf.ARGON2_MIN_TIME and 32 <= m <= 64 * 1024
    assert 285 <= t * m / 8192 <= 330, (t, m)


def test_argon2_calibration_runs_the_real_kdf() -> None:
    """The same search with the real Argon2: costs within cryptsetup's limits (timing is the
    benchmark's business, not this test's)."""
    t, m = kdf.argon2_calibrate("argon2id", 64, 100, 64 * 1024, 1)
    assert t >= kdf.ARGON2_MIN_TIME and 32 <= m <= 64 * 1024


def test_argon2_calibration_respects_the_memory_limit() -> None:
    """With 64 KiB allowed, cryptsetup's search raises the time cost instead of the memory."""
    t, m = kdf.argon2_calibrate("argon2i", 32, 50, 64, 1)
    assert m == 64 and t > kdf.ARGON2_MIN_TIME


def test_next_argon2_params_follows_cryptsetup() -> None:
    # too fast: memory grows first ...
    assert kdf._next_argon2(4, 65536, 4, 65536, 1 << 20, 250, 1000) == (False, 4, 262144)
    # ... up to the maximum, then time grows
    assert kdf._next_argon2(4, 65536, 4, 65536, 131072, 250, 1000) == (False, 8, 131072)
    # too slow: time shrinks first, then memory, never below the minimums
    assert kdf._next_argon2(8, 65536, 4, 65536, 1 << 20, 2000, 1000) == (False, 4, 65536)
    assert kdf._next_argon2(4, 131072, 4, 32, 1 << 20, 2000, 1000) == (False, 4, 65536)
    assert kdf._next_argon2(4, 64, 4, 64, 1 << 20, 2000, 1000) == (True, 4, 64)


def test_memory_cap_is_at_most_half_the_ram() -> None:
    total = kdf._meminfo()["MemTotal"]
    assert 64 * 1024 <= kdf.adjusted_phys_memory_kb() <= total // 2


def test_digest_iterations() -> None:
    assert kdf.digest_iterations("sha256", 64, forced=True) == 1000
    assert kdf.digest_iterations("sha256", 64, forced=False) > 1000


def test_pbkdf2_calibration_scales_with_time() -> None:
    k = kdf.slot_kdf("pbkdf2", "sha256", 64, iter_time_ms=100)
    assert k.type == "pbkdf2" and k.iterations >= 1000
    start = time.perf_counter()
    kdf.pbkdf2("sha256", b"pw", b"s" * 32, k.iterations, 64)
    assert (time.perf_counter() - start) < 1.0
