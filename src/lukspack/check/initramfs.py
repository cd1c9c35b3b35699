"""The file names inside an initramfs: concatenated cpio archives (newc), the first possibly an
uncompressed early-microcode one, the rest gzip, xz, zstd, lz4 (the kernel's legacy frames),
bzip2 or lzma compressed."""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib

from lukspack.errors import FormatError

CPIO_MAGICS = (b"070701", b"070702")
CPIO_HEADER = 110
TRAILER = "TRAILER!!!"
GZIP = b"\x1f\x8b"
XZ = b"\xfd7zXZ\x00"
ZSTD = b"\x28\xb5\x2f\xfd"
LZ4_LEGACY = b"\x02\x21\x4c\x18"
LZ4_FRAME = b"\x04\x22\x4d\x18"
BZIP2 = b"BZh"
LZMA = b"\x5d\x00\x00"
LZ4_LEGACY_BLOCK = 8 << 20
MAX_UNPACKED = 2 << 30


def _parse_cpio(data: bytes | memoryview, pos: int, names: list[str]) -> int:
    """Parse one newc archive at pos; returns the offset after its trailer."""
    while True:
        hdr = bytes(data[pos:pos + CPIO_HEADER])
        if len(hdr) < CPIO_HEADER or hdr[:6] not in CPIO_MAGICS:
            raise FormatError(f"cpio header at {pos} has magic {hdr[:6]!r}")
        try:
            fields = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise FormatError(f"cpio header at {pos} has a field that is not hexadecimal") from None
        filesize, namesize = fields[6], fields[11]
        name_start = pos + CPIO_HEADER
        name = bytes(data[name_start:name_start + namesize]).rstrip(b"\0").decode("utf-8", "replace")
        pos = (name_start + namesize + 3) & ~3
        pos = (pos + filesize + 3) & ~3
        if name == TRAILER:
            return pos
        names.append(name)


def _decompress(data: memoryview) -> tuple[str, bytes]:
    head = bytes(data[:6])
    if head.startswith(GZIP):
        return "gzip", zlib.decompressobj(31).decompress(data, MAX_UNPACKED)
    if head.startswith(XZ):
        return "xz", lzma.LZMADecompressor().decompress(data, MAX_UNPACKED)
    if head.startswith(ZSTD):
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(bytes(data)) as r:
            return "zstd", r.read(MAX_UNPACKED)
    if head.startswith(LZ4_LEGACY):
        import lz4.block

        out, pos = bytearray(), 4
        while pos + 4 <= len(data):
            (n,) = struct.unpack_from("<I", data, pos)
            if n == struct.unpack("<I", LZ4_LEGACY)[0] or n == 0 or pos + 4 + n > len(data):
                break  # a new legacy stream, padding or the end
            out += lz4.block.decompress(bytes(data[pos + 4:pos + 4 + n]),
                                        uncompressed_size=LZ4_LEGACY_BLOCK)
            pos += 4 + n
        return "lz4", bytes(out)
    if head.startswith(LZ4_FRAME):
        import lz4.frame

        return "lz4", lz4.frame.decompress(bytes(data))
    if head.startswith(BZIP2):
        return "bzip2", bz2.BZ2Decompressor().decompress(data)
    if head.startswith(LZMA):
        return "lzma", lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data, MAX_UNPACKED)
    raise FormatError(f"unknown initramfs compression (first bytes {head.hex()})")


def _skip_padding(buf: bytes | memoryview, pos: int) -> int:
    """The first non-zero byte from pos (archives are padded with zeros between and after)."""
    while pos < len(buf) and buf[pos] == 0:
        pos += 1
    return pos


def list_initramfs(data: bytes) -> tuple[list[str], list[str]]:
    """(file names, the archives' formats in order: 'cpio' for uncompressed ones)."""
    names: list[str] = []
    formats: list[str] = []
    mv = memoryview(data)
    pos = 0
    while (pos := _skip_padding(data, pos)) < len(data):
        if bytes(mv[pos:pos + 6]) in CPIO_MAGICS:
            pos = _parse_cpio(mv, pos, names)
            formats.append("cpio")
            continue
        try:
            fmt, unpacked = _decompress(mv[pos:])
        except Exception as e:  # zlib.error, LZMAError, ZstdError, lz4's RuntimeError...: bad data
            if isinstance(e, FormatError):
                raise
            raise FormatError(f"initramfs: cannot decompress the archive at offset {pos}: {e}") from None
        formats.append(fmt)
        upos = 0
        while (upos := _skip_padding(unpacked, upos)) < len(unpacked):
            upos = _parse_cpio(unpacked, upos, names)
        break  # the compressed archive runs to the end (what follows is the stream's padding)
    return names, formats
