"""Text renderings for `lukspack info`: a disk image's fields, and LUKS headers in the layout of
`cryptsetup luksDump` (LUKS1 and LUKS2), so the two can be compared line by line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def info_lines(d: dict[str, Any], indent: str = "") -> Iterator[str]:
    luks = d.get("luks")
    if luks and luks.get("version") in (1, 2):
        yield from _luks1_dump(luks) if luks["version"] == 1 else _luks2_dump(luks)
        for note in d.get("notes", []):
            yield f"note: {note}"
        return
    for k, v in d.items():
        if k == "encryption" and isinstance(v, dict) and v.get("version") in (1, 2):
            yield f"{indent}{k}: {v.get('format', 'luks')}"  # as luksDump shows it
            body = _luks1_dump(v) if v["version"] == 1 else _luks2_dump(v)
            yield from (f"{indent}  {line}" if line else "" for line in body)
        elif isinstance(v, dict):
            yield f"{indent}{k}:"
            yield from info_lines(v, indent + "  ")
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            yield f"{indent}{k}:"
            for item in v:
                yield from info_lines(item, indent + "  ")
        elif isinstance(v, list | tuple):  # notes, extensions: one per line, not a Python list
            yield f"{indent}{k}:" + ("" if v else " (none)")
            for item in v:
                yield f"{indent}  {_text(item)}"
        else:
            yield f"{indent}{k}: {_text(v)}"


def _text(v: Any) -> str:
    """A value as a person reads it: bytes as hex, booleans as yes/no."""
    if isinstance(v, bytes | bytearray):
        return v.hex()
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def _hexgroups(h: str, per_line: int = 16, prefix: str = "\t") -> str:
    pairs = [h[i : i + 2] for i in range(0, len(h), 2)]
    rows = [" ".join(pairs[i : i + per_line]) + " " for i in range(0, len(pairs), per_line)]
    return ("\n" + prefix).join(rows)


def _luks1_dump(h: dict[str, Any]) -> Iterator[str]:
    yield "LUKS header information"
    yield ""
    yield f"Version:       \t{h['version']}"
    yield f"Cipher name:   \t{h['cipher_name']}"
    yield f"Cipher mode:   \t{h['cipher_mode']}"
    yield f"Hash spec:     \t{h['hash_spec']}"
    yield f"Payload offset:\t{h['payload_offset']}"
    yield f"MK bits:       \t{h['mk_bits']}"
    yield f"MK digest:     \t{_hexgroups(h['mk_digest'], 20)}"
    yield f"MK salt:       \t{_hexgroups(h['mk_salt'], 16, '               ' + chr(9))}"
    yield f"MK iterations: \t{h['mk_iterations']}"
    yield f"UUID:          \t{h['uuid']}"
    yield ""
    for s in h["key_slots"]:
        if not s["enabled"]:
            yield f"Key Slot {s['slot']}: DISABLED"
            continue
        yield f"Key Slot {s['slot']}: ENABLED"
        yield f"\tIterations:         \t{s['iterations']}"
        yield f"\tSalt:               \t{_hexgroups(s['salt'], 16, chr(9) + ' ' * 22 + chr(9))}"
        yield f"\tKey material offset:\t{s['key_material_offset']}"
        yield f"\tAF stripes:            \t{s['af_stripes']}"


def _luks2_hex(h: str) -> str:
    """cryptsetup's hexprint_base64: 16 bytes a line, each followed by a space."""
    return _hexgroups(h, 16, "\t" + " " * 12)


def _luks2_dump(h: dict[str, Any]) -> Iterator[str]:
    """The text of `cryptsetup luksDump` for a LUKS2 header (lib/luks2/luks2_json_metadata.c)."""
    yield "LUKS header information"
    yield f"Version:       \t{h['version']}"
    yield f"Epoch:         \t{h['epoch']}"
    yield f"Metadata area: \t{h['metadata_area']} [bytes]"
    yield f"Keyslots area: \t{h['keyslots_area']} [bytes]"
    yield f"UUID:          \t{h['uuid'] or '(no UUID)'}"
    yield f"Label:         \t{h['label'] or '(no label)'}"
    yield f"Subsystem:     \t{h['subsystem'] or '(no subsystem)'}"
    yield "Flags:       \t" + ("".join(f"{f} " for f in h["flags"]) or "(no flags)")
    yield ""
    if h["requirements"]:
        yield "Requirements:\t" + "".join(f"{r} " for r in h["requirements"])
        yield ""
    yield "Data segments:"
    for s in h["segments"]:
        yield f"  {s['id']}: {s['type']}"
        yield f"\toffset: {s['offset']} [bytes]"
        yield "\tlength: " + ("(whole device)" if s["length"] == "dynamic"
                             else f"{s['length']} [bytes]")
        yield f"\tcipher: {s['cipher'] or '(no SW encryption)'}"
        if s["sector"] is not None:
            yield f"\tsector: {s['sector']} [bytes]"
        if s.get("integrity"):
            yield f"\tintegrity: {s['integrity']}"
        if s.get("flags"):
            yield "\tflags : " + ", ".join(s["flags"])
        yield ""
    yield "Keyslots:"
    for k in h["keyslots"]:
        yield f"  {k['id']}: {k['type']}{' (unbound)' if k['unbound'] else ''}"
        yield f"\tKey:        {k['key_bits']} bits"
        yield f"\tPriority:   {k['priority']}"
        if k["type"] == "luks2":
            yield f"\tCipher:     {k['cipher']}"
            yield f"\tCipher key: {k['cipher_key_bits']} bits"
            yield f"\tPBKDF:      {k['pbkdf']}"
            if k["pbkdf"] == "pbkdf2":
                yield f"\tHash:       {k['hash']}"
                yield f"\tIterations: {k['iterations']}"
            else:
                yield f"\tTime cost:  {k['time_cost']}"
                yield f"\tMemory:     {k['memory']}"
                yield f"\tThreads:    {k['threads']}"
            yield f"\tSalt:       {_luks2_hex(k['salt'])}"
            yield f"\tAF stripes: {k['af_stripes']}"
            yield f"\tAF hash:    {k['af_hash']}"
            yield f"\tArea offset:{k['area_offset']} [bytes]"
            yield f"\tArea length:{k['area_length']} [bytes]"
        for d in k["digest_ids"]:
            yield f"\tDigest ID:  {d}"
    yield "Tokens:"
    for t in h["tokens"]:
        yield f"  {t['id']}: {t['type']}"
        for ks in t["keyslots"]:
            yield f"\tKeyslot:    {ks}"
    yield "Digests:"
    for d in h["digests"]:
        yield f"  {d['id']}: {d['type']}"
        if d["type"] == "pbkdf2":
            yield f"\tHash:       {d['hash']}"
            yield f"\tIterations: {d['iterations']}"
            yield f"\tSalt:       {_luks2_hex(d['salt'])}"
            yield f"\tDigest:     {_luks2_hex(d['digest'])}"
