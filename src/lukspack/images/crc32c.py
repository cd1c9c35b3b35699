"""CRC-32C (Castagnoli), the checksum of VHDX headers, region tables and log entries.

Table-driven in pure Python: VHDX checksums cover at most a few hundred KiB per image open, a few
milliseconds per 64 KiB, so no dependency is worth adding for it.
"""

from __future__ import annotations

_POLY = 0x82F63B78  # reflected 0x1EDC6F41


def _table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C of data; crc continues a previous result."""
    c = crc ^ 0xFFFFFFFF
    table = _TABLE
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def crc32c_zeroed(data: bytes | bytearray | memoryview, at: int) -> int:
    """CRC-32C of data with the 4-byte checksum field at `at` taken as zero."""
    mv = memoryview(data)
    return crc32c(mv[at + 4 :], crc32c(b"\0\0\0\0", crc32c(mv[:at])))
