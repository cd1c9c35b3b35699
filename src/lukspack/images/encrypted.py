"""Encrypted images read back through the one reader interface: a DiskImage whose read_into
decrypts. LUKS RAW (LUKS1 and LUKS2) and qcow2+LUKS here; the encrypted VHD in vhd_crypt.py.

Each gives `read_ciphertext(offset, view)`: fill the view with the stored ciphertext of a guest
range (zeros where nothing is stored) and return its runs `(start in view, length, IV sector)`;
`new_cipher()` gives a cipher for one thread. read_into is those two, for a caller that wants
plaintext; the streaming decrypt path (plaintext.py) calls them on different threads.
`describe()` says what the image is encrypted with (Encryption: type, cipher, the LUKS volume,
notes, vhd-util's quirk sectors), the same typed description for every reader.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lukspack.crypto.sector import SectorCipher
from lukspack.errors import FormatError, UnsupportedError
from lukspack.images.base import CHECK_EVERY, DiskImage, Extent
from lukspack.images.qcow2 import Qcow2Image
from lukspack.images.source import ByteSource
from lukspack.luks import open_luks
from lukspack.luks.volume import LuksVolume, file_reader

CipherRuns = list[tuple[int, int, int]]  # (start in the view, length, IV in 512-byte units)


@dataclass(frozen=True)
class Quirks:
    """vhd-util's quirk: sectors marked present that hold all-zero ciphertext."""

    sectors: int
    blocks: tuple[int, ...]  # the VHD blocks holding them, ascending


@dataclass(frozen=True)
class Encryption:
    """What an encrypted image is encrypted with, and what a reader should tell about it."""

    type: str  # "luks1", "luks2"; the format name when there is no LUKS header ("vhd")
    cipher: str  # "aes-xts-plain64", the encrypted VHD's "aes-xts-plain"
    volume: LuksVolume | None  # the LUKS header that was unlocked; None: the encrypted VHD
    notes: tuple[str, ...] = ()  # facts about the image that are not errors (a damaged footer)
    quirks: Quirks | None = None  # found so far by the reads (vhd-util's copy); None: none


def luks_encryption(vol: LuksVolume) -> Encryption:
    return Encryption(f"luks{vol.version}", vol.cipher, vol)


class ThreadCipher(threading.local):
    cipher: SectorCipher | None = None  # this thread's, made on first use


class EncryptedImage(DiskImage):
    """Base of the decrypting readers; subclasses set `unit` (the data unit, 512 or 4096) and
    implement read_ciphertext, new_cipher and describe. `key` is the unlocked key (wiped by
    whoever opened the image, after close); `chunk_align` the unit a streaming read's chunks are
    whole multiples of (a qcow2 cluster)."""

    encrypted = True
    unit = 512
    key: bytearray | None = None

    def __init__(self, path: str, fd: int | ByteSource) -> None:
        super().__init__(path, fd)
        self._local = ThreadCipher()

    @property
    def chunk_align(self) -> int:
        return self.unit

    def describe(self) -> Encryption:
        raise NotImplementedError

    def new_cipher(self) -> SectorCipher:
        raise NotImplementedError

    def read_ciphertext(self, offset: int, view: memoryview) -> CipherRuns:
        raise NotImplementedError

    def _cipher(self) -> SectorCipher:
        c = self._local.cipher
        if c is None:
            c = self._local.cipher = self.new_cipher()
        return c

    def decrypt_runs(self, cipher: SectorCipher, view: memoryview, runs: CipherRuns) -> None:
        for start, length, iv in runs:
            cipher.decrypt(view[start : start + length], iv)

    def read_into(self, offset: int, buf: bytearray | memoryview) -> None:
        mv = memoryview(buf).cast("B")
        self._unchecked += len(mv)  # as DiskImage.read_into: an image that changes is an error
        if self._unchecked >= CHECK_EVERY:
            self._unchecked = 0
            self.check_unchanged()
        u = self.unit
        lo, hi = offset // u * u, -(-(offset + len(mv)) // u) * u
        if (lo, hi) == (offset, offset + len(mv)):
            self.decrypt_runs(self._cipher(), mv, self.read_ciphertext(offset, mv))
            return
        bounce = memoryview(bytearray(hi - lo))  # a read that is not whole data units
        self.decrypt_runs(self._cipher(), bounce, self.read_ciphertext(lo, bounce))
        mv[:] = bounce[offset - lo : offset - lo + len(mv)]


