"""Sector ciphers by their dm-crypt names: `aes` + `xts-plain64` and friends.

A sector cipher encrypts or decrypts whole sectors in place; `first_iv` is the IV number of the
buffer's first sector, counted in 512-byte units as dm-crypt does. AES-XTS (256, 384 or 512-bit
keys) with plain64 or plain (32-bit) IVs; AES-CBC (128, 192 or 256-bit keys) with essiv:HASH,
plain64 or plain IVs, the modes older cryptsetup versions used.
"""

from __future__ import annotations

import hashlib
import os
from typing import Protocol

from lukspack.crypto.cbc import CbcCipher
from lukspack.crypto.xts import XtsCipher
from lukspack.errors import UnsupportedError


class SectorCipher(Protocol):
    sector_size: int

    def encrypt(self, buf: bytearray | memoryview, first_iv: int) -> None: ...

    def decrypt(self, buf: bytearray | memoryview, first_iv: int) -> None: ...

    def close(self) -> None: ...


SUPPORTED = ("aes-xts-plain64", "aes-xts-plain", "aes-cbc-essiv:sha256", "aes-cbc-plain64",
             "aes-cbc-plain")
_KEY_BYTES = {"xts": (32, 48, 64), "cbc": (16, 24, 32)}


def split_cipher_spec(spec: str) -> tuple[str, str]:
    """'aes-xts-plain64' -> ('aes', 'xts-plain64'), as LUKS1 stores cipherName and cipherMode."""
    name, sep, mode = spec.partition("-")
    if not sep or not name or not mode:
        raise UnsupportedError(f"unsupported cipher {spec!r} (supported: {', '.join(SUPPORTED)})")
    return name, mode


def _parse(cipher_name: str, cipher_mode: str) -> tuple[str, str, str]:
    """(chain mode, IV mode, ESSIV hash) of a dm-crypt cipher, or UnsupportedError naming it."""
    spec = f"{cipher_name}-{cipher_mode}"
    chain, _, iv = cipher_mode.partition("-")
    iv_mode, _, essiv_hash = iv.partition(":")
    ok = cipher_name == "aes" and (
        (chain == "xts" and iv_mode in ("plain64", "plain") and not essiv_hash)
        or (chain == "cbc" and iv_mode in ("plain64", "plain") and not essiv_hash)
        or (chain == "cbc" and iv_mode == "essiv" and _essiv_ok(essiv_hash)))
    if not ok:
        raise UnsupportedError(f"unsupported cipher {spec!r} (supported: {', '.join(SUPPORTED)})")
    return chain, iv_mode, essiv_hash


def _essiv_ok(hash_name: str) -> bool:
    try:
        return hashlib.new(hash_name).digest_size in (16, 24, 32)
    except (ValueError, TypeError):
        return False


def check_cipher(cipher_name: str, cipher_mode: str, key_bytes: int) -> None:
    """Raise UnsupportedError naming the cipher unless lukspack can run it with this key size."""
    chain, _, _ = _parse(cipher_name, cipher_mode)
    if key_bytes not in _KEY_BYTES[chain]:
        sizes = ", ".join(str(n * 8) for n in _KEY_BYTES[chain])
        raise UnsupportedError(f"cipher '{cipher_name}-{cipher_mode}' with a {key_bytes * 8}-bit "
                               f"key is not supported ({chain.upper()} takes {sizes} bits)")


def make_sector_cipher(cipher_name: str, cipher_mode: str, key: bytes | bytearray,
                       sector_size: int = 512) -> SectorCipher:
    """A cipher object for one thread."""
    check_cipher(cipher_name, cipher_mode, len(key))
    chain, iv_mode, essiv_hash = _parse(cipher_name, cipher_mode)
    if chain == "xts":
        # LUKSPACK_XTS_ENGINE=numpy forces the fallback engine (tests, comparisons)
        engine = os.environ.get("LUKSPACK_XTS_ENGINE", "auto")
        return XtsCipher(key, sector_size, iv_bits=32 if iv_mode == "plain" else 64, engine=engine)
    return CbcCipher(key, sector_size, iv_mode, essiv_hash or "sha256")
