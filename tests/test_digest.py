"""The plaintext digests: SHA-256 for people, XXH3-128 for encrypt's own verification."""

from __future__ import annotations

import hashlib

import pytest

from lukspack import digest


def test_xxh3_128_published_value() -> None:
    """XXH3-128 of the empty input, from xxHash's reference (xxhsum -H2 of an empty file)."""
    h = digest.new(digest.VERIFY)
    assert h.hexdigest() == "99aa06d3014798d86001c324468d497f"


def test_unknown_digest_is_refused() -> None:
    with pytest.raises(ValueError):
        digest.new("crc32")


def test_hashed_reader_feeds_exactly_the_first_limit_bytes() -> None:
    data = bytes(range(256)) * 64  # 16 KiB

    def read(offset: int, view: memoryview) -> None:
        view[:] = data[offset : offset + len(view)].ljust(len(view), b"\x00")

    a, b = digest.new(digest.SHA256), digest.new(digest.VERIFY)
    reader = digest.hashed_reader(read, 10_000, [a, b])
    for off in range(0, 16384, 4096):
        reader(off, memoryview(bytearray(4096)))
    assert a.hexdigest() == hashlib.sha256(data[:10_000]).hexdigest()
    ref = digest.new(digest.VERIFY)
    ref.update(data[:10_000])
    assert b.hexdigest() == ref.hexdigest()


def test_plain_check_digests_the_disk_and_flags_nonzero_padding() -> None:
    c = digest.PlainCheck(digest.SHA256, 6000)
    c.update(0, memoryview(b"x" * 4096))
    c.update(4096, memoryview(b"y" * 1904 + bytes(2192)))
    assert c.result() == {"plaintext_sha256": hashlib.sha256(b"x" * 4096 + b"y" * 1904).hexdigest()}
    assert c.nonzero_padding == 0
    c.update(8192, memoryview(bytes(100) + b"\x01"))
    assert c.nonzero_padding == 1
