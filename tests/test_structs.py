"""structs.Layout: a struct format with named fields, refused when the two disagree."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from lukspack.images.vhd import DYN_HEADER, FOOTER, make_dynamic_header, make_footer, vhd_checksum
from lukspack.structs import Layout


class Pair(NamedTuple):
    magic: bytes
    size: int


def test_named_round_trip() -> None:
    pair = Layout(">4sQ4x", Pair)
    raw = pair.pack(Pair(b"ABCD", 7))
    assert pair.size == len(raw) == 16
    assert pair.unpack(b"xx" + raw, 2) == Pair(b"ABCD", 7)
    assert pair.unpack(raw).size == 7


@pytest.mark.parametrize("fmt", [">4s", ">4sQI"])
def test_a_format_that_does_not_match_its_record_is_refused(fmt: str) -> None:
    with pytest.raises(TypeError, match="values"):
        Layout(fmt, Pair)


def test_vhd_structures_by_name() -> None:
    f = FOOTER.unpack(make_footer(8 << 20))
    assert (f.cookie, f.current_size, f.disk_type) == (b"conectix", 8 << 20, 2)
    assert f.checksum == vhd_checksum(FOOTER.pack(f), 64)
    h = DYN_HEADER.unpack(make_dynamic_header(1536, 4, 2 << 20))
    assert (h.cookie, h.table_offset, h.max_table_entries, h.block_size) == \
        (b"cxsparse", 1536, 4, 2 << 20)
    assert h.checksum == vhd_checksum(DYN_HEADER.pack(h), 36)
