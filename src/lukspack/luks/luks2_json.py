"""LUKS2 JSON metadata: parsing the JSON area and validating it as cryptsetup does.

The checks follow cryptsetup's `parse_and_validate_json` and `LUKS2_hdr_validate`
(lib/luks2/luks2_disk_metadata.c, luks2_json_metadata.c, luks2_keyslot_luks2.c), in its order:
JSON area (starts with '{', one JSON object, then only NUL bytes), requirements, tokens, digests,
segments, keyslots, config, keyslot areas, JSON size, keyslot types. Every failure raises
InvalidMetadata with the reason; luks2.py adds the file name and which header copy it was.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from lukspack.errors import FormatError

BIN_LEN = 4096  # the binary header before each JSON area
METADATA_SIZES = tuple(0x4000 << i for i in range(9))  # 16 KiB .. 4 MiB: binary header + JSON
MAX_KEYSLOTS_SIZE = 128 << 20
OBJECTS_MAX = 32  # keyslots, tokens, segments
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1

_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "integer", float: "number",
               bool: "boolean", type(None): "null"}


class InvalidMetadata(FormatError):
    """A LUKS2 header copy fails a check; the message is the reason, without the file name
    (luks2.py adds it; a FormatError so that a miss still reaches the user as one line)."""


def dumps(obj: dict[str, Any]) -> str:
    """Compact JSON as cryptsetup writes it (json-c PLAIN | NOSLASHESCAPE)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def parse_json_area(area: bytes) -> dict[str, Any]:
    """The JSON object at the start of a JSON area; the rest of the area must be NUL bytes."""
    if area[:1] != b"{":
        raise InvalidMetadata(f"JSON area does not start with '{{' (first byte 0x{area[0]:02x})")
    end = area.find(b"\0")
    if end < 0:
        raise InvalidMetadata("JSON area has no NUL byte after the JSON text")
    try:
        text = area[:end].decode("utf-8")
        obj, stop = json.JSONDecoder().raw_decode(text)
    except UnicodeDecodeError as e:
        raise InvalidMetadata(f"JSON area is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InvalidMetadata(f"JSON area does not parse: {e.msg} at character {e.pos}") from None
    stop_byte = len(text[:stop].encode("utf-8"))
    if stop_byte < end:
        raise InvalidMetadata(f"JSON area is not NUL-padded: byte 0x{area[stop_byte]:02x} at "
                              f"offset {stop_byte} follows the JSON text")
    tail = area[end:].lstrip(b"\0")
    if tail:
        at = len(area) - len(tail)
        raise InvalidMetadata(f"JSON area is not NUL-padded: byte 0x{area[at]:02x} at offset {at} "
                              f"follows the JSON text (which ends at {end})")
    if not isinstance(obj, dict):
        raise InvalidMetadata(f"JSON area holds a {_tname(obj)}, not an object")
    return obj


# -- typed access ------------------------------------------------------------------------------

def _tname(v: Any) -> str:
    return _TYPE_NAMES.get(type(v), type(v).__name__)


def get(parent: dict[str, Any], key: str, kind: type, where: str, *, nonempty: bool = True) -> Any:
    """parent[key] when it has JSON type `kind` (int excludes booleans); else InvalidMetadata."""
    if key not in parent:
        raise InvalidMetadata(f"{where} has no \"{key}\"")
    v = parent[key]
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        raise InvalidMetadata(f"{where} \"{key}\" is {_tname(v)} {json.dumps(v)[:40]}, "
                              f"not {_TYPE_NAMES[kind]}")
    if nonempty and kind is str and not v:
        raise InvalidMetadata(f"{where} \"{key}\" is an empty string")
    return v


def u64(parent: dict[str, Any], key: str, where: str) -> int:
    """A decimal string holding an unsigned 64-bit number ("offset", "size", ...)."""
    s = get(parent, key, str, where)
    if not (s.isascii() and s.isdigit()) or int(s) > U64_MAX:
        raise InvalidMetadata(f"{where} \"{key}\" is {s!r}, not a decimal string of a 64-bit number")
    return int(s)


def u32(parent: dict[str, Any], key: str, where: str) -> int:
    v = get(parent, key, int, where)
    if not 0 <= v <= U32_MAX:
        raise InvalidMetadata(f"{where} \"{key}\" is {v}, outside 0..{U32_MAX}")
    return int(v)


def priority(keyslot: dict[str, Any]) -> int:
    """A keyslot's priority (0 ignore, 1 normal, 2 prefer) read as json-c's get_int reads it:
    missing is normal; numbers and numeric strings convert; anything else is 0."""
    v = keyslot.get("priority", 1)
    if isinstance(v, (bool, int, float)):
        return int(v) if abs(v) < 2**31 else 0
    if isinstance(v, str):
        digits = v.strip()
        sign = -1 if digits.startswith("-") else 1
        digits = digits.lstrip("+-")
        n = len(digits) - len(digits.lstrip("0123456789"))
        return sign * int(digits[:n]) if n and n < 10 else 0
    return 0


def _numbered(section: str, key: str) -> None:
    if not (key.isascii() and key.isdigit()):
        raise InvalidMetadata(f"{section} key {key!r} is not a number")


def _strings(arr: list[Any], where: str) -> list[str]:
    for i, v in enumerate(arr):
        if not isinstance(v, str):
            raise InvalidMetadata(f"{where}[{i}] is {_tname(v)}, not string")
    return arr


def _refs(arr: list[Any], section: dict[str, Any], what: str, where: str) -> None:
    for name in _strings(arr, where):
        if not isinstance(section.get(name), dict):
            raise InvalidMetadata(f"{where} names {what} {name!r}, which does not exist")


# -- validation --------------------------------------------------------------------------------

def validate(j: dict[str, Any], json_area_size: int) -> dict[str, Any]:
    """Validate the JSON of one header copy; return it after cryptsetup's keyslot repair (a copy)."""
    j = copy.deepcopy(j)
    _repair(j)
    _requirements(j)
    _tokens(j)
    _digests(j)
    _segments(j)
    _keyslots(j)
    _config(j)
    _areas(j)
    cfg_size = u64(j["config"], "json_size", "config")
    if cfg_size != json_area_size:
        raise InvalidMetadata(f"config json_size {cfg_size} differs from the binary header's JSON "
                              f"area size {json_area_size}")
    if len(dumps(j).encode()) > cfg_size:
        raise InvalidMetadata(f"JSON ({len(dumps(j).encode())} bytes) does not fit its area "
                              f"({cfg_size} bytes)")
    _keyslot_types(j)
    return j


def _repair(j: dict[str, Any]) -> None:
    """cryptsetup's LUKS2_keyslots_repair: drop KDF parameters that do not belong to the type."""
    keep = {"pbkdf2": {"type", "salt", "hash", "iterations"},
            "argon2i": {"type", "salt", "time", "memory", "cpus"},
            "argon2id": {"type", "salt", "time", "memory", "cpus"}}
    slots = j.get("keyslots")
    if not isinstance(slots, dict):
        return
    for ks in slots.values():
        if not isinstance(ks, dict) or ks.get("type") != "luks2":
            continue
        kdf = ks.get("kdf")
        if isinstance(kdf, dict) and isinstance(kdf.get("type"), str) and kdf["type"] in keep:
            for k in [k for k in kdf if k not in keep[kdf["type"]]]:
                del kdf[k]


def _is_reencrypt_flag(flag: str) -> bool:
    return flag == "online-reencrypt" or (
        flag.startswith("online-reencrypt-v") and flag[18:].isdigit() and flag[18:].isascii())


def mandatory_requirements(j: dict[str, Any]) -> list[str]:
    found = j.get("config", {}).get("requirements", {}).get("mandatory", [])
    return [str(flag) for flag in found]


def _requirements(j: dict[str, Any]) -> None:
    cfg = get(j, "config", dict, "JSON")
    if "requirements" in cfg:
        req = get(cfg, "requirements", dict, "config")
        if "mandatory" in req:
            flags = _strings(get(req, "mandatory", list, "config requirements"),
                             "config requirements mandatory")
            if sum(_is_reencrypt_flag(f) for f in flags) > 1:
                raise InvalidMetadata("config requirements name more than one online-reencrypt flag")


def _tokens(j: dict[str, Any]) -> None:
    keyslots = get(j, "keyslots", dict, "JSON")
    for key, tok in get(j, "tokens", dict, "JSON").items():
        _numbered("tokens", key)
        where = f"token {key}"
        if not isinstance(tok, dict):
            raise InvalidMetadata(f"{where} is {_tname(tok)}, not object")
        get(tok, "type", str, where)
        _refs(get(tok, "keyslots", list, where), keyslots, "keyslot", f"{where} keyslots")


def _digests(j: dict[str, Any]) -> None:
    keyslots = get(j, "keyslots", dict, "JSON")
    segments = get(j, "segments", dict, "JSON")
    for key, dig in get(j, "digests", dict, "JSON").items():
        _numbered("digests", key)
        where = f"digest {key}"
        if not isinstance(dig, dict):
            raise InvalidMetadata(f"{where} is {_tname(dig)}, not object")
        get(dig, "type", str, where)
        _refs(get(dig, "keyslots", list, where), keyslots, "keyslot", f"{where} keyslots")
        _refs(get(dig, "segments", list, where), segments, "segment", f"{where} segments")


def is_backup_segment(seg: dict[str, Any]) -> bool:
    return any(isinstance(f, str) and f.startswith("backup-") for f in seg.get("flags", []))


def _segments(j: dict[str, Any]) -> None:
    segments = get(j, "segments", dict, "JSON")
    if not segments:
        raise InvalidMetadata("segments section is empty")
    digests = j["digests"]
    first_backup = -1
    for key, seg in segments.items():
        _numbered("segments", key)
        where = f"segment {key}"
        if not isinstance(seg, dict):
            raise InvalidMetadata(f"{where} is {_tname(seg)}, not object")
        stype = get(seg, "type", str, where)
        offset = u64(seg, "offset", where)
        size = 0 if get(seg, "size", str, where) == "dynamic" else u64(seg, "size", where)
        if seg["size"] != "dynamic" and not size:
            raise InvalidMetadata(f"{where} size is 0")
        if offset % 512:
            raise InvalidMetadata(f"{where} offset {offset} is not aligned to 512 bytes")
        if size % 512:
            raise InvalidMetadata(f"{where} size {size} is not aligned to 512 bytes")
        if "flags" in seg:
            _strings(get(seg, "flags", list, where), f"{where} flags")
        n = int(key)
        if is_backup_segment(seg):
            if first_backup < 0 or n < first_backup:
                first_backup = n
        elif 0 <= first_backup <= n:
            raise InvalidMetadata(f"regular {where} follows backup segment {first_backup}")
        if stype == "crypt":
            _crypt_segment(seg, key, size, digests)
    if first_backup == 0:
        raise InvalidMetadata("there is no regular segment")
    count = len(segments)
    if first_backup >= count:
        raise InvalidMetadata(f"segments jump to backup segment {first_backup} ({count} segments)")
    regular = count if first_backup < 0 else first_backup
    for i in range(count):
        if str(i) not in segments:
            raise InvalidMetadata(f"segments have a gap at {i}")
    spans = []
    for i in range(regular):
        s = segments[str(i)]
        size = 0 if s["size"] == "dynamic" else int(s["size"])
        if not size and i != regular - 1:
            raise InvalidMetadata(f"segment {i} has dynamic size but is not the last segment")
        spans.append((int(s["offset"]), size or None, i))
    for a0, _alen, i in spans:
        for b0, blen, k in spans:
            if i != k and a0 >= b0 and (blen is None or a0 < b0 + blen):
                raise InvalidMetadata(f"segment {i} (offset {a0}) overlaps segment {k}")


def _crypt_segment(seg: dict[str, Any], key: str, size: int, digests: dict[str, Any]) -> None:
    where = f"segment {key}"
    iv = get(seg, "iv_tweak", str, where)
    get(seg, "encryption", str, where)
    get(seg, "sector_size", int, where)
    if "integrity" in seg:
        integ = get(seg, "integrity", dict, where)
        for k in ("type", "journal_encryption", "journal_integrity"):
            get(integ, k, str, f"{where} integrity")
    sector = u32(seg, "sector_size", where)
    if not sector or sector % 512:
        raise InvalidMetadata(f"{where} sector_size {sector} is not a multiple of 512")
    if not (iv.isascii() and iv.isdigit()) or int(iv) > U64_MAX:
        raise InvalidMetadata(f"{where} iv_tweak {iv!r} is not a decimal string of a 64-bit number")
    if size % sector:
        raise InvalidMetadata(f"{where} size {size} is not aligned to its sector_size {sector}")
    if not any(isinstance(d, dict) and key in d.get("segments", []) for d in digests.values()):
        raise InvalidMetadata(f"crypt {where} is not assigned to any digest")


def _keyslots(j: dict[str, Any]) -> None:
    for key, ks in get(j, "keyslots", dict, "JSON").items():
        _numbered("keyslots", key)
        where = f"keyslot {key}"
        if not isinstance(ks, dict):
            raise InvalidMetadata(f"{where} is {_tname(ks)}, not object")
        get(ks, "type", str, where)
        u32(ks, "key_size", where)


def metadata_size(j: dict[str, Any]) -> int:
    return int(j["config"]["json_size"]) + BIN_LEN


def keyslots_size(j: dict[str, Any]) -> int:
    return int(j["config"]["keyslots_size"])


def _config(j: dict[str, Any]) -> None:
    cfg = get(j, "config", dict, "JSON")
    meta = u64(cfg, "json_size", "config") + BIN_LEN
    ks_size = u64(cfg, "keyslots_size", "config")
    if meta not in METADATA_SIZES:
        raise InvalidMetadata(f"config json_size {meta - BIN_LEN} makes an unsupported header size "
                              f"{meta} (16 KiB .. 4 MiB, a power of two)")
    if ks_size % 4096 or ks_size > MAX_KEYSLOTS_SIZE:
        raise InvalidMetadata(f"config keyslots_size {ks_size} is not a multiple of 4096 up to "
                              f"{MAX_KEYSLOTS_SIZE}")
    offsets = [int(s["offset"]) for s in j["segments"].values()]
    first = min(offsets) if offsets else 0
    if first and (first < ks_size or first - ks_size < 2 * meta):
        raise InvalidMetadata(f"config keyslots_size {ks_size} does not fit between the headers "
                              f"(2 x {meta}) and the data offset {first}")
    if "flags" in cfg:
        _strings(get(cfg, "flags", list, "config"), "config flags")


def _areas(j: dict[str, Any]) -> None:
    meta = metadata_size(j)
    end = 2 * meta + keyslots_size(j)
    spans = []
    for key, ks in j["keyslots"].items():
        where = f"keyslot {key}"
        area = get(ks, "area", dict, where)
        get(area, "type", str, f"{where} area")
        off, size = u64(area, "offset", f"{where} area"), u64(area, "size", f"{where} area")
        desc = f"{where} area (offset {off}, size {size})"
        if off < 2 * meta:
            raise InvalidMetadata(f"{desc} starts inside the headers (which end at {2 * meta})")
        if not size:
            raise InvalidMetadata(f"{desc} is empty")
        if off + size > end:
            raise InvalidMetadata(f"{desc} ends past the keyslots area (which ends at {end})")
        spans.append((off, size, key))
    for a0, _alen, i in spans:
        for b0, blen, k in spans:
            if i != k and b0 <= a0 < b0 + blen:
                raise InvalidMetadata(f"keyslot {i} area (offset {a0}) overlaps keyslot {k} area "
                                      f"(offset {b0}, size {blen})")


def _keyslot_types(j: dict[str, Any]) -> None:
    reencrypt = 0
    for key, ks in j["keyslots"].items():
        where = f"keyslot {key}"
        if ks["type"] == "reencrypt":
            reencrypt += 1
        if ks["type"] != "luks2":
            continue
        kdf = get(ks, "kdf", dict, where)
        af = get(ks, "af", dict, where)
        area = get(ks, "area", dict, where)
        ktype = get(kdf, "type", str, f"{where} kdf")
        if ktype == "pbkdf2":
            need = {"hash": str, "iterations": int, "salt": str}
        elif ktype in ("argon2i", "argon2id"):
            need = {"time": int, "memory": int, "cpus": int, "salt": str}
        else:
            need = {}
        for k, kind in need.items():
            get(kdf, k, kind, f"{where} kdf")
        if need and len(kdf) != len(need) + 1:
            raise InvalidMetadata(f"{where} kdf has extra fields: {sorted(set(kdf) - set(need))}")
        if get(af, "type", str, f"{where} af") != "luks1":
            raise InvalidMetadata(f"{where} af type {af['type']!r} is not luks1")
        get(af, "hash", str, f"{where} af")
        get(af, "stripes", int, f"{where} af")
        if get(area, "type", str, f"{where} area") != "raw":
            raise InvalidMetadata(f"{where} area type {area['type']!r} is not raw")
        get(area, "encryption", str, f"{where} area")
        get(area, "key_size", int, f"{where} area")
        n = sum(isinstance(d, dict) and key in d.get("keyslots", []) for d in j["digests"].values())
        if n != 1:
            raise InvalidMetadata(f"{where} is assigned to {n} digests, not exactly 1")
    has_flag = any(_is_reencrypt_flag(f) for f in mandatory_requirements(j))
    if reencrypt > 1:
        raise InvalidMetadata(f"{reencrypt} reencrypt keyslots (at most 1)")
    if reencrypt and not has_flag:
        raise InvalidMetadata("a reencrypt keyslot without the online-reencrypt requirement")
    if has_flag and not reencrypt:
        raise InvalidMetadata("the online-reencrypt requirement without a reencrypt keyslot")
