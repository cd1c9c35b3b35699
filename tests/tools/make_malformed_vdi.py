"""The malformed corpus's VDI cases (issue 17): a small dynamic VDI made by qemu-img, damaged one
field at a time (images/vdi.py names each). Called by make_malformed.main();
`python -m tests.tools.make_malformed_vdi` rewrites only the `vdi-*` files and their MANIFEST
rows, leaving the rest of the checked-in corpus as it is."""

from __future__ import annotations

import struct
from collections.abc import Callable

from tests.tools.make_malformed import Corpus, MiB, le, only, run

# header fields (VDICore.h VDIHEADER1 after the 64-byte pre-header; images/vdi.HEADER)
VERSION, HEADER_SIZE, IMAGE_TYPE = 0x44, 0x48, 0x4C
OFFSET_BMAP, OFFSET_DATA, SECTOR_SIZE = 0x154, 0x158, 0x168
DISK_SIZE, BLOCK_SIZE, BLOCK_EXTRA, BLOCKS = 0x170, 0x178, 0x17C, 0x180
UUID_PARENT = 0x1B8
BMAP = 0x200  # where qemu-img puts the block map


def vdi_cases(c: Corpus) -> None:
    raw = c.raw("in.raw", 3 * MiB, (0, 2 * MiB))  # blocks 0 and 2 hold data, block 1 is a hole
    base = c.work / "base.vdi"
    run("qemu-img", "convert", "-f", "raw", "-O", "vdi", raw, base)
    orig = bytes(base.read_bytes())
    assert struct.unpack_from("<3I", orig, BMAP) == (0, 0xFFFFFFFF, 1)

    def case(what: str, mutate: Callable[[bytearray], None], expect: str,
             command: str = "info") -> None:
        d = bytearray(orig)
        mutate(d)
        c.add(f"vdi-{what}.vdi", d, command, expect)

    def field(at: int, fmt: str, value: int | bytes) -> Callable[[bytearray], None]:
        return lambda d: le(fmt, d, at, value)

    case("version-1-0", field(VERSION, "I", 0x00010000), "VDI header version 1.0 is not supported")
    case("header-size-small", field(HEADER_SIZE, "I", 0x100), "VDI header size 256 is smaller")
    case("differencing", field(IMAGE_TYPE, "I", 4), "is a differencing VDI, which needs its parent")
    case("undo", field(IMAGE_TYPE, "I", 3), "is an undo VDI, which needs its parent")
    case("parent-uuid", field(UUID_PARENT, "16s", b"\x01" * 16), "is a VDI naming a parent")
    case("image-type-bad", field(IMAGE_TYPE, "I", 9), "VDI image type 9 is not 1")
    case("sector-size-4096", field(SECTOR_SIZE, "I", 4096), "VDI sector size 4096 is not 512")
    case("block-size-not-pow2", field(BLOCK_SIZE, "I", 3 * MiB),
         "VDI block size 3145728 is not a power of two")
    case("block-size-zero", field(BLOCK_SIZE, "I", 0), "VDI block size 0 is not a power of two")
    case("block-extra-odd", field(BLOCK_EXTRA, "I", 100), "VDI block extra size 100")
    case("blocks-absurd", field(BLOCKS, "I", 0xFFFFFFFF), "VDI block count 4294967295 is absurd")
    case("disk-size-absurd", field(DISK_SIZE, "Q", 1 << 62),
         "VDI disk size 4611686018427387904 is absurd")
    case("disk-size-past-blocks", field(DISK_SIZE, "Q", 16 * MiB),
         "VDI disk size 16777216 does not fit in its 3 blocks")
    case("bmap-past-end", lambda d: (le("I", d, BLOCKS, 1 << 20), le("Q", d, DISK_SIZE, 1 << 40)),
         "VDI block map (4194304 bytes at offset 512) runs past the end of the file")
    case("bmap-unaligned", field(OFFSET_BMAP, "I", 513), "is not aligned to 512 bytes")
    case("bmap-in-header", field(OFFSET_BMAP, "I", 0), "VDI block map offset 0 overlaps the header")
    case("data-over-bmap", field(OFFSET_DATA, "I", 0), "VDI data offset 0 overlaps the block map")
    case("block-past-end", field(BMAP, "I", 1000),
         "VDI block 0 (block map entry 1000) points past the end of the file")
    case("block-entry-huge", field(BMAP + 8, "I", 0xFFFFFFF0),
         "VDI block 2 (block map entry 4294967280) points past the end of the file")
    case("truncated", lambda d: d.__delitem__(slice(len(d) - 4096, None)),
         "VDI block 2 (block map entry 1) points past the end of the file", command="encrypt")
    case("header-truncated", lambda d: d.__delitem__(slice(300, None)),
         "VDI header is truncated (file size 300 < 512)", command="encrypt")
    case("bad-signature", field(0x40, "I", 0xBEDA1070),
         "not a VDI (signature 0xbeda1070 at 0x40", command="info --input-format vdi")
    c.add("vdi-zero-length.vdi", b"", "info --input-format vdi", "is empty (0 bytes)")


def main() -> None:
    only("vdi-", vdi_cases)


if __name__ == "__main__":
    main()
