"""The OVA's own tar reader on hostile headers: every one is refused with one line (FormatError),
never a Python error; and on what Python's tarfile writes (a second tar implementation), it finds
the same members at the same offsets."""

from __future__ import annotations

import io
import tarfile

import pytest

from lukspack.errors import FormatError
from lukspack.images.ova import MAX_MEMBERS, tar_members


def header(name: bytes, size: bytes, kind: bytes = b"0") -> bytes:
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"0000644\0"
    h[124:136] = size.ljust(12, b"\0")[:12]
    h[156:157] = kind
    h[257:263] = b"ustar\0"
    h[148:156] = b" " * 8
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)


def members(data: bytes) -> list:
    return tar_members("t.tar", lambda o, n: data[o : o + n], len(data))


def pax(records: bytes) -> bytes:
    body = records.ljust(-(-len(records) // 512) * 512, b"\0")
    return header(b"././@PaxHeader", f"{len(records):011o}".encode(), b"x") + body


def record(kv: bytes) -> bytes:
    """A pax record with its correct length prefix."""
    n = len(kv) + 2
    while len(f"{n} ".encode()) + len(kv) + 1 != n:
        n += 1
    return f"{n} ".encode() + kv + b"\n"


HOSTILE = {
    "size not octal": header(b"a", b"0000000009x"),
    "negative base-256 size": header(b"a", b"\xff" * 12),
    "size past the end": header(b"a", b"77777777777") + bytes(1024),
    "pax size of 60000 digits": pax(record(b"size=" + b"9" * 60000)) + header(b"a", b"0"),
    "pax size not ascii": pax(record("size=²".encode())) + header(b"a", b"0"),
    "pax record length of 5000 digits": pax(b"9" * 5000 + b" path=x\n") + header(b"a", b"0"),
    "pax record without =": pax(b"9 pathx\n") + header(b"a", b"0"),
    "long name header of 1 MiB": header(b"././@LongLink", f"{1 << 20:011o}".encode(), b"L")
    + bytes(1 << 20),
    "second header damaged": header(b"a", b"0") + b"\x01" + header(b"b", b"0")[1:],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_are_refused_in_one_line(case: str) -> None:
    with pytest.raises(FormatError) as e:
        members(HOSTILE[case] + bytes(1024))
    assert "\n" not in str(e.value) and str(e.value).startswith("t.tar: ")


def test_too_many_members() -> None:
    data = header(b"a", b"0") * (MAX_MEMBERS + 1) + bytes(1024)
    with pytest.raises(FormatError, match=f"more than {MAX_MEMBERS} members"):
        members(data)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_same_members_as_python_tarfile(fmt: int) -> None:
    buf = io.BytesIO()
    names = ["vm.ovf", "d" * 150 + "/long-name-disk.vmdk", "ünïcode.vmdk", "empty"]
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for i, name in enumerate(names):
            data = bytes([i + 1]) * (i * 700)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        want = [(m.name, m.offset_data, m.size) for m in t.getmembers()]
    got = [(m.name, m.offset, m.size) for m in members(raw)]
    assert got == want
