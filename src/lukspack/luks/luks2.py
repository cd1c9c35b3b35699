"""LUKS2 on-disk format: two binary headers with JSON areas, key slots, format and unlock.

Layout (as `cryptsetup luksFormat --type luks2` writes it): the primary binary header (magic
`LUKS\\xba\\xbe`) at 0 and the secondary (`SKUL\\xba\\xbe`) at hdr_size, each 4096 bytes followed by
its JSON area, hdr_size 16 KiB by default (16 KiB .. 4 MiB); the keyslots area from 2 * hdr_size
to 16 MiB, filled with random bytes; the data segment at 16 MiB. Each copy's checksum is
sha256 over the whole hdr_size with the csum field zeroed; both copies carry the same seqid, and a
writer increments it. Reading follows cryptsetup's LUKS2_disk_hdr_read: a copy whose checksum or
JSON is bad is ignored when the other is good; of two good copies the higher seqid wins.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

from lukspack.crypto.sector import check_cipher, make_sector_cipher, split_cipher_spec
from lukspack.errors import FormatError, LukspackError, UnsupportedError, WrongKeyError
from lukspack.keys import wipe
from lukspack.luks import af
from lukspack.luks import luks2_json as lj
from lukspack.luks.kdf import SlotKdf, check_hash, pbkdf2

MAGIC_1ST = b"LUKS\xba\xbe"
MAGIC_2ND = b"SKUL\xba\xbe"
VERSION = 2
BIN_LEN = lj.BIN_LEN
SECTOR = 512
STRIPES = 4000
SALT_SIZE = 32  # key slot and digest salts
HDR_SALT_SIZE = 64  # binary header salt
DEFAULT_METADATA_SIZE = 16 << 10
DEFAULT_DATA_OFFSET = 16 << 20
MAX_KEYSLOTS = lj.OBJECTS_MAX
PRIORITIES = {0: "ignored", 1: "normal", 2: "preferred"}

# magic, version, hdr_size, seqid, label, checksum_alg, salt, uuid, subsystem, hdr_offset,
# _padding[184], csum[64]; then _padding4096 up to 4096 bytes
_BIN = struct.Struct(">6sHQQ48s32s64s40s48sQ184s64s")
assert _BIN.size == 512


@dataclass
class BinaryHeader:
    hdr_size: int
    seqid: int
    uuid: str
    label: str = ""
    subsystem: str = ""
    checksum_alg: str = "sha256"
    salt: bytes = field(default_factory=lambda: secrets.token_bytes(HDR_SALT_SIZE))
    hdr_offset: int = 0
    csum: bytes = bytes(64)
    magic: bytes = MAGIC_1ST
    version: int = VERSION

    def pack(self) -> bytes:
        raw = _BIN.pack(self.magic, self.version, self.hdr_size, self.seqid,
                        self.label.encode()[:47], self.checksum_alg.encode()[:31], self.salt,
                        self.uuid.encode()[:39], self.subsystem.encode()[:47], self.hdr_offset,
                        bytes(184), self.csum)
        return raw + bytes(BIN_LEN - len(raw))

    @classmethod
    def unpack(cls, data: bytes) -> BinaryHeader:
        f = _BIN.unpack_from(data)
        return cls(magic=f[0], version=f[1], hdr_size=f[2], seqid=f[3], label=_cstr(f[4]),
                   checksum_alg=_cstr(f[5]), salt=f[6], uuid=_cstr(f[7]), subsystem=_cstr(f[8]),
                   hdr_offset=f[9], csum=f[11])


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def checksum(alg: str, binary: bytes, json_area: bytes) -> bytes:
    """The header checksum: alg over the binary header (csum zeroed) and the whole JSON area."""
    try:
        h = hashlib.new(alg)
    except ValueError:
        raise lj.InvalidMetadata(f"checksum algorithm {alg!r} is not supported") from None
    h.update(binary[:448] + bytes(64) + binary[512:BIN_LEN])
    h.update(json_area)
    return h.digest()


def pack_copy(b: BinaryHeader, j: dict[str, Any], secondary: bool) -> bytes:
    """One header copy (binary header + NUL-padded JSON area, hdr_size bytes) with its checksum."""
    text = lj.dumps(j).encode()
    area = b.hdr_size - BIN_LEN
    if len(text) > area - 1:
        raise LukspackError(f"LUKS2 JSON ({len(text)} bytes) does not fit the {area}-byte area")
    json_area = text + bytes(area - len(text))
    copy = BinaryHeader(**{**b.__dict__, "magic": MAGIC_2ND if secondary else MAGIC_1ST,
                           "hdr_offset": b.hdr_size if secondary else 0, "csum": bytes(64)})
    raw = copy.pack()
    digest = checksum(copy.checksum_alg, raw, json_area)
    copy.csum = digest + bytes(64 - len(digest))
    return copy.pack() + json_area


# -- reading -----------------------------------------------------------------------------------

def _read_copy(read_at, size: int, offset: int, secondary: bool
               ) -> tuple[BinaryHeader | None, dict[str, Any] | None, str]:
    """(binary header or None when it fails the pre-checks, validated JSON or None, reason)."""
    which = "secondary" if secondary else "primary"
    if offset + BIN_LEN > size:
        return None, None, f"{which} header at offset {offset} is past the end of the file"
    raw = read_at(offset, BIN_LEN)
    b = BinaryHeader.unpack(raw)
    magic = MAGIC_2ND if secondary else MAGIC_1ST
    if b.magic != magic:
        return None, None, f"{which} header magic {b.magic!r} is not {magic!r}"
    if b.version != VERSION:
        return None, None, f"{which} header version {b.version} is not 2"
    if b.hdr_offset != offset:
        return None, None, f"{which} header hdr_offset {b.hdr_offset} differs from its offset {offset}"
    if not lj.METADATA_SIZES[0] <= b.hdr_size <= lj.METADATA_SIZES[-1]:
        return None, None, f"{which} header hdr_size {b.hdr_size} is outside 16384..4194304"
    if secondary and b.hdr_size != offset:
        return None, None, f"secondary header hdr_size {b.hdr_size} differs from its offset {offset}"
    if offset + b.hdr_size > size:
        return None, None, f"{which} JSON area (offset {offset + BIN_LEN}) is past the end of the file"
    area = read_at(offset + BIN_LEN, b.hdr_size - BIN_LEN)
    try:
        digest = checksum(b.checksum_alg, raw, area)
        if not hmac.compare_digest(digest, b.csum[: len(digest)]):
            return None, None, (f"{which} header checksum mismatch ({b.checksum_alg} "
                                f"{b.csum[: len(digest)].hex()[:16]}... != {digest.hex()[:16]}...)")
        j = lj.validate(lj.parse_json_area(area), b.hdr_size - BIN_LEN)
    except lj.InvalidMetadata as e:
        return b, None, f"{which} header: {e}"
    return b, j, ""


def find_secondary(read_at, size: int) -> int | None:
    """Offset of a secondary header magic at one of the known offsets (primary lost)."""
    for off in lj.METADATA_SIZES:
        if off + 8 <= size and read_at(off, 8) == MAGIC_2ND + VERSION.to_bytes(2, "big"):
            return off
    return None


def read_header(read_at, size: int, name: str) -> Luks2Header:
    """Read both copies; use the good one (the higher seqid of two); FormatError when none is."""
    b1, j1, why1 = _read_copy(read_at, size, 0, False)
    b2 = j2 = None
    why2 = ""
    if b1 is not None:
        b2, j2, why2 = _read_copy(read_at, size, b1.hdr_size, True)
    else:
        found = ""
        for off in lj.METADATA_SIZES:  # no usable primary size: try every known offset
            b2, j2, why2 = _read_copy(read_at, size, off, True)
            if b2 is not None:
                break
            if not found and "magic" not in why2 and "past the end" not in why2:
                found = why2  # a secondary is there, but bad: say why
        else:
            why2 = found or "no secondary header at any known offset"
    if j1 is None and j2 is None:
        if b1 is None and b2 is None and "magic" in why1 and "known offset" in why2:
            raise FormatError(f"{name}: not a LUKS2 header ({why1})")
        raise FormatError(f"{name}: no valid LUKS2 header: {why1}; {why2}")
    use_primary = j1 is not None and (j2 is None or b1.seqid >= b2.seqid)  # type: ignore[union-attr]
    if j1 is not None and j2 is not None and b1.seqid != b2.seqid:  # type: ignore[union-attr]
        old, new = (b2, b1) if use_primary else (b1, b2)
        reason = (f"{'secondary' if use_primary else 'primary'} header is older (seqid "
                  f"{old.seqid} < {new.seqid})")  # type: ignore[union-attr]
        why1, why2 = ("", reason) if use_primary else (reason, "")
        j1, j2 = (j1, None) if use_primary else (None, j2)
    b = b1 if use_primary else b2
    j = j1 if use_primary else j2
    hdr = Luks2Header(b, j, salt1=b1.salt if j1 is not None else None,  # type: ignore[union-attr,arg-type]
                      salt2=b2.salt if j2 is not None else None,  # type: ignore[union-attr]
                      status=(why1 or "ok", why2 or "ok"))
    if hdr.areas_end > size:
        raise FormatError(f"{name}: LUKS2 header and keyslots area ({hdr.areas_end} bytes) are "
                          f"larger than the file ({size} bytes)")
    if j1 is None or j2 is None:
        warnings.warn(f"{name}: LUKS2 {why1 or why2}; using the "
                      f"{'primary' if use_primary else 'secondary'} header", stacklevel=2)
    return hdr


# -- the header in memory -----------------------------------------------------------------------

@dataclass
class Keyslot:
    id: int
    key_size: int
    kdf: SlotKdf
    salt: bytes
    af_hash: str
    stripes: int
    area_offset: int
    area_size: int
    encryption: str
    area_key_size: int
    priority: int = 1

    def material_size(self) -> int:
        return -(-self.key_size * self.stripes // SECTOR) * SECTOR


@dataclass
class Digest:
    id: int
    hash: str
    iterations: int
    salt: bytes
    digest: bytes
    keyslots: list[int]
    segments: list[int]

    def matches(self, key: bytes | bytearray) -> bool:
        d = pbkdf2(self.hash, key, self.salt, self.iterations, len(self.digest))
        try:
            return hmac.compare_digest(bytes(d), self.digest)
        finally:
            wipe(d)


def _b64(value: str, what: str, size: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{what} is not base64 ({value[:20]!r})") from None
    if size is not None and len(raw) != size:
        raise FormatError(f"{what} is {len(raw)} bytes, not {size}")
    return raw


class Luks2Header:
    def __init__(self, b: BinaryHeader, j: dict[str, Any], *, salt1: bytes | None = None,
                 salt2: bytes | None = None, status: tuple[str, str] = ("ok", "ok")) -> None:
        self.bin, self.json, self.status = b, j, status
        self.salts = (salt1 or secrets.token_bytes(HDR_SALT_SIZE),
                      salt2 or secrets.token_bytes(HDR_SALT_SIZE))

    @property
    def hdr_size(self) -> int:
        return self.bin.hdr_size

    @property
    def areas_end(self) -> int:
        return 2 * lj.metadata_size(self.json) + lj.keyslots_size(self.json)

    # typed views
    def segment(self, name: str = "image") -> dict[str, Any]:
        """The one crypt segment lukspack can decrypt; UnsupportedError for anything else."""
        req = lj.mandatory_requirements(self.json)
        if req:
            raise UnsupportedError(f"{name}: LUKS2 requirements {', '.join(req)} are not supported "
                                   "(reencryption in progress?)")
        segs = self.json["segments"]
        if len(segs) != 1 or "0" not in segs:
            raise UnsupportedError(f"{name}: LUKS2 with {len(segs)} segments is not supported "
                                   "(reencryption in progress?)")
        s = segs["0"]
        if s["type"] != "crypt":
            raise UnsupportedError(f"{name}: LUKS2 segment type {s['type']!r} is not supported")
        if "integrity" in s:
            raise UnsupportedError(f"{name}: LUKS2 integrity ({s['integrity']['type']}) is not "
                                   "supported")
        if s["iv_tweak"] != "0":
            raise UnsupportedError(f"{name}: LUKS2 segment iv_tweak {s['iv_tweak']} is not supported")
        if s["sector_size"] not in (512, 1024, 2048, 4096):
            raise FormatError(f"{name}: LUKS2 segment sector_size {s['sector_size']} is not a "
                              "power of two from 512 to 4096")
        return s

    def keyslot(self, key: str, name: str = "image") -> Keyslot:
        ks = self.json["keyslots"][key]
        where = f"{name}: LUKS2 keyslot {key}"
        if ks["type"] != "luks2":
            raise UnsupportedError(f"{where} type {ks['type']!r} is not supported")
        kdf, af_, area = ks["kdf"], ks["af"], ks["area"]
        if kdf["type"] == "pbkdf2":
            slot_kdf = SlotKdf("pbkdf2", kdf["iterations"], _hash(kdf["hash"], where))
        elif kdf["type"] in ("argon2i", "argon2id"):
            slot_kdf = SlotKdf(kdf["type"], kdf["time"], memory=kdf["memory"], parallel=kdf["cpus"])
        else:
            raise UnsupportedError(f"{where} kdf type {kdf['type']!r} is not supported")
        costs = [("iterations", slot_kdf.iterations)] if slot_kdf.type == "pbkdf2" else [
            ("time", slot_kdf.iterations), ("memory", slot_kdf.memory),
            ("cpus", slot_kdf.parallel)]
        for what, v in costs:
            if not 1 <= v <= lj.U32_MAX:
                raise FormatError(f"{where} kdf {what} {v} is outside 1..{lj.U32_MAX}")
        if af_["stripes"] != STRIPES:
            raise UnsupportedError(f"{where} has {af_['stripes']} AF stripes, not {STRIPES}")
        cipher = area["encryption"]
        try:
            check_cipher(*split_cipher_spec(cipher), area["key_size"])
        except UnsupportedError as e:
            raise UnsupportedError(f"{where} area encryption: {e}") from None
        slot = Keyslot(int(key), ks["key_size"], slot_kdf, _b64(kdf["salt"], f"{where} salt",
                       SALT_SIZE), _hash(af_["hash"], where), STRIPES, int(area["offset"]),
                       int(area["size"]), cipher, area["key_size"], lj.priority(ks))
        if slot.material_size() > slot.area_size:
            raise FormatError(f"{where} area size {slot.area_size} is smaller than its key "
                              f"material ({slot.material_size()} bytes)")
        return slot

    def digest(self, key: str, name: str = "image") -> Digest:
        d = self.json["digests"][key]
        where = f"{name}: LUKS2 digest {key}"
        if d["type"] != "pbkdf2":
            raise UnsupportedError(f"{where} type {d['type']!r} is not supported")
        try:
            hash_name = _hash(lj.get(d, "hash", str, "digest"), where)
            raw = _b64(lj.get(d, "digest", str, "digest"), f"{where} digest")
            iterations = lj.get(d, "iterations", int, "digest")
            salt = _b64(lj.get(d, "salt", str, "digest"), f"{where} salt", SALT_SIZE)
        except lj.InvalidMetadata as e:
            raise FormatError(f"{name}: LUKS2 {e}".replace("digest ", f"digest {key} ", 1)) \
                from None
        if len(raw) != 20 and len(raw) != hashlib.new(hash_name).digest_size:
            raise FormatError(f"{where} digest is {len(raw)} bytes (20 or the {hash_name} size)")
        if not 1 <= iterations <= lj.U32_MAX:
            raise FormatError(f"{where} iterations {iterations} is outside 1..{lj.U32_MAX}")
        return Digest(int(key), hash_name, iterations, salt, raw,
                      [int(k) for k in d["keyslots"]], [int(s) for s in d["segments"]])

    def segment_digest(self, name: str = "image") -> Digest:
        for key, d in self.json["digests"].items():
            if "0" in d["segments"]:
                return self.digest(key, name)
        raise FormatError(f"{name}: LUKS2 segment 0 has no digest")

    def volume_key_size(self, name: str = "image") -> int:
        d = self.segment_digest(name)
        sizes = {self.json["keyslots"][str(k)]["key_size"] for k in d.keyslots}
        if len(sizes) > 1:
            raise FormatError(f"{name}: LUKS2 keyslots of digest {d.id} disagree on key_size "
                              f"({sorted(sizes)})")
        return sizes.pop() if sizes else 0  # no keyslot left: nothing can unlock it

    def active_keyslots(self) -> list[str]:
        """Keyslots that can open segment 0 (bound to its digest), cryptsetup's try order."""
        digest = next((d for d in self.json["digests"].values() if "0" in d["segments"]), None)
        if digest is None:
            return []
        bound = [k for k in digest["keyslots"] if self.json["keyslots"][k]["type"] == "luks2"]
        prio = {k: lj.priority(self.json["keyslots"][k]) for k in bound}
        return [k for p in (2, 1) for k in sorted(bound, key=int) if prio[k] == p]

    # unlocking
    def unlock(self, read_at, passphrase: bytes | bytearray, name: str = "image") -> bytearray:
        key, _slot = self.unlock_slot(read_at, passphrase, name)
        return key

    def unlock_slot(self, read_at, passphrase: bytes | bytearray, name: str = "image"
                    ) -> tuple[bytearray, int]:
        """(volume key, keyslot) that passphrase opens; WrongKeyError when none does."""
        self.segment(name)
        digest = self.segment_digest(name)
        skipped: list[str] = []
        for k in self.active_keyslots():
            try:
                ks = self.keyslot(k, name)
            except LukspackError as e:
                skipped.append(str(e).split(": ", 1)[-1])
                continue
            key = open_keyslot(ks, read_at, passphrase, name)
            if digest.matches(key):
                return key, ks.id
            wipe(key)
        more = f" ({'; '.join(skipped)}: not tried)" if skipped else ""
        raise WrongKeyError(f"{name}: no key slot opens with this key file{more}")

    def digest_matches(self, key: bytes | bytearray) -> bool:
        return self.segment_digest().matches(key)

    def pack(self, seqid: int) -> tuple[bytes, bytes]:
        """Both header copies (each hdr_size bytes) of this header with this seqid."""
        b = BinaryHeader(**{**self.bin.__dict__, "seqid": seqid, "salt": self.salts[0]})
        primary = pack_copy(b, self.json, False)
        b.salt = self.salts[1]
        return primary, pack_copy(b, self.json, True)

    def dump(self) -> dict[str, Any]:
        from lukspack.luks.luks2_dump import dump

        return dump(self)


