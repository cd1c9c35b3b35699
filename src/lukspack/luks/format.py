"""What `encrypt` needs to know about the container it writes, whatever the LUKS version.

A HeaderPlan says how many bytes precede the payload, the payload cipher and sector size, and
builds the header area (header(s), JSON, key slots) from the volume key and passphrase. Building
is slow on purpose (key derivation), so the pipeline runs it in a thread while the payload streams.
The built header is checked by the container (RawLuks.check_prefix), not here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lukspack.errors import (
    UnsupportedError,
    UsageError,
)
from lukspack.luks import luks1, luks2, luks2_format
from lukspack.luks.kdf import (
    KdfCache,
    SlotKdf,
    calibrate_before_stream,
    digest_iterations,
    pbkdf2_cost,
    slot_kdf,
)

LUKS_TYPES = ("luks1", "luks2")


@dataclass(frozen=True)
class KdfOptions:
    hash: str = "sha256"
    iter_time_ms: int = 2000
    force_iterations: int | None = None
    pbkdf: str | None = None  # None: pbkdf2 for LUKS1, argon2id for LUKS2 (cryptsetup's defaults)
    memory_kb: int | None = None  # Argon2 memory cost, KiB (default 1 GiB, at most half the RAM)
    parallel: int | None = None  # Argon2 threads (default 4, at most the online CPUs)

    def check(self, luks_type: str, key_bytes: int = 64) -> None:
        """Refuse options that cannot work before anything is written, with cryptsetup's limits:
        UsageError (exit 2) for a combination that cannot work or an unknown name (--pbkdf
        argon2id with LUKS1, an unknown --hash), UnsupportedError for a value out of range
        (costs above the 32-bit fields, Argon2 memory and threads, an --iter-time whose PBKDF2
        count would not fit 32 bits on this machine)."""
        self.slot_kdf(luks_type, key_bytes, check_only=True)

    def slot_kdf(self, luks_type: str, key_bytes: int, check_only: bool = False
                 ) -> SlotKdf | None:
        """The key slot KDF for these options (calibrated unless forced); check_only validates."""
        pbkdf = self.pbkdf or ("argon2id" if luks_type == "luks2" else "pbkdf2")
        if luks_type == "luks1" and pbkdf != "pbkdf2":
            raise UsageError(f"LUKS1 key slots use pbkdf2 only, not --pbkdf {pbkdf}")
        return slot_kdf(pbkdf, self.hash, key_bytes, iter_time_ms=self.iter_time_ms,
                        force_iterations=self.force_iterations, memory_kb=self.memory_kb,
                        parallel=self.parallel, check_only=check_only)


class HeaderBuilder(Protocol):
    def __call__(self, volume_key: bytes | bytearray, passphrase: bytes | bytearray,
                 cache: KdfCache | None = None) -> bytes:
        """The header area; cache: the KdfCache of this encryption (its check reuses it)."""
        ...


@dataclass(frozen=True)
class HeaderPlan:
    luks_type: str
    header_size: int  # bytes before the payload
    cipher_name: str
    cipher_mode: str
    key_bytes: int
    sector_size: int
    build: HeaderBuilder  # (volume key, passphrase, cache=None) -> header area
    # called once before the payload streams (output open, CPU idle): Argon2 calibration, which
    # times wall clock as cryptsetup does, and PBKDF2 calibration on CPUs whose cores are shared
    # (SMT). Otherwise PBKDF2 calibrates in build(), beside the stream: it is timed on the thread's
    # CPU clock (kdf.pbkdf2_rate), which the threads on other cores do not disturb.
    prepare: Callable[[], None] | None = None

    @property
    def cipher(self) -> str:
        return f"{self.cipher_name}-{self.cipher_mode}"


@dataclass(frozen=True)
class HeaderFields:
    """What `cryptsetup luksFormat` takes besides the KDF: --uuid, --label and --subsystem
    (LUKS2 only), --key-slot (the slot the key file opens)."""

    uuid: str | None = None
    label: str | None = None
    subsystem: str | None = None
    key_slot: int = 0

    def check(self, luks_type: str) -> None:
        import uuid as uuidlib

        if self.uuid is not None:
            try:
                uuidlib.UUID(self.uuid)
            except ValueError:
                raise UsageError(f"--uuid {self.uuid} is not a UUID") from None
        if luks_type == "luks1" and (self.label or self.subsystem):
            raise UsageError("--label and --subsystem are LUKS2 header fields (use --type luks2)")
        for name, value in (("label", self.label), ("subsystem", self.subsystem)):
            if value is not None and len(value.encode()) > 47:
                raise UsageError(f"--{name} is longer than LUKS2's 47 bytes")
        top = 7 if luks_type == "luks1" else 31
        if not 0 <= self.key_slot <= top:
            raise UsageError(f"--key-slot {self.key_slot} is outside 0..{top} for {luks_type}")


def plan_header(luks_type: str, kdf: KdfOptions, *, key_bytes: int = 64,
                sector_size: int = 512, fields: HeaderFields | None = None) -> HeaderPlan:
    fields = fields or HeaderFields()
    if luks_type in LUKS_TYPES:
        kdf.check(luks_type, key_bytes)  # bad options fail before any I/O
        fields.check(luks_type)
    if luks_type == "luks2":
        return _plan_luks2(kdf, key_bytes, sector_size, fields)
    if luks_type == "luks1":
        if sector_size != 512:
            raise UnsupportedError(f"LUKS1 has 512-byte sectors only, not --sector-size "
                                   f"{sector_size}")

        costs: list[Any] = []

        def prepare() -> None:
            costs.append(pbkdf2_cost(kdf.hash, key_bytes, kdf.iter_time_ms, kdf.force_iterations))

        def build(volume_key: bytes | bytearray, passphrase: bytes | bytearray,
                  cache: KdfCache | None = None) -> bytes:
            if not costs:
                prepare()  # calibrating beside the stream (kdf.calibrate_before_stream)
            cost = costs[0]
            return luks1.format_luks1(volume_key, passphrase, slot_iterations=cost.slot_iterations,
                                      digest_iterations=cost.digest_iterations, hash_spec=kdf.hash,
                                      uuid=fields.uuid, key_slot=fields.key_slot, cache=cache)

        first = calibrate_before_stream(kdf.force_iterations)
        return HeaderPlan("luks1", luks1.header_bytes(key_bytes), "aes", "xts-plain64", key_bytes,
                          512, build, prepare if first else None)
    raise UsageError(f"--type {luks_type} is not supported (use {', '.join(LUKS_TYPES)})")


def _plan_luks2(kdf: KdfOptions, key_bytes: int, sector_size: int,
                fields: HeaderFields) -> HeaderPlan:
    """Argon2 calibrates in prepare(), before the payload streams, on an idle CPU as cryptsetup
    does (its wall-clock benchmark run beside the encryption threads would pick a weaker cost);
    PBKDF2 and forced costs need no idle CPU and are worked out in build(), in the background."""
    if sector_size not in (512, 4096):
        raise UnsupportedError(f"--sector-size {sector_size} is not supported (use 512 or 4096)")
    cost: dict[str, Any] = {}

    def prepare() -> None:
        cost["slot"] = slot = kdf.slot_kdf("luks2", key_bytes)
        assert slot is not None
        cost["digest"] = digest_iterations(slot.hash, key_bytes, kdf.force_iterations is not None)

    def build(volume_key: bytes | bytearray, passphrase: bytes | bytearray,
              cache: KdfCache | None = None) -> bytes:
        if not cost:
            prepare()
        return luks2_format.format_luks2(volume_key, passphrase, cost["slot"],
                                         digest_iterations=cost["digest"], sector_size=sector_size,
                                         uuid=fields.uuid, label=fields.label or "",
                                         subsystem=fields.subsystem or "",
                                         key_slot=fields.key_slot, cache=cache)

    argon2 = (kdf.pbkdf or "argon2id") != "pbkdf2"
    first = (argon2 and kdf.force_iterations is None) or calibrate_before_stream(
        kdf.force_iterations)
    return HeaderPlan("luks2", luks2.DEFAULT_DATA_OFFSET, "aes", "xts-plain64", key_bytes,
                      sector_size, build, prepare if first else None)
