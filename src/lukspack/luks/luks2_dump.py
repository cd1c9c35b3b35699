"""What `cryptsetup luksDump` shows of a LUKS2 header, as a dict (never key material).

cli.py renders it in luksDump's layout; `--json` prints it as is.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from lukspack.luks import luks2_json as lj

_PRIORITY = {0: "ignored", 1: "normal", 2: "preferred"}


def _hex(value: Any) -> str:
    try:
        return base64.b64decode(str(value), validate=True).hex()
    except (binascii.Error, ValueError):
        return ""


def _by_id(section: dict[str, Any], limit: int) -> list[tuple[str, Any]]:
    """Objects in numeric order, as cryptsetup walks them (ids 0..limit-1)."""
    return [(str(i), section[str(i)]) for i in range(limit) if str(i) in section]


def dump(hdr: Any) -> dict[str, Any]:
    j = hdr.json
    cfg = j["config"]
    return {
        "version": 2,
        "epoch": hdr.bin.seqid,
        "metadata_area": lj.metadata_size(j),
        "keyslots_area": lj.keyslots_size(j),
        "uuid": hdr.bin.uuid,
        "label": hdr.bin.label,
        "subsystem": hdr.bin.subsystem,
        "flags": list(cfg.get("flags", [])),
        "requirements": lj.mandatory_requirements(j),
        "headers": {"primary": hdr.status[0], "secondary": hdr.status[1]},
        "segments": [_segment(k, s) for k, s in _by_id(j["segments"], lj.OBJECTS_MAX)],
        "keyslots": [_keyslot(j, k, ks) for k, ks in _by_id(j["keyslots"], lj.OBJECTS_MAX)],
        "tokens": [{"id": k, "type": t["type"], "keyslots": list(t["keyslots"])}
                   for k, t in _by_id(j["tokens"], lj.OBJECTS_MAX)],
        "digests": [_digest(k, d) for k, d in _by_id(j["digests"], 8)],
    }


def _segment(key: str, s: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": key, "type": s["type"], "offset": int(s["offset"]),
                           "length": "dynamic" if s["size"] == "dynamic" else int(s["size"]),
                           "cipher": s.get("encryption"), "sector": s.get("sector_size")}
    if isinstance(s.get("integrity"), dict):
        out["integrity"] = s["integrity"].get("type")
    if s.get("flags"):
        out["flags"] = list(s["flags"])
    return out


def _keyslot(j: dict[str, Any], key: str, ks: dict[str, Any]) -> dict[str, Any]:
    digests = [d for d, v in _by_id(j["digests"], 8) if key in v["keyslots"]]
    bound = any(j["digests"][d]["segments"] for d in digests)
    out: dict[str, Any] = {"id": key, "type": ks["type"], "unbound": not bound,
                           "key_bits": ks.get("key_size", 0) * 8,
                           "priority": _PRIORITY.get(lj.priority(ks), "invalid")}
    if ks["type"] == "luks2":
        kdf, af, area = ks["kdf"], ks["af"], ks["area"]
        out.update({"cipher": area["encryption"], "cipher_key_bits": area["key_size"] * 8,
                    "pbkdf": kdf["type"]})
        if kdf["type"] == "pbkdf2":
            out.update({"hash": kdf["hash"], "iterations": kdf["iterations"]})
        else:
            out.update({"time_cost": kdf.get("time"), "memory": kdf.get("memory"),
                        "threads": kdf.get("cpus")})
        out.update({"salt": _hex(kdf.get("salt")), "af_stripes": af["stripes"],
                    "af_hash": af["hash"], "area_offset": int(area["offset"]),
                    "area_length": int(area["size"])})
    out["digest_ids"] = digests
    return out


def _digest(key: str, d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": key, "type": d["type"]}
    if d["type"] == "pbkdf2":
        out.update({"hash": d.get("hash"), "iterations": d.get("iterations"),
                    "salt": _hex(d.get("salt")), "digest": _hex(d.get("digest"))})
    return out
