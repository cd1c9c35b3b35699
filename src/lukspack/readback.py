"""Verification independent of the writer: the finished output is read back through the same
decrypting reader `verify` uses (images/encrypted.py: LUKS RAW, qcow2+LUKS; images/vhd_crypt.py:
the encrypted VHD) and compared, chunk by chunk, with digests of what was read from the source.

The reader knows nothing of the container's plan: it unlocks the LUKS header (or checks the VHD
key hash) as written, and derives every offset and IV from the header and metadata as written
(the LUKS segment's payload offset; the qcow2 L1 and L2 tables, IV = host offset / 512; the VHD
BAT and sector bitmaps, IV = guest sector). A run placed at the wrong offset, encrypted under the
wrong IV, or a table entry that points elsewhere reads back as other bytes than the source's.

    while encrypting   SourceDigests: XXH3-128 of each engine chunk of the guest disk as read
                       (workers, before they encrypt); a chunk a sparse container did not read
                       (a hole) is recorded as zeros. 17 bytes per chunk: 4.25 MiB per TiB at
                       the default 4 MiB chunk.
    after the prefix   read_back(): run_stream over the output through the reader (reader
                       thread: read_ciphertext; workers: decrypt and digest; this thread:
                       compare), same chunk grid; on a mismatch the source chunk is read again
                       and the first differing guest byte is named.

Files and block devices are read back before commit (the temporary is renamed only once it
verified); an object is read back after the upload completes, over ranged GETs (remote.RemoteFile),
and deleted when it does not verify.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import xxhash

from lukspack.errors import LukspackError, VerifyError
from lukspack.images.encrypted import EncryptedImage
from lukspack.images.source import ByteSource
from lukspack.interrupt import Interruption
from lukspack.pipeline import run_stream

DIGEST_BYTES = 16  # XXH3-128


class SourceDigests:
    """XXH3-128 of each chunk of the guest disk as the engine read it, by chunk index."""

    def __init__(self, stream_size: int, chunk: int) -> None:
        self.chunk = chunk
        n = max(1, -(-stream_size // chunk))
        self.digests = np.zeros((n, DIGEST_BYTES), dtype=np.uint8)
        self.read = np.zeros(n, dtype=bool)  # False: a hole the container did not read (zeros)
        self._zeros: dict[int, bytes] = {}  # XXH3 of n zero bytes

    def mark(self, offset: int, allocated: bool) -> None:
        """On the reader thread, in order: whether the chunk at offset was read."""
        self.read[offset // self.chunk] = allocated

    def add(self, offset: int, view: memoryview) -> None:
        """On a worker, before the chunk is encrypted in place (distinct rows per chunk)."""
        i = offset // self.chunk
        if self.read[i]:
            self.digests[i] = np.frombuffer(xxhash.xxh3_128_digest(view), dtype=np.uint8)

    def matches(self, offset: int, plain: memoryview) -> bool:
        i = offset // self.chunk
        if not self.read[i]:
            return not _any(plain)
        stored: bytes = self.digests[i].tobytes()
        return xxhash.xxh3_128_digest(plain) == stored

    def matches_zeros(self, offset: int, n: int) -> bool:
        """Whether the source's chunk at offset (n bytes) was zeros: a hole the engine did not
        read, or read bytes that hash as n zeros do."""
        i = offset // self.chunk
        if not self.read[i]:
            return True
        zero = self._zeros.get(n)
        if zero is None:
            zero = self._zeros[n] = xxhash.xxh3_128_digest(bytes(n))
        stored: bytes = self.digests[i].tobytes()
        return zero == stored


def _any(view: memoryview | bytes) -> bool:
    mv = memoryview(view).cast("B")
    whole = len(mv) // 8 * 8
    return bool(np.frombuffer(mv[:whole], dtype=np.uint64).any() or
                np.frombuffer(mv[whole:], dtype=np.uint8).any())


class BoundedFile(ByteSource):
    """The first `size` bytes of an open descriptor (a sink's temporary file, or the part of a
    block device the image takes); the descriptor stays the sink's."""

    def __init__(self, fd: int, name: str, size: int) -> None:
        import os

        self._pread = os.preadv
        self.fd, self.name, self.size = fd, name, size

    def readinto(self, offset: int, view: memoryview) -> int:
        view = view[: max(0, min(len(view), self.size - offset))]
        got = 0
        while got < len(view):
            n = self._pread(self.fd, [view[got:]], offset + got)
            if n == 0:
                break
            got += n
        return got

    def close(self) -> None:
        self.fd = -1  # not ours to close


