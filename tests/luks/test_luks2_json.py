"""The LUKS2 JSON validator and parser never fail with anything but a LukspackError: random
edits of a valid header (checksums fixed, so the JSON checks run) are accepted or refused."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lukspack.errors import FormatError, LukspackError, UnsupportedError
from lukspack.luks import luks2, luks2_format
from lukspack.luks import luks2_json as lj
from lukspack.luks.kdf import SlotKdf

META = 16384
_BASE = luks2_format.format_luks2(bytes(range(64)), b"pw", SlotKdf("argon2id", 4, "sha256", 32, 1),
                                  digest_iterations=1000, data_offset=2 * META + (1 << 20))
_JSON = luks2.read_header(lambda o, n: _BASE[o : o + n], len(_BASE), "x").json

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**65, 2**65) | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.sampled_from(["0", "1", "512", "4096", "dynamic", "luks2",
                                              "pbkdf2", "argon2i", "raw", "crypt", "-1", ""]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


PATHS = [p for p in _paths(_JSON) if p] + [  # optional fields that are not there yet
    ("keyslots", "0", "priority"), ("keyslots", "1"), ("tokens", "0"), ("digests", "1"),
    ("segments", "1"), ("segments", "0", "flags"), ("segments", "0", "integrity"),
    ("config", "flags"), ("config", "requirements"), ("keyslots", "0", "kdf", "memory2")]


def _exercise(data: bytes) -> None:
    """Everything lukspack does with a header that parsed: only LukspackError may come out."""
    try:
        hdr = luks2.read_header(lambda o, n: data[o : o + n], len(data), "x")
        hdr.dump()
        hdr.segment()
        hdr.volume_key_size()
        for k in hdr.active_keyslots():
            hdr.keyslot(k)
        hdr.segment_digest()
    except LukspackError:
        pass


def _with_json(j: dict[str, Any] | bytes) -> bytes:
    text = j if isinstance(j, bytes) else lj.dumps(j).encode()
    b = luks2.BinaryHeader(hdr_size=META, seqid=1, uuid="u")
    area = text[: META - 4096] + bytes(max(0, META - 4096 - len(text)))
    out = bytearray(_BASE)
    for secondary, at in ((False, 0), (True, META)):
        raw = luks2.BinaryHeader(**{**b.__dict__, "magic": luks2.MAGIC_2ND if secondary
                                    else luks2.MAGIC_1ST, "hdr_offset": at}).pack()
        csum = luks2.checksum("sha256", raw, area)
        raw = raw[:448] + csum + bytes(32) + raw[512:]
        out[at : at + META] = raw + area
    return bytes(out)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=json_values | st.just(KeyError))
def test_any_field_replaced(path: tuple, value: Any) -> None:
    j = copy.deepcopy(_JSON)
    obj = j
    for k in path[:-1]:
        obj = obj[k]
    if value is KeyError:
        if path[-1] in obj:
            del obj[path[-1]]
    else:
        obj[path[-1]] = value
    _exercise(_with_json(j))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(at=st.integers(0, len(lj.dumps(_JSON)) + 8), junk=st.binary(min_size=1, max_size=4))
def test_any_bytes_overwritten(at: int, junk: bytes) -> None:
    text = bytearray(lj.dumps(_JSON).encode() + bytes(16))
    text[at : at + len(junk)] = junk
    _exercise(_with_json(bytes(text)))


def test_round_trip_is_exact() -> None:
    data = _with_json(_JSON)
    hdr = luks2.read_header(lambda o, n: data[o : o + n], len(data), "x")
    assert hdr.json == _JSON and json.loads(lj.dumps(_JSON)) == _JSON


@pytest.mark.parametrize("text", [b"[]", b"{\"a\":1}x", b"{", b"\xff{}", b"{}" + b"\n"])
def test_parse_json_area_refusals(text: bytes) -> None:
    with pytest.raises(lj.InvalidMetadata):
        lj.parse_json_area(text + bytes(16))


@pytest.mark.parametrize("name", ["disk.img", "vm: disk.img", "a: b: c.img"])
def test_a_keyslot_lukspack_cannot_try_is_a_typed_error(name: str) -> None:
    """The reason a slot is not tried comes from the error's fields, not from its text split on
    ': ' (which cut a file name holding ': ' in two)."""
    j = copy.deepcopy(_JSON)
    j["keyslots"]["0"]["af"]["stripes"] = 3999
    data = _with_json(j)
    hdr = luks2.read_header(lambda o, n: data[o : o + n], len(data), name)
    with pytest.raises(luks2.UnsupportedKeyslot) as e:
        hdr.keyslot("0", name)
    assert isinstance(e.value, UnsupportedError)
    assert (e.value.image, e.value.slot) == (name, "0")
    assert e.value.reason == "LUKS2 keyslot 0 has 3999 AF stripes, not 4000"
    assert str(e.value) == f"{name}: {e.value.reason}"
    assert hdr.metadata(name).skipped == (e.value.reason,)


def test_a_malformed_keyslot_is_a_format_error_with_fields() -> None:
    j = copy.deepcopy(_JSON)
    j["keyslots"]["0"]["kdf"]["salt"] = "not base64!"
    data = _with_json(j)
    hdr = luks2.read_header(lambda o, n: data[o : o + n], len(data), "x: y")
    with pytest.raises(luks2.MalformedKeyslot) as e:
        hdr.keyslot("0", "x: y")
    assert isinstance(e.value, FormatError) and e.value.reason.startswith("LUKS2 keyslot 0 salt")
    assert hdr.metadata("x: y").skipped == (e.value.reason,)