class LuksRawImage(EncryptedImage):
    """The payload of a LUKS1 or LUKS2 image, as `cryptsetup open` presents it."""

    format_name = "luks"

    def __init__(self, path: str, fd: int | ByteSource, vol: LuksVolume, key: bytearray) -> None:
        super().__init__(path, fd)
        self.vol = vol
        self.key: bytearray = key
        self.unit = vol.sector_size
        self.virtual_size = vol.payload_size
        self.format_name = f"luks{vol.version}"

    def describe(self) -> Encryption:
        return luks_encryption(self.vol)

    def new_cipher(self) -> SectorCipher:
        return self.vol.sector_cipher(self.key)

    def read_ciphertext(self, offset: int, view: memoryview) -> CipherRuns:
        n = max(0, min(len(view), self.virtual_size - offset))
        self.pread_exact(self.vol.payload_offset + offset, view[:n], "payload")
        if n < len(view):
            view[n:] = bytes(len(view) - n)
        return [(0, n, offset // 512)] if n else []

    def info(self) -> dict[str, Any]:
        return {"format": self.format_name, "virtual_size": self.virtual_size,
                "payload_offset": self.vol.payload_offset, "cipher": self.vol.cipher}


class Qcow2LuksImage(EncryptedImage):
    """The guest disk of a qcow2 image with LUKS encryption (qemu's format, IBM Cloud VPC's):
    stored clusters decrypt with the IV of their host offset, as qemu does."""

    format_name = "qcow2"

    def __init__(self, qcow: Qcow2Image, vol: LuksVolume, key: bytearray) -> None:
        super().__init__(qcow.path, qcow.source)  # a local file or a remote object
        self.qcow, self.vol = qcow, vol
        self.key: bytearray = key
        self.virtual_size = qcow.virtual_size
        self.cluster_size = qcow.cluster_size

    @property
    def chunk_align(self) -> int:
        return max(self.unit, self.cluster_size)

    def describe(self) -> Encryption:
        return luks_encryption(self.vol)

    def new_cipher(self) -> SectorCipher:
        return self.vol.sector_cipher(self.key)

    def extents(self, start: int = 0, end: int | None = None) -> Iterator[Extent]:
        return self.qcow.extents(start, end)

    def read_ciphertext(self, offset: int, view: memoryview) -> CipherRuns:
        runs = self.qcow.read_ciphertext(offset, view)
        self.bytes_read = self.qcow.bytes_read
        return [(b, n, host // 512) for b, n, host in runs]

    def info(self) -> dict[str, Any]:
        return self.qcow.info()

    def close(self) -> None:
        self.qcow.close()
        self.fd = -1


def open_qcow2_luks(path: str, fd: int | ByteSource) -> tuple[Qcow2Image, LuksVolume]:
    """Open an encrypted qcow2 and parse the LUKS header its crypto extension points to."""
    qcow = Qcow2Image(path, fd, allow_encrypted=True)
    if qcow.crypto_header is None:
        raise UnsupportedError(f"{path}: is a qcow2 image without encryption; there is nothing "
                               "to unlock")
    base, length = qcow.crypto_header

    def read_at(offset: int, size: int) -> bytes:
        if offset + size > length:
            raise FormatError(f"{path}: LUKS header read of {size} bytes at {offset} runs past "
                              f"the qcow2 crypto header area ({length} bytes)")
        return qcow.pread(base + offset, size, "LUKS header")

    vol = open_luks(path, qcow.fd, read_at, size=length)
    if vol.version != 1:
        raise UnsupportedError(f"{path}: LUKS{vol.version} inside qcow2 is not supported "
                               "(qemu writes LUKS1)")
    if qcow.virtual_size % 512:
        raise FormatError(f"{path}: qcow2 size {qcow.virtual_size} of an encrypted image is not "
                          "a whole number of 512-byte sectors")
    return qcow, vol


def open_luks_raw(path: str, fd: int) -> LuksVolume:
    """A LUKS RAW image's header, refusing one with no payload after it (a detached header or
    a truncated image), as `cryptsetup open` refuses it."""
    vol = open_luks(path, fd, file_reader(fd, path))
    if vol.payload_size <= 0:
        raise FormatError(f"{path}: has a LUKS{vol.version} header but no payload after it "
                          f"(payload offset {vol.payload_offset}, file size "
                          f"{os.lseek(fd, 0, os.SEEK_END)}): a detached header or a truncated "
                          "image")
    return vol
