"""Opening a LUKS container of either version: read the magic and version once, parse that
version's header, and build the `LuksVolume` (volume.py) that verify, decrypt and info use."""

from __future__ import annotations

import os

from lukspack.crypto.sector import check_cipher
from lukspack.errors import FormatError, LukspackError, UnsupportedError
from lukspack.luks import luks1, luks2
from lukspack.luks.volume import LuksVolume, ReadAt, bytes_reader, file_reader

MIN_SIZE = 1024


def open_luks(path: str, fd: int, read_at: ReadAt | None = None,
              size: int | None = None) -> LuksVolume:
    """Parse the LUKS header of an open file (or of a region given by read_at and size)."""
    if read_at is None:
        read_at = file_reader(fd, path)
    if size is None:
        size = os.lseek(fd, 0, os.SEEK_END)
    return open_region(path, read_at, size)


def open_luks_bytes(name: str, data: bytes | bytearray | memoryview,
                    size: int | None = None) -> LuksVolume:
    """Parse a LUKS header held in memory: `data` is the header area (the engine's prefix before
    it is placed), `size` the size of the whole container (default: len(data)), which sets the
    payload size a dynamic LUKS2 segment or a LUKS1 payload gets."""
    return open_region(name, bytes_reader(data, name), len(data) if size is None else size)


def open_luks_path(path: str) -> tuple[int, LuksVolume]:
    """Open path read-only and parse its LUKS header; the caller closes the fd."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise LukspackError(f"{path}: cannot open: {e.strerror}") from None
    try:
        return fd, open_luks(path, fd)
    except BaseException:
        os.close(fd)
        raise


def open_region(path: str, read_at: ReadAt, size: int) -> LuksVolume:
    """The volume whose header starts at read_at offset 0, in a container of `size` bytes."""
    if size < MIN_SIZE:
        raise FormatError(f"{path}: too small for a LUKS header ({size} bytes)")
    head = read_at(0, 8)
    magic, version = head[:6], int.from_bytes(head[6:8], "big")
    if magic != luks1.MAGIC:
        if magic == luks1.REENCRYPT_MAGIC or luks2.find_secondary(read_at, size) is None:
            raise FormatError(f"{path}: {luks1.describe_magic(magic)}")
        version = 2  # a LUKS2 image with its primary header lost: the secondary opens it
    if version == 1:
        return _luks1(path, read_at, size)
    if version == 2:
        return _luks2(path, read_at, size)
    raise FormatError(f"{path}: unknown LUKS version {version} (1 and 2 exist)")


def _luks1(path: str, read_at: ReadAt, size: int) -> LuksVolume:
    hdr = luks1.Luks1Header.unpack(read_at(0, luks1.HEADER_SIZE), path)
    offset = hdr.payload_offset * luks1.SECTOR
    if offset > size:
        raise FormatError(f"{path}: LUKS1 payloadOffset {hdr.payload_offset} is past the end "
                          f"of the image (size {size})")
    problem: LukspackError | None = None
    try:
        check_cipher(hdr.cipher_name, hdr.cipher_mode, hdr.key_bytes)
    except UnsupportedError as e:
        problem = UnsupportedError(f"{path}: LUKS1 cipher: {e}")
    return LuksVolume(path, 1, hdr, hdr.cipher_name, hdr.cipher_mode, hdr.key_bytes, offset,
                      size - offset, luks1.SECTOR, read_at, problem)


def _luks2(path: str, read_at: ReadAt, size: int) -> LuksVolume:
    hdr = luks2.read_header(read_at, size, path)
    problem: LukspackError | None = None
    try:
        p = hdr.payload(size, path)
    except LukspackError as e:  # the header is valid (luksDump shows it); its payload is not ours
        p, problem = hdr.payload_guess(size), e
    return LuksVolume(path, 2, hdr, p.cipher_name, p.cipher_mode, p.key_bytes, p.offset, p.size,
                      p.sector_size, read_at, problem)
