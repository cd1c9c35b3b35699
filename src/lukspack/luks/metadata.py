"""The LUKS2 keyslot / digest model, for both versions: one way to seal and open a key slot.

A LUKS2 header describes key slots (KDF, salt, AF hash and stripes, an encrypted area), digests
(a PBKDF2 check of the volume key) and segments. A LUKS1 header is the same thing with fixed
choices, so luks1.py maps itself onto this model (as cryptsetup's LUKS1 -> LUKS2 conversion and
dissect.fve's `Metadata.from_luks1_header` do): each active slot becomes a `Keyslot` with a
pbkdf2 KDF of the header's hash, AF hash = that hash, the area at keyMaterialOffset * 512 encrypted
with the header's cipher under a key of keyBytes; mkDigest becomes the `Digest`. Sealing (encrypt
a new slot's AF material), opening (decrypt and merge it) and unlocking (try the slots in order,
check the digest) are written once, here.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from lukspack.crypto.sector import make_sector_cipher, split_cipher_spec
from lukspack.errors import FormatError, WrongKeyError
from lukspack.keys import wipe
from lukspack.luks import af
from lukspack.luks.kdf import KdfCache, SlotKdf, pbkdf2

SECTOR = 512  # key slot areas are encrypted in 512-byte sectors from IV 0
STRIPES = 4000
ReadAt = Callable[[int, int], bytes]  # (offset, size) -> exactly size bytes of the header area


@dataclass(frozen=True)
class Keyslot:
    id: int
    key_size: int  # volume key bytes
    kdf: SlotKdf
    salt: bytes
    af_hash: str
    stripes: int
    area_offset: int  # bytes from the start of the header area
    area_size: int
    encryption: str  # cipher of the area, "aes-xts-plain64"
    area_key_size: int  # bytes of the key derived from the passphrase
    priority: int = 1  # LUKS2: 0 ignored, 1 normal, 2 preferred

    def material_size(self) -> int:
        """Bytes of AF material: key_size * stripes, in whole sectors."""
        return -(-self.key_size * self.stripes // SECTOR) * SECTOR


@dataclass(frozen=True)
class Digest:
    id: int
    hash: str
    iterations: int
    salt: bytes
    digest: bytes
    keyslots: tuple[int, ...] = ()
    segments: tuple[int, ...] = (0,)

    def matches(self, key: bytes | bytearray, cache: KdfCache | None = None) -> bool:
        d = pbkdf2(self.hash, key, self.salt, self.iterations, len(self.digest), cache)
        try:
            return hmac.compare_digest(bytes(d), self.digest)
        finally:
            wipe(d)


@dataclass(frozen=True)
class Metadata:
    """What unlocking needs: the key slots that can open segment 0, in the order to try them,
    those that cannot be tried (with why), and segment 0's digest."""

    keyslots: tuple[Keyslot, ...]
    digest: Digest
    skipped: tuple[str, ...] = field(default=())


def _crypt_area(slot: Keyslot, slot_key: bytearray, material: bytearray, encrypt: bool) -> None:
    """En- or decrypt a key slot's AF material in place with its slot key, then wipe the key."""
    try:
        c = make_sector_cipher(*split_cipher_spec(slot.encryption), slot_key)
        (c.encrypt if encrypt else c.decrypt)(material, 0)
        c.close()
    finally:
        wipe(slot_key)


def seal_keyslot(slot: Keyslot, volume_key: bytes | bytearray, passphrase: bytes | bytearray,
                 cache: KdfCache | None = None) -> bytes:
    """The encrypted AF material of a new key slot (material_size() bytes, for its area)."""
    if len(volume_key) != slot.key_size:
        raise ValueError(f"volume key is {len(volume_key)} bytes, key slot {slot.id} holds "
                         f"{slot.key_size}")
    slot_key = slot.kdf.derive(passphrase, slot.salt, slot.area_key_size, cache)
    material = af.split(volume_key, slot.stripes, slot.af_hash)
    material += bytes(slot.material_size() - len(material))
    _crypt_area(slot, slot_key, material, encrypt=True)
    try:
        return bytes(material)
    finally:
        wipe(material)


def open_keyslot(slot: Keyslot, read_at: ReadAt, passphrase: bytes | bytearray, name: str,
                 cache: KdfCache | None = None) -> bytearray:
    """Derive the slot key, decrypt the AF material and merge it (the caller checks the digest)."""
    material = bytearray(read_at(slot.area_offset, slot.material_size()))
    if len(material) != slot.material_size():
        raise FormatError(f"{name}: key slot {slot.id} material is truncated")
    slot_key = slot.kdf.derive(passphrase, slot.salt, slot.area_key_size, cache)
    _crypt_area(slot, slot_key, material, encrypt=False)
    try:
        return af.merge(material, slot.key_size, slot.stripes, slot.af_hash)
    finally:
        wipe(material)


def unlock(meta: Metadata, read_at: ReadAt, passphrase: bytes | bytearray, name: str,
           cache: KdfCache | None = None) -> tuple[bytearray, int]:
    """(volume key, key slot id) that passphrase opens; WrongKeyError when none does."""
    for slot in meta.keyslots:
        key = open_keyslot(slot, read_at, passphrase, name, cache)
        if meta.digest.matches(key, cache):
            return key, slot.id
        wipe(key)
    more = f" ({'; '.join(meta.skipped)}: not tried)" if meta.skipped else ""
    raise WrongKeyError(f"{name}: no key slot opens with this key file{more}")


class SlotUnlocking:
    """unlock_slot and unlock of the LuksHeader protocol (volume.py), for headers that give
    their key slots and digest as a Metadata (both LUKS versions)."""

    def metadata(self, name: str = "image") -> Metadata:
        raise NotImplementedError

    def unlock_slot(self, read_at: ReadAt, passphrase: bytes | bytearray, name: str = "image",
                    cache: KdfCache | None = None) -> tuple[bytearray, int]:
        """(volume key, key slot) that passphrase opens; WrongKeyError when none does."""
        return unlock(self.metadata(name), read_at, passphrase, name, cache)

    def unlock(self, read_at: ReadAt, passphrase: bytes | bytearray, name: str = "image",
               cache: KdfCache | None = None) -> bytearray:
        return self.unlock_slot(read_at, passphrase, name, cache)[0]