def open_output(kind: str, src: ByteSource, name: str, passphrase: bytes | bytearray,
                cache: Any) -> EncryptedImage:
    """The decrypting reader over the output as written. kind: the container's name (luks1,
    luks2, qcow2, vhd). The key comes from the header as written, unlocked with the key file
    (cache: this encryption's KdfCache, so the key derivation is not spent again), or for the
    encrypted VHD from the key file, checked against the key hash as written."""
    from lukspack.images.encrypted import LuksRawImage, Qcow2LuksImage, open_qcow2_luks

    if kind == "vhd":
        from lukspack.images.vhd_crypt import EncryptedVhdImage
        from lukspack.keys import decode_vhd_key, wipe

        key = decode_vhd_key(passphrase)
        try:
            return EncryptedVhdImage(name, src, key)
        finally:
            wipe(key)
    if kind == "qcow2":
        qcow, vol = open_qcow2_luks(name, src)
        return Qcow2LuksImage(qcow, vol, vol.unlock(passphrase, cache))
    from lukspack.luks import open_luks
    from lukspack.luks.volume import bytes_reader

    def read_at(offset: int, size: int) -> bytes:
        data = src.read_at(offset, size)
        if len(data) != size:
            return bytes_reader(b"", name)(offset, size)  # raises: past the end
        return data

    vol = open_luks(name, -1, read_at, size=src.size)
    return LuksRawImage(name, src, vol, vol.unlock(passphrase, cache))


def read_back(open_reader: Callable[[], EncryptedImage], digests: SourceDigests, *,
              disk_size: int, stream_size: int, source: Any, label: str, workers: int,
              progress: Callable[[int], None] | None = None,
              interruption: Interruption | None = None) -> None:
    """Decrypt the whole output through its reader and compare every chunk with the source's
    digest; VerifyError naming the first guest byte that differs. source: the DiskImage the
    engine read (read again only to name the first differing byte)."""
    fail = f"{label}: verification failed"
    enc = _open_output(open_reader, fail)
    try:
        if enc.virtual_size != disk_size:
            raise VerifyError(f"{fail}: the output as written holds a disk of {enc.virtual_size} "
                              f"bytes, not {disk_size}")
        stages = _ReadBackStages(enc, digests, source, fail)
        try:
            run_stream(stream_size, stages.read, stages.compare,
                       transform_factory=stages.decrypt_factory, chunk_size=digests.chunk,
                       workers=workers, progress=progress, interruption=interruption)
        except VerifyError:
            raise
        except LukspackError as e:  # a table entry or offset the reader refuses
            raise VerifyError(f"{fail}: reading the output back: {e}") from None
    finally:
        key = enc.key
        enc.close()
        if key is not None:
            key[:] = bytes(len(key))


def _open_output(open_reader: Callable[[], EncryptedImage], fail: str) -> EncryptedImage:
    """The output through its reader; a reader's refusal is a verification failure."""
    try:
        return open_reader()
    except VerifyError:
        raise
    except LukspackError as e:
        raise VerifyError(f"{fail}: the output as written does not open through its reader: "
                          f"{e}") from None


class _ReadBackStages:
    """The read-back's stages for run_stream: read ciphertext, decrypt and check, compare."""

    def __init__(self, enc: EncryptedImage, digests: SourceDigests, source: Any,
                 fail: str) -> None:
        self.enc, self.digests, self.source, self.fail = enc, digests, source, fail

    def read(self, offset: int, view: memoryview) -> Any:
        enc = self.enc
        end = min(offset + len(view), enc.virtual_size)
        if not any(e.allocated for e in enc.extents(offset, end)):
            return None  # the output's tables say zeros here: nothing to read or decrypt
        return enc.read_ciphertext(offset, view)

    def decrypt_factory(self) -> Callable[[memoryview, int, Any], Any]:
        enc, digests = self.enc, self.digests
        cipher = enc.new_cipher()

        def decrypt(view: memoryview, offset: int, runs: Any) -> bool:
            if runs is None:
                if digests.matches_zeros(offset, len(view)):
                    return True
                view[:] = bytes(len(view))  # for the message: what the output reads as
                return False
            enc.decrypt_runs(cipher, view, runs)
            return digests.matches(offset, view)

        return decrypt

    def compare(self, offset: int, view: memoryview, ok: bool) -> None:
        if not ok:
            at = offset + _first_difference(self.source, self.digests, offset, view)
            raise VerifyError(f"{self.fail}: guest byte {at}, read back through the "
                              f"{_reader_name(self.enc)} reader, does not decrypt to the "
                              "source's bytes")


def _reader_name(enc: EncryptedImage) -> str:
    return {"qcow2": "qcow2+LUKS", "vhd": "encrypted VHD"}.get(enc.format_name,
                                                              enc.format_name.upper())


def _first_difference(source: Any, digests: SourceDigests, offset: int, got: memoryview) -> int:
    """Offset in the chunk of the first byte that differs from the source (read again)."""
    want = bytearray(len(got))
    if digests.read[offset // digests.chunk]:
        source.read_into(offset, want)
    a = np.frombuffer(got, dtype=np.uint8)
    b = np.frombuffer(want, dtype=np.uint8)
    diff = np.flatnonzero(a != b)
    return int(diff[0]) if len(diff) else 0  # equal bytes, other digest: the source changed
