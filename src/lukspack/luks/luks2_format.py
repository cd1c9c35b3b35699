"""Writing LUKS2: new key slots (material, JSON) and whole headers as `cryptsetup luksFormat`.

format_luks2 returns everything before the data segment: both header copies, and the keyslots area
filled with random bytes (as cryptsetup's LUKS2_wipe_header_areas) holding keyslot 0.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid as uuidlib
from typing import Any

from lukspack.crypto.sector import check_cipher, split_cipher_spec
from lukspack.errors import LukspackError
from lukspack.keys import wipe
from lukspack.luks import luks2_json as lj
from lukspack.luks.kdf import U32_MAX, KdfCache, SlotKdf, pbkdf2
from lukspack.luks.luks2 import (
    BIN_LEN,
    DEFAULT_DATA_OFFSET,
    DEFAULT_METADATA_SIZE,
    HDR_SALT_SIZE,
    SALT_SIZE,
    STRIPES,
    BinaryHeader,
    pack_copy,
)
from lukspack.luks.metadata import Keyslot, seal_keyslot


def new_keyslot(index: int, key_size: int, kdf: SlotKdf, area_offset: int, area_size: int,
                encryption: str, area_key_size: int) -> Keyslot:
    """A new LUKS2 key slot (fresh salt; AF hash = the KDF's hash, as cryptsetup)."""
    return Keyslot(index, key_size, kdf, secrets.token_bytes(SALT_SIZE), kdf.hash, STRIPES,
                   area_offset, area_size, encryption, area_key_size)


def keyslot_json(slot: Keyslot) -> dict[str, Any]:
    """A keyslot object with cryptsetup's field order."""
    kdf = slot.kdf
    if kdf.type == "pbkdf2":
        k: dict[str, Any] = {"type": "pbkdf2", "hash": kdf.hash, "iterations": kdf.iterations}
    else:
        k = {"type": kdf.type, "time": kdf.iterations, "memory": kdf.memory, "cpus": kdf.parallel}
    k["salt"] = base64.b64encode(slot.salt).decode()
    return {"type": "luks2", "key_size": slot.key_size,
            "af": {"type": "luks1", "stripes": slot.stripes, "hash": slot.af_hash},
            "area": {"type": "raw", "offset": str(slot.area_offset), "size": str(slot.area_size),
                     "encryption": slot.encryption, "key_size": slot.area_key_size},
            "kdf": k}


def keyslot_area_size(key_size: int) -> int:
    return -(-key_size * STRIPES // 4096) * 4096


def format_luks2(volume_key: bytes | bytearray, passphrase: bytes | bytearray, kdf: SlotKdf, *,
                 digest_iterations: int, cipher: str = "aes-xts-plain64", sector_size: int = 512,
                 metadata_size: int = DEFAULT_METADATA_SIZE,
                 data_offset: int = DEFAULT_DATA_OFFSET, uuid: str | None = None,
                 label: str = "", subsystem: str = "", key_slot: int = 0,
                 cache: KdfCache | None = None) -> bytes:
    """The whole area before the data segment: both headers, keyslots area (random bytes with
    keyslot 0), as `cryptsetup luksFormat --type luks2` writes it."""
    key_size = len(volume_key)
    check_cipher(*split_cipher_spec(cipher), key_size)
    if metadata_size not in lj.METADATA_SIZES:
        raise LukspackError(f"LUKS2 metadata size {metadata_size} is not one of "
                            f"{', '.join(map(str, lj.METADATA_SIZES))}")
    if sector_size not in (512, 1024, 2048, 4096):
        raise LukspackError(f"LUKS2 sector size {sector_size} is not 512, 1024, 2048 or 4096")
    keyslots_size = data_offset - 2 * metadata_size
    area_offset, area_size = 2 * metadata_size, keyslot_area_size(key_size)
    if area_size > keyslots_size:
        raise LukspackError(f"LUKS2 keyslots area ({keyslots_size} bytes) is too small")
    digest_salt = secrets.token_bytes(SALT_SIZE)
    if not 1 <= digest_iterations <= U32_MAX:
        raise LukspackError(f"LUKS2 digest iterations {digest_iterations} are outside "
                            f"1..{U32_MAX}")
    d = pbkdf2(kdf.hash, volume_key, digest_salt, digest_iterations,
               hashlib.new(kdf.hash).digest_size, cache)
    slot = new_keyslot(key_slot, key_size, kdf, area_offset, area_size, cipher, key_size)
    j: dict[str, Any] = {
        "keyslots": {str(key_slot): keyslot_json(slot)},
        "tokens": {},
        "segments": {"0": {"type": "crypt", "offset": str(data_offset), "size": "dynamic",
                           "iv_tweak": "0", "encryption": cipher, "sector_size": sector_size}},
        "digests": {"0": {"type": "pbkdf2", "keyslots": [str(key_slot)], "segments": ["0"],
                          "hash": kdf.hash, "iterations": digest_iterations,
                          "salt": base64.b64encode(digest_salt).decode(),
                          "digest": base64.b64encode(d).decode()}},
        "config": {"json_size": str(metadata_size - BIN_LEN), "keyslots_size": str(keyslots_size)},
    }
    wipe(d)
    lj.validate(j, metadata_size - BIN_LEN)
    b = BinaryHeader(hdr_size=metadata_size, seqid=1, uuid=uuid or str(uuidlib.uuid4()),
                     label=label, subsystem=subsystem)
    out = bytearray(data_offset)
    out[area_offset : area_offset + keyslots_size] = secrets.token_bytes(keyslots_size)
    material = seal_keyslot(slot, volume_key, passphrase, cache)
    out[area_offset : area_offset + len(material)] = material
    out[:metadata_size] = pack_copy(b, j, False)
    b.salt = secrets.token_bytes(HDR_SALT_SIZE)
    out[metadata_size : 2 * metadata_size] = pack_copy(b, j, True)
    return bytes(out)
