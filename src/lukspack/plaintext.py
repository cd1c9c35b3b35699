"""`verify` and `decrypt`: the plaintext of an encrypted image, streamed, digested, compared with
a source or written out. One path for every encrypted format (images/encrypted.py readers):

    reader thread   image.read_ciphertext (holes: zeros, no I/O) [+ the source's chunk]
    worker threads  decrypt the chunk's runs at their IVs
    this thread     SHA-256 of the disk; compare with the source; write to the output

Every command reports `disk_sha256`: the SHA-256 of the whole decrypted disk (`disk_bytes`
bytes), the same value `encrypt --json` reports for the image it made.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lukspack.disks import unlocked_encrypted
from lukspack.engine import ProgressFn, phase_progress
from lukspack.errors import VerifyError
from lukspack.images import DiskImage, open_image
from lukspack.images.encrypted import EncryptedImage
from lukspack.options import StreamOptions
from lukspack.pipeline import run_stream
from lukspack.remote import source_reads
from lukspack.sinks.file import open_file_output
from lukspack.sinks.paths import check_output_path

Write = Callable[[int, memoryview], None]


def first_difference(a: memoryview | bytes | bytearray, b: memoryview | bytes | bytearray) -> int:
    x = np.frombuffer(a, dtype=np.uint8)
    y = np.frombuffer(b, dtype=np.uint8)
    return int(np.flatnonzero(x != y)[0])


def decrypt_stream(enc: EncryptedImage, opts: StreamOptions, progress: ProgressFn | None,
                   phase: str, *, source: DiskImage | None = None,
                   write: Write | None = None) -> dict[str, Any]:
    """Decrypt the whole disk; digest it; compare with source (the rest must be zeros); hand
    each plaintext chunk to write(offset, data)."""
    size = enc.virtual_size
    unit = enc.chunk_align
    chunk = max(unit, opts.chunk_size // unit * unit)
    stages = _DecryptStages(enc, source, write)
    run_stream(size, stages.read, stages.written, transform_factory=stages.decrypt_factory,
               chunk_size=chunk, workers=opts.workers,
               progress=phase_progress(progress, phase, size))
    d = {"disk_bytes": size, "disk_sha256": stages.h.hexdigest()}
    if source is not None:
        d["source_sha256"] = stages.hs.hexdigest()
    return d


class _DecryptStages:
    """decrypt_stream's stages for run_stream: read ciphertext (and the source's bytes),
    decrypt, then digest, compare with the source and hand on."""

    def __init__(self, enc: EncryptedImage, source: DiskImage | None,
                 write: Write | None) -> None:
        self.enc, self.source, self.write = enc, source, write
        self.h = hashlib.sha256()
        self.hs = hashlib.sha256()  # the source's own bytes
        self.src_size = source.virtual_size if source is not None else 0

    def read(self, offset: int, view: memoryview) -> Any:
        runs = self.enc.read_ciphertext(offset, view)
        theirs = None
        if self.source is not None and offset < self.src_size:
            theirs = bytearray(min(len(view), self.src_size - offset))
            self.source.read_into(offset, theirs)
        return runs, theirs

    def decrypt_factory(self) -> Callable[[memoryview, int, Any], Any]:
        enc = self.enc
        cipher = enc.new_cipher()

        def decrypt(view: memoryview, offset: int, ticket: Any) -> Any:
            enc.decrypt_runs(cipher, view, ticket[0])
            return ticket[1]

        return decrypt

    def written(self, offset: int, view: memoryview, theirs: bytearray | None) -> None:
        self.h.update(view)
        if self.source is not None:
            self._compare(self.source, offset, view, theirs)
        if self.write is not None:
            self.write(offset, view)

    def _compare(self, source: DiskImage, offset: int, view: memoryview,
                 theirs: bytearray | None) -> None:
        enc = self.enc
        n = len(theirs) if theirs is not None else 0
        if theirs is not None:
            self.hs.update(theirs)
        if theirs is not None and view[:n] != theirs:
            source.check_unchanged()  # a source that moved says so, not "a difference"
            enc.check_unchanged()
            at = offset + first_difference(view[:n], theirs)
            raise VerifyError(f"{enc.path}: does not decrypt to the source: first difference "
                              f"at byte {at}")
        if n < len(view) and np.frombuffer(view[n:], dtype=np.uint8).any():
            at = offset + n + int(np.flatnonzero(np.frombuffer(view[n:], np.uint8))[0])
            raise VerifyError(f"{enc.path}: the disk past the source's {self.src_size} bytes "
                              f"does not decrypt to zeros (byte {at})")


def _describe(enc: EncryptedImage) -> dict[str, Any]:
    e = enc.describe()
    return {"image": enc.path, "format": enc.format_name, "type": e.type, "cipher": e.cipher}


def verify(image_path: str, passphrase: bytes | bytearray, source: str | None = None,
           opts: StreamOptions | None = None, progress: ProgressFn | None = None, *,
           input_format: str | None = None, disk: int | None = None,
           remote: Any = None) -> dict[str, Any]:
    """Unlock an image and decrypt its whole disk; with source (a path, or a remote source with
    its options `remote`), compare byte for byte."""
    opts = opts or StreamOptions()
    started = time.perf_counter()
    with unlocked_encrypted(image_path, passphrase, remote=remote) as enc:
        result = _describe(enc)
        if source is None:
            result.update(decrypt_stream(enc, opts, progress, "verify"))
            result["matches_source"] = None
        else:
            with open_image(source, input_format, disk, remote=remote) as src:
                if src.virtual_size > enc.virtual_size:
                    raise VerifyError(f"{image_path}: disk ({enc.virtual_size} bytes) is smaller "
                                      f"than the source ({src.virtual_size} bytes)")
                result.update(decrypt_stream(enc, opts, progress, "verify", source=src))
                src.check_unchanged()  # after the last read: a match with a moved source is none
                enc.check_unchanged()
                result["source"] = src.path
                result["source_bytes"] = src.virtual_size
                reads = source_reads(src)
                if reads is not None:
                    result["source_reads"] = reads
            result["matches_source"] = True
        image_reads = source_reads(enc)
        if image_reads is not None:  # a cos:// or http(s):// image
            result["image_reads"] = image_reads
        result.update(_notes(enc))
        qemu = qemu_key_notes(enc, passphrase)
        if qemu:
            result["notes"] = result.get("notes", []) + qemu
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def qemu_key_notes(enc: EncryptedImage, passphrase: bytes | bytearray) -> list[str]:
    """The VPC rule of keys.key_for_target applied to a key that opened a qcow2+LUKS image: QEMU
    (and so IBM Cloud VPC) cannot use a key it refuses, even when lukspack opens the image."""
    if enc.format_name != "qcow2":
        return []
    from lukspack.errors import KeyFileError
    from lukspack.keys import key_for_target

    try:
        key_for_target("vpc", passphrase, "the key")
    except KeyFileError as e:
        return [f"{e}: lukspack opens this image with it, QEMU and IBM Cloud VPC do not"]
    return []


def test_key(image_path: str, passphrase: bytes | bytearray, *,
             remote: Any = None) -> dict[str, Any]:
    """Whether the key opens the image, decrypting nothing (`verify --key-only`, as `cryptsetup
    open --test-passphrase`): LUKS and qcow2+LUKS unlock a key slot (its digest checked); an
    encrypted VHD compares the key hash. WrongKeyError when it does not open."""
    started = time.perf_counter()
    with unlocked_encrypted(image_path, passphrase, remote=remote) as enc:
        result = {**_describe(enc), "key_opens": True}
        notes = qemu_key_notes(enc, passphrase)
        if notes:
            result["notes"] = notes
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _notes(enc: EncryptedImage) -> dict[str, Any]:
    """What a person should know about what was read (vhd-util's quirk blocks)."""
    e = enc.describe()
    notes = list(e.notes)
    quirks = e.quirks.sectors if e.quirks is not None else 0
    if e.quirks is not None:
        blocks = e.quirks.blocks
        notes.append(f"{quirks} sectors in blocks {', '.join(map(str, blocks[:8]))}"
                     f"{' ...' if len(blocks) > 8 else ''} are marked present but hold all-zero "
                     "ciphertext: what `vhd-util copy` leaves for sectors its source did not "
                     "have; a XenServer host reads them as garbage, lukspack's decrypt as "
                     "tapdisk does")
    d: dict[str, Any] = {"notes": notes} if notes else {}
    if quirks:
        d["quirk_sectors"] = quirks
    return d


def decrypt(image_path: str, output: str, passphrase: bytes | bytearray, *, force: bool = False,
            opts: StreamOptions | None = None, progress: ProgressFn | None = None,
            protected: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """Write the decrypted disk as a sparse RAW file (mode 0600: it is plaintext): holes and
    all-zero 4 KiB blocks are not written, as `qemu-img convert -O raw` leaves them."""
    opts = opts or StreamOptions()
    check_output_path(output, force, (("image", image_path), *protected))  # before any read
    with unlocked_encrypted(image_path, passphrase) as enc:
        sink = open_file_output(output, force=force, mode=0o600,
                                protected=(("image", image_path), *protected))
        with sink:
            sink.begin(0, enc.allocated_size())
            sink.truncate(enc.virtual_size)
            # a file keeps the image's holes and all-zero 4 KiB blocks as holes; a block
            # device gets every zero written
            d = decrypt_stream(enc, opts, progress, "decrypt", write=sink.write_sparse)
            enc.check_unchanged()  # after the last read, before the output is committed
            sink.finish(enc.virtual_size)
            sink.commit()
        return {**_describe(enc), "output": output, "bytes": enc.virtual_size, **d, **_notes(enc)}
