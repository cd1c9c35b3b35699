"""An existing LUKS container of any version, opened read-only: header, payload, unlock.

`LuksVolume` gives one view of LUKS1 and LUKS2 containers to `verify`, `decrypt`, `info` and the
engine's header check: where the payload is, which cipher, and how to unlock a slot. The header
behind it is any `LuksHeader` (luks1.Luks1Header, luks2.Luks2Header). This module is a leaf: it
imports neither version; `lukspack.luks.open_luks` (open.py) reads the magic and version once and
builds the volume.

A header cryptsetup loads may still describe a payload lukspack cannot decrypt (a segment of an
unknown type, two segments in a reencryption, a segment longer than the file): it opens, dumps
and unlocks nothing; `payload_problem` says why and `check_payload()` raises it, for verify and
decrypt to refuse the payload with the reason.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from lukspack.crypto.sector import SectorCipher, make_sector_cipher
from lukspack.errors import FormatError, LukspackError
from lukspack.keys import wipe
from lukspack.luks.kdf import KdfCache
from lukspack.luks.metadata import ReadAt

__all__ = ["LuksHeader", "LuksVolume", "ReadAt", "bytes_reader", "dump_header", "file_reader"]


class LuksHeader(Protocol):
    """What a parsed header of either version offers (luks1.Luks1Header, luks2.Luks2Header)."""

    version: int

    def unlock_slot(self, read_at: ReadAt, passphrase: bytes | bytearray, name: str = "image",
                    cache: KdfCache | None = None) -> tuple[bytearray, int]:
        """(volume key, key slot) that passphrase opens; WrongKeyError when none does."""
        ...

    def digest_matches(self, key: bytes | bytearray, cache: KdfCache | None = None) -> bool:
        """Whether key is the volume key (the header's digest of it matches)."""
        ...

    def dump(self) -> dict[str, Any]:
        """What `cryptsetup luksDump` shows, never key material."""
        ...


@dataclass
class LuksVolume:
    path: str
    version: int
    header: LuksHeader
    cipher_name: str
    cipher_mode: str
    key_bytes: int
    payload_offset: int  # bytes
    payload_size: int  # bytes
    sector_size: int
    read_at: ReadAt
    payload_error: LukspackError | None = None  # why the payload cannot be decrypted

    @property
    def cipher(self) -> str:
        return f"{self.cipher_name}-{self.cipher_mode}"

    @property
    def payload_problem(self) -> str | None:
        """Why lukspack cannot decrypt the payload (one line), or None when it can."""
        return None if self.payload_error is None else str(self.payload_error)

    def check_payload(self) -> None:
        """Raise the reason the payload cannot be decrypted (UnsupportedError or FormatError)."""
        if self.payload_error is not None:
            raise self.payload_error

    def unlock_slot(self, passphrase: bytes | bytearray,
                    cache: KdfCache | None = None) -> tuple[bytearray, int]:
        """(volume key, key slot) that passphrase opens; WrongKeyError when none does."""
        self.check_payload()
        return self.header.unlock_slot(self.read_at, passphrase, self.path, cache)

    def unlock(self, passphrase: bytes | bytearray, cache: KdfCache | None = None) -> bytearray:
        """The volume key that passphrase opens; WrongKeyError when none does."""
        return self.unlock_slot(passphrase, cache)[0]

    @contextlib.contextmanager
    def unlocked(self, passphrase: bytes | bytearray,
                 cache: KdfCache | None = None) -> Iterator[bytearray]:
        """The volume key for the length of a with-block, wiped after it."""
        key = self.unlock(passphrase, cache)
        try:
            yield key
        finally:
            wipe(key)

    def opens_with(self, passphrase: bytes | bytearray, volume_key: bytes | bytearray,
                   cache: KdfCache | None = None) -> bool:
        """Whether passphrase opens exactly this volume key (constant-time comparison)."""
        with self.unlocked(passphrase, cache) as key:
            return hmac.compare_digest(bytes(key), bytes(volume_key))

    def check_key(self, key: bytes | bytearray, cache: KdfCache | None = None) -> bool:
        return self.header.digest_matches(key, cache)

    def sector_cipher(self, key: bytes | bytearray) -> SectorCipher:
        self.check_payload()
        return make_sector_cipher(self.cipher_name, self.cipher_mode, key, self.sector_size)

    def dump(self) -> dict[str, Any]:
        """What `cryptsetup luksDump` shows, never key material."""
        return self.header.dump()


def dump_header(vol: LuksVolume) -> dict[str, Any]:
    return vol.dump()


def file_reader(fd: int, name: str) -> ReadAt:
    def read_at(offset: int, size: int) -> bytes:
        if offset + size > os.fstat(fd).st_size and \
                offset + size > os.lseek(fd, 0, os.SEEK_END):  # check before allocating `size`
            raise FormatError(f"{name}: {size} bytes at offset {offset} are past the end of the "
                              "file")
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise FormatError(f"{name}: {size} bytes at offset {offset} are past the end of the "
                              "file")
        return data

    return read_at


def bytes_reader(data: bytes | bytearray | memoryview, name: str) -> ReadAt:
    """read_at over a header held in memory."""
    view = memoryview(data).toreadonly()

    def read_at(offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > len(view):
            raise FormatError(f"{name}: {size} bytes at offset {offset} are past the end of the "
                              f"header ({len(view)} bytes)")
        return bytes(view[offset : offset + size])

    return read_at

