"""LUKS1 on-disk format (big-endian): header, key slots, format and unlock.

Layout written by lukspack, as `cryptsetup luksFormat --type luks1` lays it out: the 592-byte
header in a 4096-byte sector-aligned area, eight key slots of keyBytes * 4000 bytes of AF material
each aligned to 4096 bytes (for a 512-bit key: sectors 8, 512, 1016, ... 3536), and the payload at
sector 4096 (2 MiB), aligned to 1 MiB.
"""

from __future__ import annotations

import secrets
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from lukspack.crypto.sector import check_cipher
from lukspack.errors import FormatError, UnsupportedError
from lukspack.luks.kdf import U32_MAX, KdfCache, SlotKdf, check_hash, pbkdf2
from lukspack.luks.metadata import Digest, Keyslot, Metadata, SlotUnlocking, seal_keyslot
from lukspack.structs import Layout

MAGIC = b"LUKS\xba\xbe"
# cryptsetup-reencrypt (offline LUKS1 reencryption, src/utils_reencrypt_luks1.c NOMAGIC) puts this
# magic on the old header while it reencrypts, so nothing opens the device half done
REENCRYPT_MAGIC = b"LUKS\xde\xad"
VERSION = 1
SECTOR = 512
NUM_KEYS = 8
STRIPES = 4000
KEY_ACTIVE = 0x00AC71F3
KEY_DISABLED = 0x0000DEAD
DIGEST_SIZE = 20
SALT_SIZE = 32
ALIGN_KEYSLOTS = 4096
ALIGN_PAYLOAD = 1 << 20
HEADER_SIZE = 592



class PhdrFields(NamedTuple):
    """struct luks_phdr (cryptsetup lib/luks1/luks.h) up to the key slots."""

    magic: bytes
    version: int
    cipherName: bytes  # cryptsetup's field names, as in luks.h
    cipherMode: bytes
    hashSpec: bytes
    payloadOffset: int
    keyBytes: int
    mkDigest: bytes
    mkDigestSalt: bytes
    mkDigestIterations: int
    uuid: bytes


class KeyblockFields(NamedTuple):
    """One of luks_phdr's eight keyblock entries."""

    active: int
    passwordIterations: int
    passwordSalt: bytes
    keyMaterialOffset: int
    stripes: int


_PHDR = Layout(">6sH32s32s32sII20s32sI40s", PhdrFields)
_KEYBLOCK = Layout(">II32sII", KeyblockFields)
assert _PHDR.size + NUM_KEYS * _KEYBLOCK.size == HEADER_SIZE


@dataclass
class KeySlot:
    active: int = KEY_DISABLED
    iterations: int = 0
    salt: bytes = bytes(SALT_SIZE)
    key_material_offset: int = 0  # sectors
    stripes: int = STRIPES

    @property
    def enabled(self) -> bool:
        return self.active == KEY_ACTIVE


