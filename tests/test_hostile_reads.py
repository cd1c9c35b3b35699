"""Reads sized by a header field are checked against the file before any buffer is allocated
(docs/hostile-inputs.md): a 2**60-byte request fails at once with one line, no MemoryError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lukspack.errors import FormatError
from lukspack.images.raw import RawImage
from lukspack.images.vmdk_extents import File
from lukspack.luks.volume import file_reader


@pytest.fixture
def small(tmp_path: Path) -> Path:
    p = tmp_path / "small.img"
    p.write_bytes(bytes(4096))
    return p


def test_image_pread_checks_size_before_allocating(small: Path) -> None:
    fd = os.open(small, os.O_RDONLY)
    img = RawImage(str(small), fd)
    try:
        with pytest.raises(FormatError, match=r"small.img: BAT \(1152921504606846976 bytes at "
                                              r"offset 0\) is past the end of the file \(size 4096\)"):
            img.pread(0, 1 << 60, "BAT")
        assert img.pread(4000, 96) == bytes(96)
    finally:
        img.close()


def test_vmdk_extent_pread_checks_size_before_allocating(small: Path) -> None:
    fd = os.open(small, os.O_RDONLY)
    img = RawImage(str(small), fd)
    try:
        f = File(img, str(small), img.source)
        with pytest.raises(FormatError, match="grain directory .* is past the end"):
            f.pread(512, 1 << 60, "grain directory")
    finally:
        img.close()


def test_luks_reader_checks_size_before_allocating(small: Path) -> None:
    fd = os.open(small, os.O_RDONLY)
    try:
        read_at = file_reader(fd, str(small))
        with pytest.raises(FormatError, match="1152921504606846976 bytes at offset 4096 are past"):
            read_at(4096, 1 << 60)
        assert read_at(0, 4096) == bytes(4096)
    finally:
        os.close(fd)
