"""A small sample disk image to try lukspack on: an MBR with one Linux partition holding text,
random data and long runs of zeros (holes in sparse formats)."""

from __future__ import annotations

import random
import struct

from lukspack.sinks.file import open_file_output

MiB = 1 << 20


def mbr(total_sectors: int, start: int = 2048) -> bytes:
    """A DOS partition table with one type-0x83 partition from `start` to the end."""
    entry = struct.pack("<B3sB3sII", 0x00, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", start,
                        total_sectors - start)
    sector = bytearray(512)
    sector[446:462] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def write_sample(path: str, size_mib: int = 64, *, force: bool = False, seed: int = 0) -> int:
    if size_mib < 4:
        raise ValueError("a sample disk needs at least 4 MiB")
    rnd = random.Random(seed)
    with open_file_output(path, force=force) as out:
        out.truncate(size_mib * MiB)
        out.pwrite(0, mbr(size_mib * MiB // 512))
        text = (b'NAME="Sample Linux"\nID=sample\nVERSION_ID="1.0"\n'
                b"# cloud-init is installed on this sample image\n") * 256
        for i in range(1, size_mib):
            kind = i % 4
            if kind == 1:
                out.pwrite(i * MiB, rnd.randbytes(MiB))
            elif kind == 2:
                out.pwrite(i * MiB, (text * (MiB // len(text) + 1))[:MiB])
            # kinds 0 and 3: zeros, left as holes
        out.finish(size_mib * MiB)
        out.commit()
    return size_mib * MiB
