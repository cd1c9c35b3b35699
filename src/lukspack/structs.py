"""On-disk structures with named fields: a `struct` format paired with a NamedTuple.

    class DynHeader(NamedTuple):
        cookie: bytes
        data_offset: int
        ...

    DYN_HEADER = Layout(">8sQ...", DynHeader)
    h = DYN_HEADER.unpack(raw)            # h.table_offset, never h[2]
    raw = DYN_HEADER.pack(h._replace(checksum=0))

The byte order is declared once, in the format; pad bytes (`x`) carry no field. A format whose
value count differs from the record's fields is refused when the layout is made (import time).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Generic, TypeVar

R = TypeVar("R", bound=tuple[Any, ...])


class Layout(Generic[R]):
    """One structure: its `struct` format and the record (a NamedTuple class) naming its fields."""

    def __init__(self, fmt: str, record: Callable[..., R]) -> None:
        self.struct = struct.Struct(fmt)
        self.record = record
        values = self.struct.unpack(bytes(self.struct.size))
        try:
            made = record(*values)
        except TypeError as e:
            raise TypeError(f"layout {fmt!r} has {len(values)} values: {e}") from None
        if len(made) != len(values):
            raise TypeError(f"layout {fmt!r} has {len(values)} values, its record {len(made)}")

    @property
    def size(self) -> int:
        return self.struct.size

    def unpack(self, data: bytes | bytearray | memoryview, offset: int = 0) -> R:
        """The record at offset (data may be longer than the structure)."""
        return self.record(*self.struct.unpack_from(data, offset))

    def pack(self, record: R) -> bytes:
        return self.struct.pack(*record)
