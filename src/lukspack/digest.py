"""Digests of the plaintext as it streams.

Two algorithms, for two purposes:

- SHA-256 is what people see: `disk_sha256` and `source_sha256` in `encrypt --json`, `verify`
  and `decrypt`. It costs 0.7 s per GiB here even with SHA-NI, so `encrypt` computes it only for
  --json.
- XXH3-128 is what encryption-time verification compares: each chunk of the guest disk as read
  from the source against the same chunk of the output read back through its decrypting reader
  (readback.py; a custom sink that cannot be read back: the chunk's runs decrypted again before
  they leave, "tee"). That comparison guards against our own bugs and I/O faults, not
  against an adversary (one who can change our memory between the two reads has won already),
  so a 128-bit non-cryptographic hash is enough, at over 10 GB/s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import xxhash

SHA256 = "sha256"
VERIFY = "xxh3_128"


def new(name: str) -> Any:
    """A hashlib-style object: update(data), hexdigest()."""
    if name == SHA256:
        return hashlib.sha256()
    if name == VERIFY:
        return xxhash.xxh3_128()
    raise ValueError(f"unknown digest {name!r}")


def runs_digest(view: memoryview, runs: Iterable[Any]) -> bytes:
    """XXH3-128 of the chunk bytes the runs cover (objects with .start and .length), in order."""
    d = xxhash.xxh3_128()
    for r in runs:
        d.update(view[r.start : r.start + r.length])
    return d.digest()


class DiskDigest:
    """SHA-256 of the disk as the output presents it (disk_size bytes: the source, then the
    container's zero padding) and of the source's own bytes (its first source_size bytes)."""

    def __init__(self, disk_size: int, source_size: int) -> None:
        self.disk_size, self.source_size = disk_size, source_size
        self._h = hashlib.sha256()
        self.source_hex: str | None = None if source_size else self._h.hexdigest()
        self._zeros = b""

    def update(self, offset: int, view: memoryview | None, n: int) -> None:
        end = min(offset + n, self.disk_size)
        if end <= offset:
            return
        if view is None:
            if len(self._zeros) < end - offset:
                self._zeros = bytes(end - offset)
            data = memoryview(self._zeros)[: end - offset]
        else:
            data = view[: end - offset]
        cut = self.source_size - offset
        if 0 < cut <= len(data):
            self._h.update(data[:cut])
            self.source_hex = self._h.copy().hexdigest()
            data = data[cut:]
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()
