"""Sector ciphers by their dm-crypt names: `aes` + `xts-plain64` and friends.

A sector cipher encrypts or decrypts whole sectors in place; `first_iv` is the IV number of the
buffer's first sector, counted in 512-byte units as dm-crypt does.
"""

from __future__ import annotations

from typing import Protocol

from lukspack.crypto.xts import XtsCipher
from lukspack.errors import UnsupportedError


class SectorCipher(Protocol):
    sector_size: int

    def encrypt(self, buf: bytearray | memoryview, first_iv: int) -> None: ...

    def decrypt(self, buf: bytearray | memoryview, first_iv: int) -> None: ...

    def close(self) -> None: ...


SUPPORTED = ("aes-xts-plain64",)


def check_cipher(cipher_name: str, cipher_mode: str, key_bytes: int) -> None:
    """Raise UnsupportedError naming the cipher unless lukspack can run it with this key size."""
    spec = f"{cipher_name}-{cipher_mode}"
    if spec not in SUPPORTED:
        raise UnsupportedError(
            f"unsupported cipher {spec!r} (supported: {', '.join(SUPPORTED)})")
    if key_bytes not in (32, 64):
        raise UnsupportedError(f"cipher {spec!r} with a {key_bytes * 8}-bit key is not supported "
                               "(XTS takes 256 or 512 bits)")


def make_sector_cipher(cipher_name: str, cipher_mode: str, key: bytes | bytearray,
                       sector_size: int = 512) -> SectorCipher:
    """A cipher object for one thread."""
    check_cipher(cipher_name, cipher_mode, len(key))
    return XtsCipher(key, sector_size)
