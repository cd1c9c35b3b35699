"""LUKS2 on-disk format: two binary headers (luks2_binary.py) with JSON areas, key slots, unlock.

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
import enum
import hashlib
import hmac
import secrets
import warnings
from dataclasses import dataclass
from typing import Any

from lukspack.crypto.sector import check_cipher, split_cipher_spec
from lukspack.errors import FormatError, LukspackError, UnsupportedError
from lukspack.luks import luks2_json as lj
from lukspack.luks.kdf import KdfCache, SlotKdf, check_hash
from lukspack.luks.luks2_binary import (
    BIN_LEN,
    HDR_SALT_SIZE,
    MAGIC_1ST,
    MAGIC_2ND,
    VERSION,
    BinaryHeader,
    checksum,
    pack_copy,
)
from lukspack.luks.metadata import Digest, Keyslot, Metadata, ReadAt, SlotUnlocking

__all__ = [  # the binary header's names (luks2_binary.py) are re-exported
    "BIN_LEN", "DEFAULT_DATA_OFFSET", "DEFAULT_METADATA_SIZE", "HDR_SALT_SIZE", "MAGIC_1ST",
    "MAGIC_2ND", "MAX_KEYSLOTS", "PRIORITIES", "SALT_SIZE", "SECTOR", "STRIPES", "VERSION",
    "BinaryHeader", "CopyFault", "CopyProblem", "KeyslotUnusable", "Luks2Header",
    "MalformedKeyslot", "Payload", "UnsupportedKeyslot", "checksum", "find_secondary",
    "pack_copy", "read_header"]

SECTOR = 512
STRIPES = 4000
SALT_SIZE = 32  # key slot and digest salts
DEFAULT_METADATA_SIZE = 16 << 10
DEFAULT_DATA_OFFSET = 16 << 20
MAX_KEYSLOTS = lj.OBJECTS_MAX
PRIORITIES = {0: "ignored", 1: "normal", 2: "preferred"}



class KeyslotUnusable(LukspackError):
    """A LUKS2 keyslot lukspack cannot try, as fields: `image` (the file), `slot` (its JSON
    key) and `reason` (what is wrong, naming the slot, without the file); the message is
    "image: reason". Callers use the fields, never the message text."""

    def __init__(self, image: str, slot: str, reason: str) -> None:
        super().__init__(f"{image}: {reason}")
        self.image, self.slot, self.reason = image, slot, reason


class UnsupportedKeyslot(KeyslotUnusable, UnsupportedError):
    """A keyslot that is valid but uses what lukspack does not handle (a kdf, AF stripes)."""


class MalformedKeyslot(KeyslotUnusable, FormatError):
    """A keyslot whose values break the format (costs out of range, a bad salt, a short area)."""


# -- reading -----------------------------------------------------------------------------------

class CopyFault(enum.Enum):
    """Why a header copy is not used: decisions are made on these values, never on message text."""

    PAST_END = "past the end of the file"
    TRUNCATED = "the JSON area is past the end of the file"
    MAGIC = "wrong magic"
    VERSION = "wrong version"
    OFFSET = "hdr_offset differs from where the copy is"
    SIZE = "hdr_size outside 16 KiB .. 4 MiB"
    CHECKSUM = "checksum mismatch"
    METADATA = "JSON metadata breaks cryptsetup's rules"
    NOT_FOUND = "no secondary header at any known offset"
    OLDER = "older than the other copy (lower seqid)"


@dataclass(frozen=True)
class CopyProblem:
    fault: CopyFault
    message: str  # the reason in words, naming the copy ("primary header checksum mismatch ...")

    @property
    def present(self) -> bool:
        """Whether a header copy is there at all (something other than foreign bytes)."""
        return self.fault not in (CopyFault.PAST_END, CopyFault.MAGIC, CopyFault.NOT_FOUND)


_MAGIC_NAMES = {MAGIC_1ST: "LUKS 0xba 0xbe", MAGIC_2ND: "SKUL 0xba 0xbe"}


def _read_copy(read_at: ReadAt, size: int, offset: int, secondary: bool
               ) -> tuple[BinaryHeader | None, dict[str, Any] | None, CopyProblem | None]:
    """(binary header or None when it fails the pre-checks, validated JSON or None, problem)."""
    which = "secondary" if secondary else "primary"

    def bad(fault: CopyFault, message: str) -> tuple[None, None, CopyProblem]:
        return None, None, CopyProblem(fault, f"{which} header {message}")

    if offset + BIN_LEN > size:
        return bad(CopyFault.PAST_END, f"at offset {offset} is past the end of the file")
    raw = read_at(offset, BIN_LEN)
    b = BinaryHeader.unpack(raw)
    magic = MAGIC_2ND if secondary else MAGIC_1ST
    if b.magic != magic:
        return bad(CopyFault.MAGIC, f"magic {b.magic.hex()} (hex) is not {_MAGIC_NAMES[magic]}")
    if b.version != VERSION:
        return bad(CopyFault.VERSION, f"version {b.version} is not 2")
    if b.hdr_offset != offset:
        return bad(CopyFault.OFFSET, f"hdr_offset {b.hdr_offset} differs from its offset {offset}")
    if not lj.METADATA_SIZES[0] <= b.hdr_size <= lj.METADATA_SIZES[-1]:
        return bad(CopyFault.SIZE, f"hdr_size {b.hdr_size} is outside 16384..4194304")
    if secondary and b.hdr_size != offset:
        return bad(CopyFault.OFFSET, f"hdr_size {b.hdr_size} differs from its offset {offset}")
    if offset + b.hdr_size > size:
        return bad(CopyFault.TRUNCATED, f"JSON area (offset {offset + BIN_LEN}, {b.hdr_size} "
                   "bytes with the binary header) is past the end of the file")
    area = read_at(offset + BIN_LEN, b.hdr_size - BIN_LEN)
    try:
        digest = checksum(b.checksum_alg, raw, area)
        if not hmac.compare_digest(digest, b.csum[: len(digest)]):
            return b, None, CopyProblem(CopyFault.CHECKSUM, (
                f"{which} header checksum mismatch ({b.checksum_alg} "
                f"{b.csum[: len(digest)].hex()[:16]}... != {digest.hex()[:16]}...)"))
        j = lj.validate(lj.parse_json_area(area), b.hdr_size - BIN_LEN)
    except lj.InvalidMetadata as e:
        return b, None, CopyProblem(CopyFault.METADATA, f"{which} header: {e}")
    return b, j, None


def find_secondary(read_at: ReadAt, size: int) -> int | None:
    """Offset of a secondary header magic at one of the known offsets (primary lost)."""
    for off in lj.METADATA_SIZES:
        if off + 8 <= size and read_at(off, 8) == MAGIC_2ND + VERSION.to_bytes(2, "big"):
            return off
    return None


def read_header(read_at: ReadAt, size: int, name: str) -> Luks2Header:
    """Read both copies; use the good one (the higher seqid of two); FormatError when none is."""
    b1, j1, p1 = _read_copy(read_at, size, 0, False)
    b2: BinaryHeader | None = None
    j2: dict[str, Any] | None = None
    p2: CopyProblem | None = None
    if b1 is not None:
        b2, j2, p2 = _read_copy(read_at, size, b1.hdr_size, True)
    else:
        damaged: CopyProblem | None = None
        for off in lj.METADATA_SIZES:  # no usable primary size: try every known offset
            b2, j2, p2 = _read_copy(read_at, size, off, True)
            if b2 is not None:
                break
            if damaged is None and p2 is not None and p2.present:
                damaged = p2  # a secondary is there, but bad: say why
        else:
            p2 = damaged or CopyProblem(CopyFault.NOT_FOUND,
                                        "no secondary header at any known offset")
    if j1 is None and j2 is None:
        assert p1 is not None and p2 is not None
        if not p1.present and p2.fault is CopyFault.NOT_FOUND:
            raise FormatError(f"{name}: not a LUKS2 header ({p1.message})")
        raise FormatError(f"{name}: no valid LUKS2 header: {p1.message}; {p2.message}")
    if j1 is not None and j2 is not None:
        assert b1 is not None and b2 is not None
        if b1.seqid != b2.seqid:
            old, new, which = (b2, b1, "secondary") if b1.seqid > b2.seqid else (b1, b2, "primary")
            problem = CopyProblem(CopyFault.OLDER, f"{which} header is older (seqid {old.seqid} "
                                                   f"< {new.seqid})")
            if which == "secondary":
                j2, p2 = None, problem
            else:
                j1, p1 = None, problem
    use_primary = j1 is not None
    b, j = (b1, j1) if use_primary else (b2, j2)
    assert b is not None and j is not None
    hdr = Luks2Header(b, j, salt1=b1.salt if j1 is not None and b1 else None,
                      salt2=b2.salt if j2 is not None and b2 else None, problems=(p1, p2))
    if hdr.areas_end > size:
        raise FormatError(f"{name}: LUKS2 header and keyslots area ({hdr.areas_end} bytes) are "
                          f"larger than the file ({size} bytes)")
    if j1 is None or j2 is None:
        unused = p1 or p2
        assert unused is not None
        warnings.warn(f"{name}: LUKS2 {unused.message}; using the "
                      f"{'primary' if use_primary else 'secondary'} header", stacklevel=2)
    return hdr


@dataclass(frozen=True)
class Payload:
    """Where the data segment is and how it is encrypted."""

    cipher_name: str
    cipher_mode: str
    key_bytes: int
    offset: int
    size: int
    sector_size: int


# -- the header in memory -----------------------------------------------------------------------

def _b64(value: str, what: str, size: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{what} is not base64 ({value[:20]!r})") from None
    if size is not None and len(raw) != size:
        raise FormatError(f"{what} is {len(raw)} bytes, not {size}")
    return raw


class Luks2Header(SlotUnlocking):
    """One LUKS2 header: the binary header and JSON in use, and how each copy was found."""

    version = 2

    def __init__(self, b: BinaryHeader, j: dict[str, Any], *, salt1: bytes | None = None,
                 salt2: bytes | None = None,
                 problems: tuple[CopyProblem | None, CopyProblem | None] = (None, None)) -> None:
        self.bin, self.json, self.problems = b, j, problems
        self.salts = (salt1 or secrets.token_bytes(HDR_SALT_SIZE),
                      salt2 or secrets.token_bytes(HDR_SALT_SIZE))

    @property
    def status(self) -> tuple[str, str]:
        """Each copy's state in words: "ok" or why it is not used."""
        first, second = self.problems
        return (first.message if first else "ok", second.message if second else "ok")

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
        s: dict[str, Any] = segs["0"]
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
        """Keyslot `key` as lukspack opens it; UnsupportedKeyslot or MalformedKeyslot (both
        KeyslotUnusable, with the slot and the reason as fields) when it cannot be tried."""
        try:
            return self._keyslot(key)
        except UnsupportedError as e:
            raise UnsupportedKeyslot(name, key, str(e)) from None
        except LukspackError as e:
            raise MalformedKeyslot(name, key, str(e)) from None

    def _keyslot(self, key: str) -> Keyslot:
        ks = self.json["keyslots"][key]
        where = f"LUKS2 keyslot {key}"
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
                      tuple(int(k) for k in d["keyslots"]), tuple(int(s) for s in d["segments"]))

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

    # the LUKS2 model (metadata.py) and the LuksHeader protocol (volume.py)
    def metadata(self, name: str = "image") -> Metadata:
        """Keyslots that can open segment 0 in cryptsetup's order; those lukspack cannot try
        are listed with the reason."""
        self.segment(name)
        slots, skipped = [], []
        for k in self.active_keyslots():
            try:
                slots.append(self.keyslot(k, name))
            except KeyslotUnusable as e:
                skipped.append(e.reason)
        return Metadata(tuple(slots), self.segment_digest(name), tuple(skipped))

    def digest_matches(self, key: bytes | bytearray, cache: KdfCache | None = None) -> bool:
        return self.segment_digest().matches(key, cache)

    def payload(self, size: int, name: str = "image") -> Payload:
        """The data segment lukspack can decrypt, in a file of `size` bytes; UnsupportedError or
        FormatError saying why not (the header itself may still be valid: luksDump shows it)."""
        seg = self.segment(name)
        cipher_name, mode = split_cipher_spec(seg["encryption"])
        key_size = self.volume_key_size(name)
        try:
            check_cipher(cipher_name, mode, key_size)
        except UnsupportedError as e:
            raise UnsupportedError(f"{name}: LUKS2 segment 0 encryption: {e}") from None
        offset = int(seg["offset"])
        sector = seg["sector_size"]
        if offset > size:
            raise FormatError(f"{name}: LUKS2 segment offset {offset} is past the end of the "
                              f"file (size {size})")
        if seg["size"] == "dynamic":
            length = (size - offset) // sector * sector
        else:
            length = int(seg["size"])
            if offset + length > size:
                raise FormatError(f"{name}: LUKS2 segment (offset {offset}, size {length}) ends "
                                  f"past the end of the file (size {size})")
        return Payload(cipher_name, mode, key_size, offset, length, sector)

    def payload_guess(self, size: int) -> Payload:
        """What segment 0 says, unchecked, for `info` on a header whose payload cannot be
        opened (zeros where it says nothing usable; the JSON itself is valid)."""
        seg = self.json["segments"].get("0", {})
        cipher_name, _, mode = str(seg.get("encryption", "")).partition("-")
        try:
            key_size = self.volume_key_size()
        except LukspackError:
            key_size = 0
        offset = int(seg["offset"])
        sector = seg.get("sector_size") if isinstance(seg.get("sector_size"), int) else 512
        if seg["size"] == "dynamic":
            length = max(0, (size - offset) // (sector or 512) * (sector or 512))
        else:
            length = int(seg["size"])
        return Payload(cipher_name, mode, key_size, offset, length, sector)

    def pack(self, seqid: int) -> tuple[bytes, bytes]:
        """Both header copies (each hdr_size bytes) of this header with this seqid."""
        b = BinaryHeader(**{**self.bin.__dict__, "seqid": seqid, "salt": self.salts[0]})
        primary = pack_copy(b, self.json, False)
        b.salt = self.salts[1]
        return primary, pack_copy(b, self.json, True)

    def dump(self) -> dict[str, Any]:
        """What `cryptsetup luksDump` shows (luks2_dump.py), never key material."""
        from lukspack.luks.luks2_dump import dump  # noqa: PLC0415 - only info needs it

        return dump(self)


def _hash(name: str, where: str) -> str:
    try:
        return check_hash(name)
    except UnsupportedError as e:
        raise UnsupportedError(f"{where}: {e}") from None
