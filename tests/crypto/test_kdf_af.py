"""PBKDF2 known answers (RFC 6070, RFC 7914), calibration, and the AF splitter."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lukspack.errors import UnsupportedError
from lukspack.luks import af
from lukspack.luks.kdf import check_hash, pbkdf2, pbkdf2_cost
from tests.vectors import load

PBKDF2 = load("pbkdf2.txt")


@pytest.mark.parametrize("v", PBKDF2, ids=[f"{v['Hash']}-{v['Iterations']}" for v in PBKDF2])
def test_pbkdf2_known_answers(v: dict[str, str]) -> None:
    dk = bytes.fromhex(v["DK"])
    got = pbkdf2(v["Hash"], v["Password"].encode(), v["Salt"].encode(), int(v["Iterations"]),
                 len(dk))
    assert bytes(got) == dk


def test_pbkdf2_cost_follows_iter_time_and_minimums() -> None:
    fast = pbkdf2_cost("sha256", 64, iter_time_ms=100)
    slow = pbkdf2_cost("sha256", 64, iter_time_ms=400)
    assert fast.slot_iterations >= 1000 and fast.digest_iterations >= 1000
    assert 2 * fast.slot_iterations < slow.slot_iterations
    assert pbkdf2_cost("sha256", 64, force_iterations=1234).slot_iterations == 1234
    with pytest.raises(UnsupportedError):
        pbkdf2_cost("sha256", 64, force_iterations=10)


def test_unknown_hash_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedError, match="whirlpool"):
        check_hash("whirlpool")


def _reference_merge(material: bytes, key_bytes: int, stripes: int, hash_name: str) -> bytes:
    """AFmerge written out from the LUKS1 specification (section 2.4), block by block."""
    size = hashlib.new(hash_name).digest_size

    def diffuse(block: bytes) -> bytes:
        out = b""
        for i in range(-(-len(block) // size)):
            piece = block[i * size : (i + 1) * size]
            out += hashlib.new(hash_name, i.to_bytes(4, "big") + piece).digest()[: len(piece)]
        return out

    d = bytes(key_bytes)
    for i in range(stripes - 1):
        s = material[i * key_bytes : (i + 1) * key_bytes]
        d = diffuse(bytes(x ^ y for x, y in zip(d, s, strict=True)))
    last = material[(stripes - 1) * key_bytes : stripes * key_bytes]
    return bytes(x ^ y for x, y in zip(d, last, strict=True))


@settings(max_examples=30, deadline=None)
@given(key=st.binary(min_size=16, max_size=64), stripes=st.integers(1, 50),
       hash_name=st.sampled_from(["sha1", "sha256", "sha512"]))
def test_af_split_merge_round_trip(key: bytes, stripes: int, hash_name: str) -> None:
    material = af.split(key, stripes, hash_name)
    assert len(material) == len(key) * stripes
    assert bytes(af.merge(material, len(key), stripes, hash_name)) == key
    assert _reference_merge(bytes(material), len(key), stripes, hash_name) == key


def test_af_material_changes_with_every_stripe() -> None:
    key = os.urandom(64)
    material = bytearray(af.split(key, 4000, "sha256"))
    material[5 * 64] ^= 1  # one bit in stripe 5
    assert bytes(af.merge(material, 64, 4000, "sha256")) != key
