"""What `encrypt` needs to know about the container it writes, whatever the LUKS version.

A HeaderPlan says how many bytes precede the payload, the payload cipher and sector size, and
builds the header area (header(s), JSON, key slots) from the volume key and passphrase. Building
is slow on purpose (key derivation), so the pipeline runs it in a thread while the payload streams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lukspack.errors import LukspackError
from lukspack.luks import luks1
from lukspack.luks.kdf import pbkdf2_cost

LUKS_TYPES = ("luks1",)


@dataclass(frozen=True)
class KdfOptions:
    hash: str = "sha256"
    iter_time_ms: int = 2000
    force_iterations: int | None = None


@dataclass(frozen=True)
class HeaderPlan:
    luks_type: str
    header_size: int  # bytes before the payload
    cipher_name: str
    cipher_mode: str
    key_bytes: int
    sector_size: int
    build: Callable[[bytes | bytearray, bytes | bytearray], bytes]  # (volume key, passphrase)

    @property
    def cipher(self) -> str:
        return f"{self.cipher_name}-{self.cipher_mode}"


def plan_header(luks_type: str, kdf: KdfOptions, *, key_bytes: int = 64,
                sector_size: int = 512) -> HeaderPlan:
    if luks_type == "luks1":
        if sector_size != 512:
            raise LukspackError(f"LUKS1 has 512-byte sectors only, not {sector_size}")

        def build(volume_key: bytes | bytearray, passphrase: bytes | bytearray) -> bytes:
            cost = pbkdf2_cost(kdf.hash, len(volume_key), kdf.iter_time_ms, kdf.force_iterations)
            return luks1.format_luks1(volume_key, passphrase, slot_iterations=cost.slot_iterations,
                                      digest_iterations=cost.digest_iterations, hash_spec=kdf.hash)

        return HeaderPlan("luks1", luks1.header_bytes(key_bytes), "aes", "xts-plain64", key_bytes,
                          512, build)
    raise LukspackError(f"--type {luks_type} is not supported (use {', '.join(LUKS_TYPES)})")
