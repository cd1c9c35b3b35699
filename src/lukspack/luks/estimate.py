"""How long a key slot KDF will take on this machine, before it starts.

A calibrated cost takes --iter-time by construction. A forced one (--pbkdf-force-iterations,
with --pbkdf-memory for Argon2) can take minutes: a short measurement (PBKDF2's rate, as
cryptsetup benchmarks it; one Argon2 pass over at most 64 MiB) scaled to the forced cost gives
the estimate, so a command can say how long it will take before it starts (`long_kdf_note`).
"""

from __future__ import annotations

import logging
import os
import time

from lukspack.luks.kdf import (
    DEFAULT_MEMORY_KB,
    DEFAULT_PARALLEL,
    adjusted_phys_memory_kb,
    argon2,
    pbkdf2_rate,
)

log = logging.getLogger(__name__)

LONG_KDF_S = 60.0  # a KDF longer than this is announced before it starts
_PROBE_MEMORY_KB = 64 * 1024
# forced costs below these cannot reach a minute on any machine lukspack runs on: not measured
_PBKDF2_SURELY_SHORT = 10_000_000  # iterations (PBKDF2-SHA256 runs at over 500,000 a second)
_ARGON2_SURELY_SHORT = 1 << 20  # time cost x KiB: one pass over 1 GiB


def estimate_kdf_seconds(pbkdf: str, hash_name: str, key_length: int, *,
                         iter_time_ms: int = 2000, force_iterations: int | None = None,
                         memory_kb: int | None = None, parallel: int | None = None,
                         measure: bool = True) -> float:
    """Seconds one derivation of a key slot takes with these options here. Calibrated costs:
    iter_time_ms. Forced: measured (unless measure is False and the cost is surely short)."""
    if force_iterations is None:
        return iter_time_ms / 1000
    if pbkdf == "pbkdf2":
        if not measure and force_iterations < _PBKDF2_SURELY_SHORT:
            return 0.0
        return force_iterations / pbkdf2_rate(hash_name, key_length)
    memory = min(DEFAULT_MEMORY_KB if memory_kb is None else memory_kb, adjusted_phys_memory_kb())
    threads = min(DEFAULT_PARALLEL if parallel is None else parallel, os.cpu_count() or 1)
    if not measure and force_iterations * memory < _ARGON2_SURELY_SHORT:
        return 0.0
    probe = max(min(memory, _PROBE_MEMORY_KB), 8 * threads)
    start = time.perf_counter()
    argon2(pbkdf, b"foobarfo", b"0123456789abcdef0123456789abcdef", 1, probe, threads,
           key_length)
    one = time.perf_counter() - start  # one pass over probe KiB; Argon2 is linear in t x m
    seconds = one * force_iterations * memory / probe
    log.debug("Argon2 probe: one pass over %d KiB in %.3f s; %d passes over %d KiB: %.1f s",
              probe, one, force_iterations, memory, seconds)
    return seconds


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def long_kdf_note(pbkdf: str, hash_name: str, key_length: int, *, iter_time_ms: int = 2000,
                  force_iterations: int | None = None, memory_kb: int | None = None,
                  parallel: int | None = None) -> str | None:
    """A sentence saying how long the KDF will take, when that is over a minute; else None."""
    seconds = estimate_kdf_seconds(pbkdf, hash_name, key_length, iter_time_ms=iter_time_ms,
                                   force_iterations=force_iterations, memory_kb=memory_kb,
                                   parallel=parallel, measure=False)
    if seconds <= LONG_KDF_S:
        return None
    if pbkdf == "pbkdf2":
        what = f"pbkdf2-{hash_name}, {force_iterations or 'calibrated'} iterations"
    else:
        what = (f"{pbkdf}, time cost {force_iterations or 'calibrated'}, "
                f"{DEFAULT_MEMORY_KB if memory_kb is None else memory_kb} KiB, "
                f"{DEFAULT_PARALLEL if parallel is None else parallel} threads")
    how = "" if force_iterations is None else " (estimated from a short calibration)"
    return (f"the key slot KDF ({what}) will take about {_duration(seconds)} on this machine"
            f"{how}, and as long again each time the key opens the image")
