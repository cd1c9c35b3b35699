"""The plaintext digests: SHA-256 for people, XXH3-128 for encryption-time verification."""

from __future__ import annotations

import hashlib

import pytest

from lukspack import digest
from lukspack.containers.base import Run


def test_xxh3_128_published_value() -> None:
    """XXH3-128 of the empty input, from xxHash's reference (xxhsum -H2 of an empty file)."""
    h = digest.new(digest.VERIFY)
    assert h.hexdigest() == "99aa06d3014798d86001c324468d497f"


def test_unknown_digest_is_refused() -> None:
    with pytest.raises(ValueError):
        digest.new("crc32")


def test_runs_digest_covers_exactly_the_runs() -> None:
    data = memoryview(bytes(range(256)) * 64)
    got = digest.runs_digest(data, [Run(10, 100, 0, 0), Run(4000, 96, 0, 0)])
    ref = digest.new(digest.VERIFY)
    ref.update(bytes(data[10:110]) + bytes(data[4000:4096]))
    assert got == ref.digest()


@pytest.mark.parametrize("source_size", [6000, 8192, 4096])
def test_disk_digest_covers_the_disk_and_the_source(source_size: int) -> None:
    """disk_sha256 covers disk_size bytes (holes fed as zeros); source_sha256 the source's."""
    data = bytes(range(256)) * 32 + bytes(4096)  # 8 KiB of data, then 4 KiB of zeros
    data = data[:source_size] + bytes(12288 - source_size)
    d = digest.DiskDigest(12288, source_size)
    d.update(0, memoryview(data[:4096]), 4096)
    d.update(4096, memoryview(data[4096:8192]), 4096)
    d.update(8192, None, 4096)  # a hole: no buffer
    d.update(12288, None, 4096)  # past the disk: ignored
    assert d.hexdigest() == hashlib.sha256(data).hexdigest()
    assert d.source_hex == hashlib.sha256(data[:source_size]).hexdigest()
