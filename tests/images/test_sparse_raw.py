"""Sparse RAW sources (issue 10): holes found with SEEK_DATA/SEEK_HOLE are unallocated extents,
never read; `info` reports the allocated bytes; per-chunk extents() is cheap on a 40 GiB file;
a file with more data runs than one map window holds stays exact and bounded in memory."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from lukspack.images import open_image
from lukspack.images.raw import MAP_WINDOW_RUNS
from tests.helpers import MiB, qemu_img

SEED_SIZE = 42949017600  # the example: not a whole number of MiB
CHUNK = 4 * MiB
DATA = [(0, 1 * MiB), (7 * MiB, 5 * MiB), (20 << 30, 8 * MiB), (SEED_SIZE - 8 * MiB, 8 * MiB)]


def supports_seek_data(directory: Path) -> bool:
    probe = directory / "probe"
    with open(probe, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(4 * MiB)
        f.write(b"x" * 4096)
    fd = os.open(probe, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_DATA) >= 4 * MiB - 4096
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()


def holes_dir(d: Path) -> Path:
    """d, or where d's file system does not report holes (SEEK_DATA is optional: 9p, some FUSE
    and overlay set-ups), a directory on tmpfs, which does; a skip says that neither does."""
    if supports_seek_data(d):
        return d
    import tempfile

    shm = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else None
    if shm is not None and supports_seek_data(shm):
        return shm
    pytest.skip(f"neither the file system of {d} nor /dev/shm reports holes through SEEK_DATA: "
                "hole detection cannot be observed on this machine")


@pytest.fixture(scope="module")
def sparse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = holes_dir(tmp_path_factory.mktemp("sparse"))
    p = d / "disk.raw"
    with open(p, "wb") as f:
        f.truncate(SEED_SIZE)
        for i, (off, n) in enumerate(DATA):
            f.seek(off)
            f.write(bytes([0x55, 0xAA, i + 1, 0x17]) * (n // 4))
    return p


def test_info_reports_the_allocated_bytes(sparse: Path) -> None:
    want = sum(n for _, n in DATA)  # 22 MiB
    with open_image(str(sparse)) as img:
        info = img.info()
    assert info["virtual_size"] == SEED_SIZE
    assert want <= info["allocated_size"] <= want + 1 * MiB, info
    assert (sparse.stat().st_blocks * 512) >= info["allocated_size"] - 64 * 1024


def test_extents_per_chunk_are_cheap_and_exact(sparse: Path) -> None:
    with open_image(str(sparse)) as img:
        started = time.perf_counter()
        allocated = []
        for off in range(0, SEED_SIZE, CHUNK):
            for e in img.extents(off, off + CHUNK):
                assert off <= e.offset and e.offset + e.length <= min(off + CHUNK, SEED_SIZE)
                if e.allocated:
                    allocated.append((e.offset, e.length))
        seconds = time.perf_counter() - started
        lseeks = img.holes.lseeks
    # 10240 chunks of a 40 GiB disk: the hole map is walked once (two lseek per data run plus
    # the final SEEK_DATA), not per chunk
    assert lseeks <= 2 * len(DATA) + 4, lseeks
    assert seconds < 3.0, seconds
    merged: list[list[int]] = []
    for off, n in allocated:
        if merged and merged[-1][0] + merged[-1][1] == off:
            merged[-1][1] += n
        else:
            merged.append([off, n])
    assert [tuple(m) for m in merged] == DATA


def test_holes_are_never_read(sparse: Path, tmp_path: Path) -> None:
    """Reading every chunk that holds data reads exactly the data, and the right bytes."""
    buf = bytearray(CHUNK)
    digest = hashlib.sha256()
    with open_image(str(sparse)) as img:
        for off in range(0, SEED_SIZE, CHUNK):
            if any(e.allocated for e in img.extents(off, off + CHUNK)):
                n = min(CHUNK, SEED_SIZE - off)
                img.read_into(off, memoryview(buf)[:n])
                digest.update(buf[:n])
        assert img.bytes_read == sum(n for _, n in DATA)
    chunks = sorted({c for off, n in DATA for c in range(off // CHUNK * CHUNK, off + n, CHUNK)})
    want = hashlib.sha256()
    with open(sparse, "rb") as f:
        for off in chunks:
            f.seek(off)
            want.update(f.read(CHUNK))
    out = qemu_img("map", "--output=json", "-f", "raw", str(sparse)).stdout.decode()
    assert '"data": true' in out and '"data": false' in out  # qemu sees the same holes


def test_more_runs_than_one_window(tmp_path: Path) -> None:
    """3 windows of data runs: exact extents, memory bounded by the window."""
    runs = MAP_WINDOW_RUNS * 3 + 17
    p = holes_dir(tmp_path) / "many.raw"
    step = 64 * 1024
    with open(p, "wb") as f:
        f.truncate(runs * step + step)
        for i in range(runs):
            f.seek(i * step)
            f.write(b"\x01" * 4096)
    with open_image(str(p)) as img:
        data = [(e.offset, e.length) for e in img.extents() if e.allocated]
        assert data == [(i * step, 4096) for i in range(runs)]
        assert len(img.holes.starts) <= MAP_WINDOW_RUNS
        assert img.allocated_size() == runs * 4096
        # chunked, in order, as the engine asks: each run looked up once
        before = img.holes.lseeks
        total = 0
        for off in range(0, img.virtual_size, CHUNK):
            total += sum(e.length for e in img.extents(off, off + CHUNK) if e.allocated)
        assert total == runs * 4096
        assert img.holes.lseeks - before <= 2 * runs + 8
        # a range in the middle, out of order, is still exact
        mid = [(e.offset, e.length, e.allocated) for e in img.extents(step * 5000 + 100,
                                                                       step * 5001 + 200)]
        assert mid == [(step * 5000 + 100, 3996, True), (step * 5000 + 4096, step - 4096, False),
                       (step * 5001, 200, True)]


def test_a_fully_written_file_is_one_allocated_extent(tmp_path: Path) -> None:
    p = tmp_path / "full.raw"
    p.write_bytes(os.urandom(3 * MiB + 512))
    with open_image(str(p)) as img:
        assert [(e.offset, e.length, e.allocated) for e in img.extents()] == \
            [(0, 3 * MiB + 512, True)]


def test_a_block_device_is_one_allocated_extent(tmp_path: Path) -> None:
    """A block device has no holes to report (SEEK_DATA is the generic one, or EINVAL): the
    whole device is data, as before. A read-only loop device (tests.helpers.loop_device: it
    skips only where the machine cannot have one, and says why)."""
    from tests.helpers import loop_device

    backing = tmp_path / "backing.raw"
    data = os.urandom(1 * MiB)
    with open(backing, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(4 * MiB)
        f.write(data)
    with loop_device(backing, read_only=True) as dev, open_image(dev) as img:
        assert img.format_name == "raw" and img.virtual_size == 8 * MiB
        assert [(e.offset, e.length, e.allocated) for e in img.extents()] == \
            [(0, 8 * MiB, True)]
        buf = bytearray(1 * MiB)
        img.read_into(4 * MiB, buf)
        assert bytes(buf) == data
        assert img.warnings  # zeros at the start: no partition table
