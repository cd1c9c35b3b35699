"""RAW LUKS (LUKS1 or LUKS2): the header area, then the payload, every sector encrypted.

The payload is the guest disk rounded up to a whole MiB (the padding decrypts to zeros); the
ciphertext of guest byte b is at header_size + b under IV b / 512 (plain64 counts 512-byte units
whatever the sector size, as cryptsetup without --iv-large-sectors). Not sparse: RAW outputs
must encrypt the zeros too. The prefix is the whole header area (headers, JSON, key slots),
built by the key derivation in a thread while the payload streams.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from lukspack.containers.base import ChunkPlan, Finished, Run
from lukspack.errors import VerifyError
from lukspack.luks.format import HeaderFields, HeaderPlan, KdfOptions, plan_header
from lukspack.luks.kdf import KdfCache
from lukspack.luks.open import open_luks_bytes
from lukspack.luks.volume import LuksVolume

MiB = 1 << 20


def round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def open_header_bytes(name: str, data: bytes) -> LuksVolume:
    return open_luks_bytes(name, data)


def check_luks_header(name: str, data: bytes, passphrase: bytes | bytearray,
                      volume_key: bytes | bytearray, want: tuple[Any, ...],
                      cache: KdfCache | None = None) -> LuksVolume:
    """Open a LUKS header area held in memory and unlock it with the key file: it must give
    volume_key and the geometry `want` = (payload offset, cipher, sector size, key bytes).
    cache: the KdfCache of this encryption (the build's derivations are not repeated)."""
    vol = open_header_bytes(name, data)
    found = (vol.payload_offset, vol.cipher, vol.sector_size, vol.key_bytes)
    if found != want:
        raise VerifyError(f"{name}: verification failed: the header says {found}, expected {want}")
    with vol.unlocked(passphrase, cache) as key:
        if not hmac.compare_digest(bytes(key), bytes(volume_key)):
            raise VerifyError(f"{name}: verification failed: the key file opens a different key")
    return vol


class RawLuks:
    """The container of `lukspack encrypt SOURCE OUT.img` (LUKS1, or LUKS2 with --type)."""

    sparse = False

    def __init__(self, virtual_size: int, luks_type: str, kdf: KdfOptions, *,
                 sector_size: int = 512, key_bytes: int = 64, name: str = "output",
                 fields: HeaderFields | None = None) -> None:
        self.plan_: HeaderPlan = plan_header(luks_type, kdf, key_bytes=key_bytes,
                                             sector_size=sector_size, fields=fields)
        p = self.plan_
        self.name = p.luks_type
        self.label = name
        self.cipher_name, self.cipher_mode = p.cipher_name, p.cipher_mode
        self.key_bytes = p.key_bytes
        self.sector_size = p.sector_size
        self.chunk_align = max(512, p.sector_size)
        self.prefix_size = p.header_size
        self.disk_size = self.stream_size = round_up(virtual_size, MiB)
        self.total_size = self.prefix_size + self.disk_size
        self.size_hint = self.total_size

    def new_volume_key(self, passphrase: bytes | bytearray) -> bytearray:
        return bytearray(secrets.token_bytes(self.key_bytes))

    def recover_volume_key(self, key_material: bytes, passphrase: bytes | bytearray,
                           cache: Any) -> bytearray:
        return open_header_bytes(self.label, key_material).unlock(passphrase, cache)

    def prepare(self) -> None:
        if self.plan_.prepare is not None:
            self.plan_.prepare()

    def build_key_material(self, volume_key: bytes | bytearray, passphrase: bytes | bytearray,
                           cache: Any) -> bytes:
        return self.plan_.build(volume_key, passphrase, cache)

    def plan(self, offset: int, view: memoryview | None, allocated: bool) -> ChunkPlan:
        n = len(view) if view is not None else 0
        return ChunkPlan([Run(0, n, offset // 512, self.prefix_size + offset)])

    def finish(self, key_material: bytes) -> Finished:
        return Finished(key_material, [], self.total_size)

    def check_prefix(self, prefix: bytes, passphrase: bytes | bytearray,
                     volume_key: bytes | bytearray, cache: Any) -> None:
        p = self.plan_
        check_luks_header(self.label, prefix, passphrase, volume_key,
                          (p.header_size, p.cipher, p.sector_size, p.key_bytes), cache)

    def summary(self) -> dict[str, Any]:
        return {"type": self.name, "header_bytes": self.prefix_size,
                "payload_offset": self.prefix_size, "payload_bytes": self.disk_size}
