"""extents() of every reader on a 40 GiB disk with a few MiB of data (issue 10): exactly the
ranges `qemu-img map` says hold data (unallocated blocks, grains and clusters, and qcow2 zero
clusters, are allocated=False), and cheap when the engine asks chunk by chunk."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lukspack.images import open_image
from tests.helpers import MiB, qemu_img, run, tool

GiB = 1 << 30
SIZE = 40 * GiB
CHUNK = 4 * MiB
DATA = [(0, 1 * MiB), (7 * MiB, 3 * MiB), (20 * GiB, 2 * MiB), (SIZE - 1 * MiB, 1 * MiB)]
FORMATS = {  # name: (qemu format, qemu-img convert options)
    "vhd": ("vpc", ["-o", "force_size=on"]),
    "vmdk": ("vmdk", []),
    "vmdk-stream": ("vmdk", ["-o", "subformat=streamOptimized"]),
    "qcow2": ("qcow2", []),
    "qcow2-zero": ("qcow2", []),
    "vhdx": ("vhdx", []),
}


@pytest.fixture(scope="module")
def sparse_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("big") / "disk.raw"
    with open(p, "wb") as f:
        f.truncate(SIZE)
        for off, n in DATA:
            f.seek(off)
            f.write(b"\x5a" * n)
    return p


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for off, n in ranges:
        if out and out[-1][0] + out[-1][1] == off:
            out[-1][1] += n
        else:
            out.append([off, n])
    return [(a, b) for a, b in out]


def qemu_data(image: Path, fmt: str) -> list[tuple[int, int]]:
    out = json.loads(qemu_img("map", "--output=json", "-f", fmt, str(image)).stdout)
    return merged([(m["start"], m["length"]) for m in out if m["data"]])


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_extents_are_exact_and_cheap(name: str, sparse_raw: Path, tmp_path: Path) -> None:
    qfmt, opts = FORMATS[name]
    image = tmp_path / f"disk.{name}"
    qemu_img("convert", "-f", "raw", "-O", qfmt, *opts, str(sparse_raw), str(image))
    if name == "qcow2-zero":  # zero clusters (L2 bit 0) over allocated and unallocated ones
        run([tool("qemu-io"), "-f", "qcow2", "-c", "write -z 7M 1M", "-c", "write -z 30G 64k",
             str(image)])
    with open_image(str(image)) as img:
        started = time.perf_counter()
        ours = []
        for off in range(0, img.virtual_size, CHUNK):
            ours += [(e.offset, e.length) for e in img.extents(off, off + CHUNK) if e.allocated]
        seconds = time.perf_counter() - started
        whole = [(e.offset, e.length) for e in img.extents() if e.allocated]
        block = getattr(img, "block_size", 0)
    assert seconds < 3.0, f"{name}: {seconds:.2f} s for {SIZE // CHUNK} chunks"
    assert merged(ours) == merged(whole)
    if name == "vhdx":
        # qemu's vhdx driver reports no block status (everything is data): the allocated blocks
        # are the ones the data touches
        want = merged(sorted({(b * block, block) for off, n in DATA
                              for b in range(off // block, -(-(off + n) // block))}))
    else:
        want = qemu_data(image, qfmt)
    assert merged(ours) == want
    if name == "qcow2-zero":
        assert (7 * MiB, 1 * MiB) not in ours and merged(ours)[1] == (8 * MiB, 2 * MiB)
    assert sum(n for _, n in ours) <= 64 * MiB