def _hash(name: str, where: str) -> str:
    try:
        return check_hash(name)
    except UnsupportedError as e:
        raise UnsupportedError(f"{where}: {e}") from None


def open_keyslot(ks: Keyslot, read_at, passphrase: bytes | bytearray, name: str) -> bytearray:
    """Derive the slot key, decrypt the AF material and merge it (the caller checks the digest)."""
    material = bytearray(read_at(ks.area_offset, ks.material_size()))
    if len(material) != ks.material_size():
        raise FormatError(f"{name}: LUKS2 keyslot {ks.id} material is truncated")
    slot_key = ks.kdf.derive(passphrase, ks.salt, ks.area_key_size)
    try:
        c = make_sector_cipher(*split_cipher_spec(ks.encryption), slot_key)
        c.decrypt(material, 0)
        c.close()
    finally:
        wipe(slot_key)
    try:
        return af.merge(material, ks.key_size, ks.stripes, ks.af_hash)
    finally:
        wipe(material)


def open_volume(path: str, read_at, size: int):
    """A LuksVolume for volume.open_luks: header, cipher, payload offset and size."""
    from lukspack.luks.volume import LuksVolume

    hdr = read_header(read_at, size, path)
    seg = hdr.segment(path)
    name, mode = split_cipher_spec(seg["encryption"])
    key_size = hdr.volume_key_size(path)
    try:
        check_cipher(name, mode, key_size)
    except UnsupportedError as e:
        raise UnsupportedError(f"{path}: LUKS2 segment 0 encryption: {e}") from None
    offset = int(seg["offset"])
    sector = seg["sector_size"]
    if offset > size:
        raise FormatError(f"{path}: LUKS2 segment offset {offset} is past the end of the file "
                          f"(size {size})")
    if seg["size"] == "dynamic":
        payload = (size - offset) // sector * sector
    else:
        payload = int(seg["size"])
        if offset + payload > size:
            raise FormatError(f"{path}: LUKS2 segment (offset {offset}, size {payload}) ends past "
                              f"the end of the file (size {size})")
    return LuksVolume(path, 2, hdr, name, mode, key_size, offset, payload, sector, read_at)
