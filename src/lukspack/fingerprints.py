"""What a resumed upload compares: the output options a kept upload was made with against the
ones given now (options.fingerprint makes them). Its own module, importing nothing of lukspack,
so the object sink checks a resume without depending on the options module."""

from __future__ import annotations

from typing import Any

FINGERPRINT_FLAGS = {
    "format": "--output-format", "luks_type": "--type", "cipher": "--cipher",
    "key_bits": "--key-size", "sector_size": "--sector-size", "hash": "--hash",
    "pbkdf": "--pbkdf", "iter_time_ms": "--iter-time",
    "force_iterations": "--pbkdf-force-iterations", "memory_kb": "--pbkdf-memory",
    "parallel": "--pbkdf-parallel", "uuid": "--uuid", "label": "--label",
    "subsystem": "--subsystem", "key_slot": "--key-slot",
}


def fingerprint_change(kept: dict[str, Any] | None, now: dict[str, Any] | None) -> str | None:
    """None when a resume may continue, else the options that changed, each with the value the
    kept upload was made with: '--hash sha512 (the kept upload: sha256)'."""
    kept, now = kept or {}, now or {}
    changed = []
    for key in [*FINGERPRINT_FLAGS, *sorted(set(kept) | set(now) - set(FINGERPRINT_FLAGS))]:
        if kept.get(key) != now.get(key):
            flag = FINGERPRINT_FLAGS.get(key, key)
            changed.append(f"{flag} {_shown(now.get(key))} (the kept upload: "
                           f"{_shown(kept.get(key))})")
    return "; ".join(changed) or None


def _shown(v: Any) -> str:
    return "not given" if v is None else str(v)
