"""Key derivation (PBKDF2, Argon2i, Argon2id) and cryptsetup-style calibration.

PBKDF2 is OpenSSL's PKCS5_PBKDF2_HMAC through hashlib, which releases the GIL, so a key slot can be
derived or opened while other threads encrypt the payload. Argon2 is libargon2 through argon2-cffi
(CFFI releases the GIL too), version 0x13, no secret and no associated data, as cryptsetup calls it.

PBKDF2 calibration follows cryptsetup's `crypt_pbkdf_check`: start at 2^15 iterations and grow the
count (x16 below 62 ms, x8 below 125 ms, x4 below 250 ms, else x2) until one run takes over 500 ms;
the rate of that run, in iterations per second, sets the counts for the requested time.
Argon2 calibration (`crypt_argon2_check`) searches memory first, then time, for the target time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lukspack.errors import FormatError, UnsupportedError, UsageError

HASHES = ("sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")
LUKS_MKD_ITERATIONS_MS = 125  # cryptsetup: the volume-key digest costs 1/8 s
MIN_ITERATIONS = 1000  # cryptsetup's LUKS_SLOT_ITERATIONS_MIN and LUKS_MKD_ITERATIONS_MIN
_CALIBRATION_MS = 500
log = logging.getLogger(__name__)
U32_MAX = (1 << 32) - 1  # LUKS1 iteration fields and cryptsetup's option and cost limits
# --iter-time up to this many ms cannot make a PBKDF2 count overflow 32 bits below 8.5 million
# iterations per second (over twice the fastest rate cryptsetup benchmarks report); a longer time
# is checked by calibrating at once, before anything is written (KdfOptions.check)
SAFE_ITER_TIME_MS = 500_000


def check_hash(name: str) -> str:
    name = name.lower()
    if name not in HASHES or name not in hashlib.algorithms_available:
        raise UnsupportedError(f"unsupported hash {name!r} (supported: {', '.join(HASHES)})")
    return name


class UnsupportedOption(UsageError, UnsupportedError):
    """An option value lukspack does not know or that cannot work with the others: a usage error
    (exit code 2), and an UnsupportedError for callers that catch those."""


def check_hash_option(name: str) -> str:
    """check_hash for a --hash option: an unknown name is a usage error."""
    try:
        return check_hash(name)
    except UnsupportedError as e:
        raise UnsupportedOption(str(e)) from None


class KdfCache:
    """Key derivations done for one encryption, so that the same computation is not repeated.

    `encrypt` derives the key slot's key, builds the header, then verifies it by unlocking the
    header bytes with the key file. Every input of that second derivation (hash, salt, cost,
    passphrase) comes from the header being checked, so the check is complete; only the identical
    computation, seconds long by design, is not repeated. One cache belongs to one encryption and
    is passed explicitly to the calls that may use it (two encryptions in one process each have
    their own); wipe() (or leaving a with-block) overwrites the remembered keys. Thread-safe: the
    header is built in one thread and checked in another.
    """

    def __init__(self) -> None:
        self._memo: dict[tuple[object, ...], bytearray] = {}
        self._lock = threading.Lock()
        self.hits = 0  # derivations answered from the cache

    def derive(self, key: tuple[object, ...], compute: Callable[[], bytes]) -> bytearray:
        """compute(), or a copy of what the same call returned before."""
        with self._lock:
            if key in self._memo:
                self.hits += 1
                return bytearray(self._memo[key])
        result = bytearray(compute())
        with self._lock:
            self._memo.setdefault(key, bytearray(result))
        return result

    def __len__(self) -> int:
        return len(self._memo)

    def wipe(self) -> None:
        with self._lock:
            for value in self._memo.values():
                value[:] = bytes(len(value))
            self._memo.clear()

    def __enter__(self) -> KdfCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()


def _derive(cache: KdfCache | None, key: tuple[object, ...],
            compute: Callable[[], bytes]) -> bytearray:
    return cache.derive(key, compute) if cache is not None else bytearray(compute())


def pbkdf2(hash_name: str, password: bytes | bytearray, salt: bytes, iterations: int,
           length: int, cache: KdfCache | None = None) -> bytearray:
    """PBKDF2-HMAC; the result is a bytearray the caller wipes."""
    if not 1 <= iterations <= U32_MAX:
        raise FormatError(f"PBKDF2 iterations {iterations} is outside 1..{U32_MAX}")
    name = check_hash(hash_name)
    key = ("pbkdf2", name, hashlib.sha256(password).digest(), bytes(salt), iterations, length)
    return _derive(cache, key, lambda: hashlib.pbkdf2_hmac(name, bytes(password), salt,
                                                           iterations, length))


def pbkdf2_rate(hash_name: str, key_length: int) -> int:
    """PBKDF2 iterations per second for this hash and output length, measured as cryptsetup does.

    cryptsetup times its benchmark in CPU time (getrusage), not wall time; here the calibrating
    thread's own CPU time, which is the same thing for a single-threaded cryptsetup and is not
    inflated by lukspack's encryption threads running beside it, so calibration can overlap the
    payload stream and still choose the iteration count an idle machine would.
    """
    iterations = 1 << 15
    while True:
        start = time.thread_time()
        hashlib.pbkdf2_hmac(check_hash(hash_name), b"foobarfo", b"0123456789abcdef0123456789abcdef",
                            iterations, key_length)
        ms = (time.thread_time() - start) * 1000
        if ms > _CALIBRATION_MS:
            return max(1, int(iterations * 1000 / ms))
        iterations <<= 4 if ms <= 62 else 3 if ms <= 125 else 2 if ms <= 250 else 1


def calibrate_before_stream(force_iterations: int | None) -> bool:
    """Whether PBKDF2 must be calibrated before the payload threads start.

    The thread CPU clock is immune to threads waiting for a core, not to a sibling hardware thread
    sharing this core (SMT): there, encryption beside the benchmark would make each CPU-second do
    less work and the count come out weaker than on an idle machine. So calibration runs first
    unless the CPUs are known not to share cores. Forced costs need no calibration.
    """
    if force_iterations is not None:
        return False
    import glob

    lists = glob.glob("/sys/devices/system/cpu/cpu[0-9]*/topology/thread_siblings_list")
    if not lists:
        return True  # unknown topology: the safe order
    try:
        for path in lists:
            with open(path) as f:
                text = f.read().strip()
            if "," in text or "-" in text:
                return True
    except OSError:
        return True
    return False


@dataclass(frozen=True)
class Pbkdf2Cost:
    slot_iterations: int
    digest_iterations: int


def digest_iterations(hash_name: str, key_length: int, forced: bool) -> int:
    """Iterations of a LUKS2 volume-key digest: 1/8 s of PBKDF2, or the minimum when the key slot
    cost is forced (cryptsetup's PBKDF2_digest_store)."""
    if forced:
        return MIN_ITERATIONS
    return max(MIN_ITERATIONS, pbkdf2_rate(hash_name, key_length) * LUKS_MKD_ITERATIONS_MS // 1000)


def pbkdf2_cost(hash_name: str, key_length: int, iter_time_ms: int = 2000,
                force_iterations: int | None = None) -> Pbkdf2Cost:
    """Iteration counts for a LUKS1 key slot and volume-key digest, as `cryptsetup luksFormat`."""
    if force_iterations is not None:
        if force_iterations < MIN_ITERATIONS:
            raise UnsupportedError(
                f"--pbkdf-force-iterations {force_iterations} is below the minimum {MIN_ITERATIONS}")
        if force_iterations > U32_MAX:
            raise UnsupportedError(f"--pbkdf-force-iterations {force_iterations} is above the "
                                   f"maximum {U32_MAX}")
        log.info("key slot KDF: pbkdf2-%s, %d iterations (--pbkdf-force-iterations)",
                 hash_name, force_iterations)
        return Pbkdf2Cost(force_iterations, MIN_ITERATIONS)
    _check_iter_time(iter_time_ms)
    rate = pbkdf2_rate(hash_name, key_length)
    slot = max(MIN_ITERATIONS, rate * iter_time_ms // 1000)
    log.info("key slot KDF: pbkdf2-%s, %d iterations (%d per second here, for --iter-time "
             "%d ms)", hash_name, slot, rate, iter_time_ms)
    if slot > U32_MAX:  # cryptsetup's crypt_pbkdf_check refuses this too (-EINVAL)
        raise UnsupportedError(f"--iter-time {iter_time_ms} ms needs {slot} PBKDF2-{hash_name} "
                               f"iterations on this machine ({rate} per second), above the "
                               f"maximum {U32_MAX} of a key slot: use a shorter --iter-time")
    return Pbkdf2Cost(
        slot_iterations=slot,
        digest_iterations=max(MIN_ITERATIONS, rate * LUKS_MKD_ITERATIONS_MS // 1000),
    )


def _check_iter_time(iter_time_ms: int) -> None:
    if not 1 <= iter_time_ms <= U32_MAX:
        raise UnsupportedError(f"--iter-time {iter_time_ms} is outside 1..{U32_MAX} ms")


# -- Argon2 and the key slot KDF of LUKS2 --------------------------------------------------------

PBKDFS = ("pbkdf2", "argon2i", "argon2id")
ARGON2_MIN_TIME = 4  # cryptsetup's crypt_pbkdf_get_limits for argon2i/argon2id
ARGON2_MIN_MEMORY = 32  # KiB, hard limit
ARGON2_MIN_BENCH_MEMORY = 64 * 1024  # the benchmark starts at 64 MiB
ARGON2_MAX_MEMORY = 4 * 1024 * 1024  # 4 GiB
ARGON2_MAX_PARALLEL = 4
DEFAULT_ITER_TIME_MS = 2000  # DEFAULT_LUKS1_ITER_TIME and DEFAULT_LUKS2_ITER_TIME
DEFAULT_MEMORY_KB = 1024 * 1024  # DEFAULT_LUKS2_MEMORY_KB
DEFAULT_PARALLEL = 4  # DEFAULT_LUKS2_PARALLEL_THREADS, reduced to the online CPUs
_BENCH_MIN_MS, _BENCH_MIN_MS_FAST, _BENCH_SAMPLES_FAST = 250, 10, 3


def argon2(kind: str, password: bytes | bytearray, salt: bytes, time_cost: int, memory_kb: int,
           parallel: int, length: int, cache: KdfCache | None = None) -> bytearray:
    """Argon2i or Argon2id, version 0x13; the result is a bytearray the caller wipes.

    Calibration runs pass no cache: a measurement must really compute."""
    from argon2.exceptions import HashingError
    from argon2.low_level import Type, hash_secret_raw

    kinds = {"argon2i": Type.I, "argon2id": Type.ID}
    if kind not in kinds:
        raise UnsupportedError(f"unsupported PBKDF {kind!r} (supported: {', '.join(PBKDFS)})")
    key = (kind, hashlib.sha256(password).digest(), bytes(salt), time_cost, memory_kb, parallel,
           length)
    try:
        def compute() -> bytes:
            return hash_secret_raw(bytes(password), salt, time_cost, memory_kb, parallel, length,
                                   kinds[kind])

        return _derive(cache, key, compute)
    except (HashingError, OverflowError) as e:
        raise FormatError(f"{kind} time {time_cost}, memory {memory_kb} KiB, {parallel} threads: "
                          f"{e}") from None


def adjusted_phys_memory_kb() -> int:
    """What cryptsetup lets Argon2 use: half the RAM; without swap on a machine with under 4 GiB,
    half the free memory when that is smaller and over 64 MiB (pbkdf_adjusted_phys_memory_kb)."""
    info = _meminfo()
    total = info.get("MemTotal", 0)
    if total < 128 * 1024 or total > 0xFFFFFFFF:
        return DEFAULT_MEMORY_KB
    memory = total // 2
    if memory < 2 * 1024 * 1024 and not info.get("SwapTotal", 0):
        free = info.get("MemAvailable", info.get("MemFree", 0)) // 2
        if 64 * 1024 < free < memory:
            return free
    return memory


def _meminfo() -> dict[str, int]:
    try:
        with open("/proc/meminfo") as f:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)}
    except (OSError, ValueError):
        try:
            return {"MemTotal": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 1024}
        except (ValueError, OSError):
            return {}


def argon2_calibrate(kind: str, key_length: int, target_ms: int, max_memory_kb: int,
                     parallel: int) -> tuple[int, int]:
    """(time cost, memory KiB) that take about target_ms, as cryptsetup's crypt_argon2_check:
    find costs that take at least 250 ms (memory first, from 64 MiB), then scale memory up to
    max_memory_kb, then time, re-measuring until within -5 %..+10 % of the target."""
    min_t = ARGON2_MIN_TIME
    min_m = max(min(ARGON2_MIN_BENCH_MEMORY, max_memory_kb), parallel * 8)
    max_m = max_memory_kb
    if max_m < min_m:
        raise UnsupportedError(f"--pbkdf-memory {max_memory_kb} is below the minimum {min_m} KiB")
    t, m = min_t, min_m

    def measure(samples: int, atleast: int) -> float:
        best = float("inf")
        for _ in range(samples):
            start = time.perf_counter()
            argon2(kind, b"foobarfo", b"0123456789abcdef0123456789abcdef", t, m, parallel,
                   key_length)
            ms = int((time.perf_counter() - start) * 1000)  # whole ms, as cryptsetup
            best = min(best, ms)
            if ms < atleast:
                break
        return best

    while True:  # 1. small costs that take at least 250 ms
        ms = measure(_BENCH_SAMPLES_FAST, _BENCH_MIN_MS)
        if ms >= _BENCH_MIN_MS:
            break
        if m == max_m:
            new = t * 16 if ms < _BENCH_MIN_MS_FAST else int(t * _BENCH_MIN_MS / ms)
            if new == t:
                break
            t = new
        else:
            new = m * 16 if ms < _BENCH_MIN_MS_FAST else int(m * _BENCH_MIN_MS / ms)
            if new == m:
                break
            m = min(new, max_m)
    lo, hi = target_ms * 95 / 100, target_ms * 110 / 100
    while True:  # 2. and 3. estimate the target costs, measure, correct
        final, t, m = _next_argon2(t, m, min_t, min_m, max_m, ms, target_ms)
        if final:
            return t, m
        ms = measure(1, int(lo))
        if lo <= ms <= hi:
            return t, m


def _next_argon2(t: int, m: int, min_t: int, min_m: int, max_m: int, ms: float,
                 target: int) -> tuple[bool, int, int]:
    """cryptsetup's next_argon2_params: (final, time, memory) for the next measurement."""
    old = (t, m)
    ms = max(int(ms), 1)
    if ms > target:  # too slow: lower time first, then memory
        new_t = t * target // ms
        if new_t < min_t:
            m, t = t * m * target // (min_t * ms), min_t
            if m < min_m:
                return True, t, min_m
        else:
            t = new_t
    else:  # too fast: raise memory first, then time
        new_m = m * target // ms
        if new_m > max_m:
            t, m = t * m * target // (max_m * ms), max_m
            if t <= min_t:
                return True, min_t, m
        elif new_m < min_m:
            return True, t, min_m
        else:
            m = new_m
    return (t, m) == old, t, m


@dataclass(frozen=True)
class SlotKdf:
    """The KDF of one key slot: pbkdf2 (hash, iterations) or argon2i/argon2id (time, memory, cpus)."""

    type: str
    iterations: int  # PBKDF2 iterations, or the Argon2 time cost
    hash: str = "sha256"  # PBKDF2 only
    memory: int = 0  # KiB, Argon2 only
    parallel: int = 0  # Argon2 only

    def derive(self, passphrase: bytes | bytearray, salt: bytes, length: int,
               cache: KdfCache | None = None) -> bytearray:
        if self.type == "pbkdf2":
            return pbkdf2(self.hash, passphrase, salt, self.iterations, length, cache)
        return argon2(self.type, passphrase, salt, self.iterations, self.memory, self.parallel,
                      length, cache)


def slot_kdf(pbkdf: str, hash_name: str, key_length: int, *,
             iter_time_ms: int = DEFAULT_ITER_TIME_MS, force_iterations: int | None = None,
             memory_kb: int | None = None, parallel: int | None = None,
             check_only: bool = False) -> SlotKdf | None:
    """The key slot KDF `cryptsetup luksFormat`/`luksAddKey` would choose for these options
    (verify_pbkdf_params, init_pbkdf_type and the benchmark), with the same limits.
    check_only: validate the options now (fast), return None, calibrate later."""
    hash_name = check_hash_option(hash_name)
    if pbkdf not in PBKDFS:
        raise UnsupportedOption(f"unsupported PBKDF {pbkdf!r} (supported: {', '.join(PBKDFS)})")
    _check_iter_time(iter_time_ms)
    if force_iterations is not None and force_iterations > U32_MAX:
        raise UnsupportedError(f"--pbkdf-force-iterations {force_iterations} is above the "
                               f"maximum {U32_MAX}")
    if pbkdf == "pbkdf2":
        if memory_kb is not None or parallel is not None:
            raise UnsupportedOption("--pbkdf-memory and --pbkdf-parallel do not apply to "
                                    "pbkdf2 (Argon2 costs)")
        if force_iterations is not None and force_iterations < MIN_ITERATIONS:
            raise UnsupportedError(f"--pbkdf-force-iterations {force_iterations} is below the "
                                   f"minimum {MIN_ITERATIONS} for pbkdf2")
        if check_only:
            if force_iterations is None and iter_time_ms > SAFE_ITER_TIME_MS:
                pbkdf2_cost(hash_name, key_length, iter_time_ms)  # may overflow: find out now
            return None
        cost = pbkdf2_cost(hash_name, key_length, iter_time_ms, force_iterations)
        return SlotKdf("pbkdf2", cost.slot_iterations, hash_name)
    if force_iterations is not None and force_iterations < ARGON2_MIN_TIME:
        raise UnsupportedError(f"--pbkdf-force-iterations {force_iterations} is below the minimum "
                               f"{ARGON2_MIN_TIME} for {pbkdf}")
    memory = DEFAULT_MEMORY_KB if memory_kb is None else memory_kb
    if not ARGON2_MIN_MEMORY <= memory <= ARGON2_MAX_MEMORY:
        raise UnsupportedError(f"--pbkdf-memory {memory} is outside {ARGON2_MIN_MEMORY}.."
                               f"{ARGON2_MAX_MEMORY} KiB")
    threads = DEFAULT_PARALLEL if parallel is None else parallel
    if not 1 <= threads <= ARGON2_MAX_PARALLEL:
        raise UnsupportedError(f"--pbkdf-parallel {threads} is outside 1..{ARGON2_MAX_PARALLEL}")
    if check_only:
        return None
    # cryptsetup 2.6 caps threads by the online CPUs and memory by the RAM even when forced
    threads = min(threads, os.cpu_count() or 1)
    memory = min(memory, adjusted_phys_memory_kb())
    if force_iterations is not None:  # no benchmark: the values are used as given
        log.info("key slot KDF: %s, time cost %d, %d KiB, %d threads (forced)", pbkdf,
                 force_iterations, memory, threads)
        return SlotKdf(pbkdf, force_iterations, hash_name, memory, threads)
    t, m = argon2_calibrate(pbkdf, key_length, iter_time_ms, memory, threads)
    log.info("key slot KDF: %s, time cost %d, %d KiB, %d threads (calibrated for --iter-time "
             "%d ms)", pbkdf, t, m, threads, iter_time_ms)
    return SlotKdf(pbkdf, t, hash_name, m, threads)
