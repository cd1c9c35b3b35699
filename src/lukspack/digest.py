"""Digests of the plaintext as it streams, on both sides of an encryption.

Two algorithms, for two purposes:

- SHA-256 is what people see: `--json` summaries, `verify` and `decrypt` output. It costs 0.7 s
  per GiB here even with SHA-NI.
- XXH3-128 is what `encrypt --verify` compares: the source's bytes as they were read against the
  output's bytes decrypted back. That comparison guards against our own bugs and I/O faults, not
  against an adversary (one who can change our memory between the two reads has won already), so
  a 128-bit non-cryptographic hash is enough, and at over 10 GB/s it takes verification's two
  digests from 1.4 CPU seconds per GiB to about 0.2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import xxhash

SHA256 = "sha256"
VERIFY = "xxh3_128"

Reader = Callable[[int, memoryview], None]


def new(name: str) -> Any:
    """A hashlib-style object: update(data), hexdigest()."""
    if name == SHA256:
        return hashlib.sha256()
    if name == VERIFY:
        return xxhash.xxh3_128()
    raise ValueError(f"unknown digest {name!r}")


def source_digests(read: Reader, limit: int, *, sha256: bool, verify: bool
                   ) -> tuple[Reader, Any, Any]:
    """(reader, SHA-256 or None, verification digest or None) for an encryption's source: the
    reader feeds the digests asked for with the source's first `limit` bytes as they stream."""
    sha = new(SHA256) if sha256 else None
    check = new(VERIFY) if verify else None
    return hashed_reader(read, limit, [d for d in (sha, check) if d is not None]), sha, check


def hashed_reader(read: Reader, limit: int, digests: list[Any]) -> Reader:
    """Wrap a reader so each digest is fed exactly the first `limit` bytes, in order."""
    if not digests:
        return read

    def wrapped(offset: int, view: memoryview) -> None:
        read(offset, view)
        if offset < limit:
            part = view[: limit - offset]
            for d in digests:
                d.update(part)

    return wrapped


class PlainCheck:
    """The decrypting side: digests the first `plain_size` bytes written to it (in order) and
    counts chunks whose bytes past `plain_size` (the padding up to a whole MiB or cluster) are
    not zeros."""

    def __init__(self, name: str, plain_size: int) -> None:
        self.name = name
        self.plain_size = plain_size
        self._hash = new(name)
        self.nonzero_padding = 0

    def update(self, offset: int, data: memoryview) -> None:
        keep = max(0, min(len(data), self.plain_size - offset))
        if keep:
            self._hash.update(data[:keep])
        if keep < len(data) and np.frombuffer(data[keep:], dtype=np.uint8).any():
            self.nonzero_padding += 1

    def result(self) -> dict[str, str]:
        return {f"plaintext_{self.name}": self._hash.hexdigest()}
