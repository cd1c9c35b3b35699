"""LUKS anti-forensic information splitter (AFsplit / AFmerge), as in cryptsetup's lib/luks1/af.c.

The key is spread over `stripes` blocks: stripes 0..n-2 are random, the running digest d starts at
zero and becomes diffuse(d xor s_i) after each; the last stripe is d xor key. diffuse() hashes each
digest-sized block i of d as H(be32(i) || block), the last block truncated to what is left.
"""

from __future__ import annotations

import hashlib
import secrets


def _xor_into(acc: bytearray, other: bytes | bytearray | memoryview) -> None:
    n = len(acc)
    acc[:] = (int.from_bytes(acc, "little") ^ int.from_bytes(other, "little")).to_bytes(n, "little")


def _diffuse(block: bytearray, hash_name: str) -> None:
    size = hashlib.new(hash_name).digest_size
    out = bytearray()
    for i, start in enumerate(range(0, len(block), size)):
        piece = block[start : start + size]
        h = hashlib.new(hash_name, i.to_bytes(4, "big"))
        h.update(piece)
        out += h.digest()[: len(piece)]
    block[:] = out


def split(key: bytes | bytearray, stripes: int, hash_name: str) -> bytearray:
    """Split key into len(key) * stripes bytes of anti-forensic material."""
    if stripes < 1:
        raise ValueError(f"AF stripes must be at least 1, not {stripes}")
    n = len(key)
    out = bytearray(secrets.token_bytes(n * (stripes - 1)))
    d = bytearray(n)
    for i in range(stripes - 1):
        _xor_into(d, memoryview(out)[i * n : (i + 1) * n])
        _diffuse(d, hash_name)
    _xor_into(d, key)
    out += d
    d[:] = bytes(n)
    return out


def merge(material: bytes | bytearray | memoryview, key_bytes: int, stripes: int,
          hash_name: str) -> bytearray:
    """Recover the key from key_bytes * stripes bytes of AF material."""
    mv = memoryview(material)
    if len(mv) < key_bytes * stripes:
        raise ValueError(f"AF material is {len(mv)} bytes, needs {key_bytes * stripes}")
    d = bytearray(key_bytes)
    for i in range(stripes - 1):
        _xor_into(d, mv[i * key_bytes : (i + 1) * key_bytes])
        _diffuse(d, hash_name)
    _xor_into(d, mv[(stripes - 1) * key_bytes : stripes * key_bytes])
    return d