@dataclass
class Luks1Header(SlotUnlocking):
    cipher_name: str
    cipher_mode: str
    hash_spec: str
    payload_offset: int  # sectors
    key_bytes: int
    mk_digest: bytes
    mk_digest_salt: bytes
    mk_digest_iterations: int
    uuid: str
    slots: list[KeySlot] = field(default_factory=list)
    version: int = VERSION

    def pack(self) -> bytes:
        out = _PHDR.pack(PhdrFields(
            magic=MAGIC, version=self.version, cipherName=self.cipher_name.encode(),
            cipherMode=self.cipher_mode.encode(), hashSpec=self.hash_spec.encode(),
            payloadOffset=self.payload_offset, keyBytes=self.key_bytes, mkDigest=self.mk_digest,
            mkDigestSalt=self.mk_digest_salt, mkDigestIterations=self.mk_digest_iterations,
            uuid=self.uuid.encode()))
        for s in self.slots:
            out += _KEYBLOCK.pack(KeyblockFields(
                active=s.active, passwordIterations=s.iterations, passwordSalt=s.salt,
                keyMaterialOffset=s.key_material_offset, stripes=s.stripes))
        return out

    @classmethod
    def unpack(cls, data: bytes, name: str = "image") -> Luks1Header:
        """Parse and validate a LUKS1 header as strictly as cryptsetup's LUKS_read_phdr."""
        if len(data) < HEADER_SIZE:
            raise FormatError(f"{name}: LUKS1 header truncated ({len(data)} < {HEADER_SIZE} bytes)")
        f = _PHDR.unpack(data)
        if f.magic != MAGIC:
            raise FormatError(f"{name}: {describe_magic(f.magic)}")
        if f.version != VERSION:
            raise FormatError(f"{name}: LUKS version {f.version} where 1 was expected")
        hdr = cls(
            cipher_name=_cstr(f.cipherName, name, "cipherName"),
            cipher_mode=_cstr(f.cipherMode, name, "cipherMode"),
            hash_spec=_cstr(f.hashSpec, name, "hashSpec"), payload_offset=f.payloadOffset,
            key_bytes=f.keyBytes, mk_digest=f.mkDigest, mk_digest_salt=f.mkDigestSalt,
            mk_digest_iterations=f.mkDigestIterations, uuid=_cstr(f.uuid, name, "uuid"),
            version=f.version,
        )
        for i in range(NUM_KEYS):
            k = _KEYBLOCK.unpack(data, _PHDR.size + i * _KEYBLOCK.size)
            hdr.slots.append(KeySlot(k.active, k.passwordIterations, k.passwordSalt,
                                     k.keyMaterialOffset, k.stripes))
        hdr.validate(name)
        return hdr

    def validate(self, name: str) -> None:
        if not 1 <= self.key_bytes <= 512:  # cryptsetup: LUKS_MAX_KEY_BYTES? keys up to 4096 bits
            raise FormatError(f"{name}: LUKS1 keyBytes {self.key_bytes} is out of range")
        if self.mk_digest_iterations < 1:
            raise FormatError(f"{name}: LUKS1 mkDigestIterations is {self.mk_digest_iterations}")
        try:
            check_hash(self.hash_spec)
        except UnsupportedError as e:
            raise UnsupportedError(f"{name}: {e}") from None
        material = self.material_sectors()
        header_end = -(-HEADER_SIZE // SECTOR)
        spans: list[tuple[int, int, int]] = []
        for i, s in enumerate(self.slots):
            if s.active not in (KEY_ACTIVE, KEY_DISABLED):
                raise FormatError(f"{name}: LUKS1 key slot {i} has invalid state 0x{s.active:08x}")
            if s.stripes != STRIPES:
                raise FormatError(f"{name}: LUKS1 key slot {i} has {s.stripes} stripes, not {STRIPES}")
            if s.key_material_offset < header_end:
                raise FormatError(f"{name}: LUKS1 key slot {i} material offset "
                                  f"{s.key_material_offset} overlaps the header")
            end = s.key_material_offset + material
            if self.payload_offset and end > self.payload_offset:
                raise FormatError(f"{name}: LUKS1 key slot {i} material (sectors "
                                  f"{s.key_material_offset}..{end}) overlaps the payload at "
                                  f"sector {self.payload_offset}")
            spans.append((s.key_material_offset, end, i))
        spans.sort()
        for (_a0, a1, i), (b0, _b1, j) in zip(spans, spans[1:], strict=False):
            if b0 < a1:
                raise FormatError(f"{name}: LUKS1 key slots {i} and {j} overlap "
                                  f"(sector {b0} < {a1})")

    def material_sectors(self) -> int:
        return -(-self.key_bytes * STRIPES // SECTOR)

    @property
    def cipher(self) -> str:
        return f"{self.cipher_name}-{self.cipher_mode}"

    # -- the LUKS2 model (metadata.py): one unlock and one seal path for both versions ----------
    def keyslot(self, index: int) -> Keyslot:
        """Slot `index` as a LUKS2 keyslot: pbkdf2 with the header's hash, AF hash the same, the
        area at keyMaterialOffset encrypted with the header's cipher under a keyBytes key."""
        s = self.slots[index]
        return Keyslot(index, self.key_bytes, SlotKdf("pbkdf2", s.iterations, self.hash_spec),
                       s.salt, self.hash_spec, s.stripes, s.key_material_offset * SECTOR,
                       self.material_sectors() * SECTOR, self.cipher, self.key_bytes)

    def digest(self) -> Digest:
        return Digest(0, self.hash_spec, self.mk_digest_iterations, self.mk_digest_salt,
                      self.mk_digest, tuple(i for i, s in enumerate(self.slots) if s.enabled))

    def metadata(self, name: str = "image") -> Metadata:
        """The active slots in slot order (cryptsetup's), the mkDigest as segment 0's digest."""
        try:
            check_cipher(self.cipher_name, self.cipher_mode, self.key_bytes)
        except UnsupportedError as e:
            raise UnsupportedError(f"{name}: LUKS1 cipher: {e}") from None
        slots, skipped = [], []
        for i, s in enumerate(self.slots):
            if not s.enabled:
                continue
            if s.iterations == 0:  # cryptsetup would fail in the KDF; try the others
                skipped.append(f"key slot {i} has passwordIterations 0")
                continue
            slots.append(self.keyslot(i))
        return Metadata(tuple(slots), self.digest(), tuple(skipped))

    # -- the LuksHeader protocol (volume.py) --------------------------------------------------
    def digest_matches(self, key: bytes | bytearray, cache: KdfCache | None = None) -> bool:
        return self.digest().matches(key, cache)

    def active_slots(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.enabled]

    def dump(self) -> dict[str, Any]:
        """What `cryptsetup luksDump` shows of a LUKS1 header (never key material)."""
        return {
            "version": 1,
            "cipher_name": self.cipher_name,
            "cipher_mode": self.cipher_mode,
            "hash_spec": self.hash_spec,
            "payload_offset": self.payload_offset,
            "mk_bits": self.key_bytes * 8,
            "mk_digest": self.mk_digest.hex(),
            "mk_salt": self.mk_digest_salt.hex(),
            "mk_iterations": self.mk_digest_iterations,
            "uuid": self.uuid,
            "key_slots": [
                {"slot": i, "enabled": s.enabled, "iterations": s.iterations, "salt": s.salt.hex(),
                 "key_material_offset": s.key_material_offset, "af_stripes": s.stripes}
                if s.enabled else {"slot": i, "enabled": False}
                for i, s in enumerate(self.slots)
            ],
        }


def describe_magic(magic: bytes) -> str:
    """Why a header whose first 6 bytes are `magic` is not opened, in words (no bytes reprs)."""
    if magic == REENCRYPT_MAGIC:
        return ("is a LUKS1 header in the middle of an offline reencryption: cryptsetup-reencrypt "
                "changed its magic to LUKS 0xde 0xad so that nothing opens it until the "
                "reencryption is finished; finish it with cryptsetup first")
    return f"not a LUKS container (magic {magic.hex()} in hex, not 4c554b53babe: LUKS 0xba 0xbe)"


def _cstr(raw: bytes, name: str, fieldname: str) -> str:
    text = raw.split(b"\0", 1)[0]
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"{name}: LUKS1 {fieldname} is not ASCII (hex {text.hex()[:64]})") \
            from None


def slot_layout(key_bytes: int, payload_align: int = ALIGN_PAYLOAD) -> tuple[list[int], int]:
    """Key-material offsets of the 8 slots and the payload offset, in sectors, as cryptsetup.

    payload_align=ALIGN_KEYSLOTS gives qemu's layout (crypto/block-luks.c): the same slots, and
    the payload right after the last slot's material (sector 4040 for a 512-bit key)."""
    material = -(-key_bytes * STRIPES // ALIGN_KEYSLOTS) * ALIGN_KEYSLOTS // SECTOR
    first = ALIGN_KEYSLOTS // SECTOR
    offsets = [first + i * material for i in range(NUM_KEYS)]
    end = (offsets[-1] + material) * SECTOR
    payload = -(-end // payload_align) * payload_align // SECTOR
    return offsets, payload


def header_bytes(key_bytes: int = 64, payload_align: int = ALIGN_PAYLOAD) -> int:
    """Bytes before the payload of a lukspack/cryptsetup LUKS1 image."""
    return slot_layout(key_bytes, payload_align)[1] * SECTOR


def format_luks1(volume_key: bytes | bytearray, passphrase: bytes | bytearray, *,
                 slot_iterations: int, digest_iterations: int, hash_spec: str = "sha256",
                 cipher_name: str = "aes", cipher_mode: str = "xts-plain64",
                 uuid: str | None = None, payload_align: int = ALIGN_PAYLOAD,
                 key_slot: int = 0, cache: KdfCache | None = None) -> bytes:
    """The whole header area (header + 8 slot areas, slot `key_slot` active),
    payloadOffset*512 bytes."""
    key_bytes = len(volume_key)
    check_cipher(cipher_name, cipher_mode, key_bytes)
    hash_spec = check_hash(hash_spec)
    for what, n in (("key slot", slot_iterations), ("volume key digest", digest_iterations)):
        if not 1 <= n <= U32_MAX:  # 32-bit fields
            raise UnsupportedError(f"LUKS1 {what} iterations {n} are outside 1..{U32_MAX}")
    offsets, payload = slot_layout(key_bytes, payload_align)
    digest_salt = secrets.token_bytes(SALT_SIZE)
    mk_digest = bytes(pbkdf2(hash_spec, volume_key, digest_salt, digest_iterations, DIGEST_SIZE,
                             cache))
    hdr = Luks1Header(
        cipher_name=cipher_name, cipher_mode=cipher_mode, hash_spec=hash_spec,
        payload_offset=payload, key_bytes=key_bytes, mk_digest=mk_digest,
        mk_digest_salt=digest_salt, mk_digest_iterations=digest_iterations,
        uuid=uuid or str(uuidlib.uuid4()),
        slots=[KeySlot(key_material_offset=o) for o in offsets],
    )
    area = bytearray(payload * SECTOR)
    set_slot(hdr, area, key_slot, volume_key, passphrase, slot_iterations, cache)
    return bytes(area)


def set_slot(hdr: Luks1Header, area: bytearray, index: int, volume_key: bytes | bytearray,
             passphrase: bytes | bytearray, iterations: int,
             cache: KdfCache | None = None) -> None:
    """Fill key slot `index` of a header area in memory and repack the header into it."""
    material = seal_slot(hdr, index, volume_key, passphrase, iterations, cache)
    start = hdr.slots[index].key_material_offset * SECTOR
    area[start : start + len(material)] = material
    packed = hdr.pack()
    area[: len(packed)] = packed


def seal_slot(hdr: Luks1Header, index: int, volume_key: bytes | bytearray,
              passphrase: bytes | bytearray, iterations: int,
              cache: KdfCache | None = None) -> bytes:
    """Make key slot `index` active in hdr (new salt) and return its encrypted key material
    (material_sectors() * 512 bytes, to be written at its keyMaterialOffset)."""
    if not 1 <= iterations <= U32_MAX:
        raise UnsupportedError(f"LUKS1 key slot iterations {iterations} are outside "
                               f"1..{U32_MAX}")
    slot = hdr.slots[index]
    slot.salt = secrets.token_bytes(SALT_SIZE)
    slot.iterations = iterations
    slot.active = KEY_ACTIVE
    return seal_keyslot(hdr.keyslot(index), volume_key, passphrase, cache)
