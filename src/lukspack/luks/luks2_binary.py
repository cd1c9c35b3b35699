"""The LUKS2 binary header (cryptsetup lib/luks2/luks2.h struct luks2_hdr_disk) and one header
copy's bytes: the binary header, its JSON area and the checksum over both (luks2.py reads them)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from lukspack.errors import LukspackError
from lukspack.luks import luks2_json as lj
from lukspack.structs import Layout

MAGIC_1ST = b"LUKS\xba\xbe"
MAGIC_2ND = b"SKUL\xba\xbe"
VERSION = 2
BIN_LEN = lj.BIN_LEN
HDR_SALT_SIZE = 64  # binary header salt


class BinaryFields(NamedTuple):
    """struct luks2_hdr_disk (cryptsetup lib/luks2/luks2.h), the first 512 bytes; then
    _padding4096 up to 4096 bytes."""

    magic: bytes
    version: int
    hdr_size: int
    seqid: int
    label: bytes
    checksum_alg: bytes
    salt: bytes
    uuid: bytes
    subsystem: bytes
    hdr_offset: int
    padding: bytes  # _padding[184]
    csum: bytes


_BIN = Layout(">6sHQQ48s32s64s40s48sQ184s64s", BinaryFields)
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
        raw = _BIN.pack(BinaryFields(
            magic=self.magic, version=self.version, hdr_size=self.hdr_size, seqid=self.seqid,
            label=self.label.encode()[:47], checksum_alg=self.checksum_alg.encode()[:31],
            salt=self.salt, uuid=self.uuid.encode()[:39], subsystem=self.subsystem.encode()[:47],
            hdr_offset=self.hdr_offset, padding=bytes(184), csum=self.csum))
        return raw + bytes(BIN_LEN - len(raw))

    @classmethod
    def unpack(cls, data: bytes) -> BinaryHeader:
        f = _BIN.unpack(data)
        return cls(magic=f.magic, version=f.version, hdr_size=f.hdr_size, seqid=f.seqid,
                   label=_cstr(f.label), checksum_alg=_cstr(f.checksum_alg), salt=f.salt,
                   uuid=_cstr(f.uuid), subsystem=_cstr(f.subsystem), hdr_offset=f.hdr_offset,
                   csum=f.csum)


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
