"""An existing LUKS container of any version, opened read-only: header, payload, unlock.

`open_luks` reads and validates the header, and gives one view of LUKS1 and LUKS2 containers to
`verify`, `decrypt` and `info`: where the payload is, which cipher, and how to unlock a slot.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from lukspack.crypto.sector import SectorCipher, make_sector_cipher
from lukspack.errors import FormatError, LukspackError
from lukspack.keys import wipe
from lukspack.luks import luks1

ReadAt = Callable[[int, int], bytes]


@dataclass
class LuksVolume:
    path: str
    version: int
    header: Any
    cipher_name: str
    cipher_mode: str
    key_bytes: int
    payload_offset: int  # bytes
    payload_size: int  # bytes
    sector_size: int
    read_at: ReadAt

    @property
    def cipher(self) -> str:
        return f"{self.cipher_name}-{self.cipher_mode}"

    def unlock(self, passphrase: bytes | bytearray) -> bytearray:
        """The volume key that passphrase opens; WrongKeyError when none does."""
        return self.header.unlock(self.read_at, passphrase, self.path)

    @contextlib.contextmanager
    def unlocked(self, passphrase: bytes | bytearray) -> Iterator[bytearray]:
        """The volume key for the length of a with-block, wiped after it."""
        key = self.unlock(passphrase)
        try:
            yield key
        finally:
            wipe(key)

    def opens_with(self, passphrase: bytes | bytearray, volume_key: bytes | bytearray) -> bool:
        """Whether passphrase opens exactly this volume key (constant-time comparison)."""
        with self.unlocked(passphrase) as key:
            return hmac.compare_digest(bytes(key), bytes(volume_key))

    def check_key(self, key: bytes | bytearray) -> bool:
        return self.header.digest_matches(key)

    def sector_cipher(self, key: bytes | bytearray) -> SectorCipher:
        return make_sector_cipher(self.cipher_name, self.cipher_mode, key, self.sector_size)

    def dump(self) -> dict[str, Any]:
        """What `cryptsetup luksDump` shows, never key material."""
        return dump_header(self)


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


def open_luks(path: str, fd: int, read_at: ReadAt | None = None,
              size: int | None = None) -> LuksVolume:
    """Parse the LUKS header of an open file (or of a region given by read_at and size)."""
    read_at = read_at or file_reader(fd, path)
    size = os.lseek(fd, 0, os.SEEK_END) if size is None else size
    if size < 1024:
        raise FormatError(f"{path}: too small for a LUKS header ({size} bytes)")
    head = read_at(0, 8)
    version = int.from_bytes(head[6:8], "big")
    if head[:6] != luks1.MAGIC:
        from lukspack.luks import luks2  # noqa: PLC0415

        if luks2.find_secondary(read_at, size) is None:  # a LUKS2 image with its primary lost?
            raise FormatError(f"{path}: not a LUKS container (magic {head[:6]!r})")
        version = 2
    if version == 1:
        hdr = luks1.Luks1Header.unpack(read_at(0, luks1.HEADER_SIZE), path)
        offset = hdr.payload_offset * luks1.SECTOR
        if offset > size:
            raise FormatError(f"{path}: LUKS1 payloadOffset {hdr.payload_offset} is past the end "
                              f"of the image (size {size})")
        return LuksVolume(path, 1, hdr, hdr.cipher_name, hdr.cipher_mode, hdr.key_bytes,
                          offset, size - offset, luks1.SECTOR, read_at)
    if version == 2:
        from lukspack.luks import luks2  # noqa: PLC0415

        return luks2.open_volume(path, read_at, size)
    raise FormatError(f"{path}: unknown LUKS version {version}")


def dump_header(vol: LuksVolume) -> dict[str, Any]:
    h = vol.header
    if vol.version != 1:
        return h.dump()
    return {
        "version": 1,
        "cipher_name": h.cipher_name,
        "cipher_mode": h.cipher_mode,
        "hash_spec": h.hash_spec,
        "payload_offset": h.payload_offset,
        "mk_bits": h.key_bytes * 8,
        "mk_digest": h.mk_digest.hex(),
        "mk_salt": h.mk_digest_salt.hex(),
        "mk_iterations": h.mk_digest_iterations,
        "uuid": h.uuid,
        "key_slots": [
            {"slot": i, "enabled": s.enabled, "iterations": s.iterations, "salt": s.salt.hex(),
             "key_material_offset": s.key_material_offset, "af_stripes": s.stripes}
            if s.enabled else {"slot": i, "enabled": False}
            for i, s in enumerate(h.slots)
        ],
    }


def open_luks_path(path: str) -> tuple[int, LuksVolume]:
    """Open path read-only and parse its LUKS header; the caller closes the fd."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise LukspackError(f"{path}: cannot open: {e.strerror}") from None
    try:
        return fd, open_luks(path, fd)
    except BaseException:
        os.close(fd)
        raise
