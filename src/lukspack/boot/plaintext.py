"""An encrypted image QEMU cannot open (the encrypted VHD) served to it decrypted: lukspack's own
reader writes a sparse raw copy into boot-test's private directory (mode 0700, removed after the
boot, also on Ctrl-C)."""

from __future__ import annotations

import os
from collections.abc import Callable

CHUNK = 8 << 20

ProgressFn = Callable[[str, int, int], None]


def write_decrypted(path: str, passphrase: bytes | bytearray, dest: str,
                    progress: ProgressFn | None = None) -> int:
    """Write the plaintext disk of the encrypted image at path to dest (sparse: zero chunks and
    unallocated ranges stay holes); returns the virtual size."""
    from lukspack.disks import unlocked_disk

    with unlocked_disk(path, passphrase) as image:
        size = image.virtual_size
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            buf = bytearray(CHUNK)
            done = 0
            for ext in image.extents():
                if not ext.allocated:
                    continue
                pos, end = ext.offset, ext.offset + ext.length
                while pos < end:
                    n = min(CHUNK, end - pos)
                    view = memoryview(buf)[:n]
                    image.read_into(pos, view)
                    if buf.count(0, 0, n) != n:  # an all-zero chunk stays a hole
                        os.pwrite(fd, view, pos)
                    pos += n
                    done += n
                    if progress is not None:
                        progress("decrypt", done, size)
        finally:
            os.close(fd)
    return size
