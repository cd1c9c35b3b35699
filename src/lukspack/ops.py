"""What each command does, as library functions: encrypt, verify, decrypt, convert, size, info.

The CLI only parses options, calls these, renders progress and maps errors to exit codes.
Progress is a callback `progress(phase, done_bytes, total_bytes)`; the library never prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lukspack import digest
from lukspack.crypto.sector import make_sector_cipher
from lukspack.errors import FormatError, LukspackError, VerifyError
from lukspack.images import DiskImage, open_image, source_files
from lukspack.keys import wipe
from lukspack.luks import kdf, luks1
from lukspack.luks.format import HeaderPlan, KdfOptions, plan_header
from lukspack.luks.volume import LuksVolume, file_reader, open_luks, open_luks_path
from lukspack.output import AtomicOutput
from lukspack.pipeline import CHUNK_SIZE, WORKERS, lower_priority, run_stream

MiB = 1 << 20
ProgressFn = Callable[[str, int, int], None]
_FLUSH_EVERY = 256 * MiB


def round_up(n: int, unit: int = MiB) -> int:
    return -(-n // unit) * unit


@dataclass
class EncryptOptions:
    luks_type: str = "luks1"
    hash: str = "sha256"
    iter_time_ms: int = 2000
    force_iterations: int | None = None
    pbkdf: str | None = None  # LUKS2: argon2id (default), argon2i or pbkdf2
    pbkdf_memory_kb: int | None = None
    pbkdf_parallel: int | None = None
    sector_size: int = 512
    verify: bool = True
    force: bool = False
    input_format: str | None = None
    output_format: str | None = None  # raw | qcow2; None: qcow2 for a .qcow2 output name
    output_digest: bool = False  # SHA-256 of the whole output file, for --json
    # SHA-256 of the source's bytes while they stream (0.7 s per GiB here), for the summary; the
    # CLI asks for it with --json. Verification compares a faster digest of its own (digest.py).
    plaintext_digest: bool = True
    chunk_size: int = CHUNK_SIZE
    workers: int = WORKERS


def _progress(progress: ProgressFn | None, phase: str, total: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    progress(phase, 0, total)
    return lambda done: progress(phase, done, total)


def _background(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run fn in a thread now; the returned join() gives its result or raises its exception."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread by join()
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join() -> Any:
        while t.is_alive():
            t.join(0.1)  # short waits keep the main thread responsive to signals
        if "error" in box:
            raise box["error"]
        return box.get("value")

    return join


class _Flusher:
    """Starts write-back of the output every few hundred MiB so the final fsync is short."""

    def __init__(self, out: AtomicOutput) -> None:
        self.out, self.pending, self.thread = out, 0, None

    def wrote(self, n: int) -> None:
        self.pending += n
        if self.pending >= _FLUSH_EVERY and (self.thread is None or not self.thread.is_alive()):
            self.pending = 0
            fd = self.out.fd
            self.thread = threading.Thread(target=_quiet_fdatasync, args=(fd,), daemon=True)
            self.thread.start()

    def kick(self) -> None:
        """The stream is done: start writing back the rest now, while verification runs."""
        self.pending = _FLUSH_EVERY
        self.wrote(0)

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


class _Watermark:
    """How far the writer has got, for a verifier that reads the output back right behind it."""

    class Abandoned(Exception):
        pass

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._upto = 0
        self._abandoned = False
        self.failed = False  # set by the verifier when it fails

    def advance(self, upto: int) -> None:
        with self._cond:
            self._upto = max(self._upto, upto)
            self._cond.notify_all()

    def abandon(self) -> None:
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()

    def wait_for(self, upto: int) -> None:
        with self._cond:
            while self._upto < upto:
                if self._abandoned:
                    raise _Watermark.Abandoned
                self._cond.wait(0.1)


def _quiet_fdatasync(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError:
        pass  # the final fsync in commit() reports errors


def encrypt(source: str, output: str, passphrase: bytes | bytearray, opts: EncryptOptions,
            progress: ProgressFn | None = None) -> dict[str, Any]:
    """Encrypt a disk image into a LUKS raw image (or qcow2+LUKS) at output; returns a summary."""
    from lukspack import qcow2_ops

    if qcow2_ops.output_format(output, opts.output_format) == "qcow2":
        return qcow2_ops.encrypt(source, output, passphrase, opts, progress)
    started = time.perf_counter()
    plan = plan_header(opts.luks_type, KdfOptions(opts.hash, opts.iter_time_ms,
                                                  opts.force_iterations, opts.pbkdf,
                                                  opts.pbkdf_memory_kb, opts.pbkdf_parallel),
                       sector_size=opts.sector_size)
    with open_image(source, opts.input_format) as image:
        volume_key = bytearray(secrets.token_bytes(plan.key_bytes))
        try:
            with kdf.remember():  # verification re-derives nothing it already derived
                return _encrypt(image, output, passphrase, volume_key, plan, opts, progress,
                                started)
        finally:
            wipe(volume_key)


def _encrypt(image: DiskImage, output: str, passphrase: bytes | bytearray,
             volume_key: bytearray, plan: HeaderPlan, opts: EncryptOptions,
             progress: ProgressFn | None, started: float) -> dict[str, Any]:
    payload_size = round_up(image.virtual_size)
    header_size = plan.header_size
    total = header_size + payload_size

    with AtomicOutput(output, force=opts.force, sources=source_files(image)) as out:
        out.preallocate(total)
        # Without verification the payload goes straight to the device (O_DIRECT: no page-cache
        # copy, no write-back later; 1 CPU-s per GiB less here). With it, writes stay buffered so
        # that the verifier reads them back from the page cache: direct writes would make it read
        # the whole image from the device again (measured: 0.7 s per GiB slower wall).
        direct = not opts.verify and out.open_direct()
        if plan.prepare is not None:
            plan.prepare()  # Argon2 calibration, before the payload threads load the CPU
        # calibration and key derivation (seconds, by design) run while the payload streams
        header_join = _background(lambda: plan.build(volume_key, passphrase))
        flusher = _Flusher(out)
        read, sha, check = digest.source_digests(image.read_into, image.virtual_size,
                                                 sha256=opts.plaintext_digest, verify=opts.verify)

        written = _Watermark()

        def write(offset: int, data: memoryview, _meta: Any) -> None:
            if written.failed and verify_join is not None:
                verify_join()  # raises the verifier's error now, not after the whole image
            if not direct:
                out.pwrite_payload(header_size + offset, data)
            flusher.wrote(len(data))
            written.advance(offset + len(data))

        def transform_factory() -> Callable[[memoryview, int], None]:
            cipher = make_sector_cipher(plan.cipher_name, plan.cipher_mode, volume_key,
                                        plan.sector_size)

            def encrypt(buf: memoryview, off: int) -> None:
                cipher.encrypt(buf, off // 512)
                if direct:  # each worker writes its own chunk: several direct writes in flight
                    out.pwrite_payload(header_size + off, buf)

            return encrypt

        # the verifier reads each chunk back from the output right after it is written, decrypts
        # and digests it: verification costs CPU beside the stream, not a second pass after it
        def trailing_verify() -> str:
            lower_priority()
            try:
                return verify_payload(out.tmp, plan, payload_size, volume_key,
                                      image.virtual_size, opts, progress, wait=written.wait_for)
            except BaseException:
                written.failed = True  # the writer stops at its next chunk
                raise

        verify_join = _background(trailing_verify) if opts.verify else None
        try:
            run_stream(payload_size, read, write,
                       transform_factory=transform_factory, chunk_size=opts.chunk_size,
                       workers=opts.workers, progress=_progress(progress, "encrypt", payload_size))
        except BaseException:
            try:
                written.abandon()
            finally:
                if verify_join is not None:
                    with contextlib.suppress(Exception):  # interrupts still get through
                        verify_join()
            raise
        flusher.kick()  # the disk drains while the payload is checked and the key slot derived
        summary: dict[str, Any] = {
            "source": image.path,
            "source_format": image.format_name,
            "output": output,
            "type": plan.luks_type,
            "cipher": plan.cipher,
            "key_bits": len(volume_key) * 8,
            "sector_size": plan.sector_size,
            "virtual_size": image.virtual_size,
            "source_bytes_read": image.bytes_read,
            "header_bytes": header_size,
            "payload_offset": header_size,
            "payload_bytes": payload_size,
            "total_bytes": total,
            "plaintext_sha256": sha.hexdigest() if sha else None,
            "direct_io": out.direct,
            "verified": False,
        }
        if verify_join is not None:
            got, want = verify_join(), check.hexdigest()
            if got != want:
                raise VerifyError(f"{output}: verification failed: the payload decrypts to "
                                  f"{digest.VERIFY} {got}, the source has {want}")
        out.pwrite(0, header_join())
        flusher.join()
        fsync_join = _background(out.fsync)  # durable write-back overlaps the header check
        if opts.verify:
            verify_header(out.tmp, plan, passphrase, volume_key)
            summary["verified"] = True
        if opts.output_digest:
            summary["output_sha256"] = _file_sha256(out.fd, total, progress)
        fsync_join()
        out.commit()
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def verify_payload(path: str, plan: HeaderPlan, payload_size: int, volume_key: bytes | bytearray,
                   virtual_size: int, opts: EncryptOptions, progress: ProgressFn | None,
                   wait: Callable[[int], None] | None = None) -> str:
    """Read the written payload back from the file, decrypt it, and return its plaintext digest.

    wait(end) blocks until the writer has written the payload up to `end` (a trailing verifier)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        vol = LuksVolume(path, 0, None, plan.cipher_name, plan.cipher_mode, plan.key_bytes,
                         plan.header_size, payload_size, plan.sector_size, file_reader(fd, path))
        return decrypt_stream(vol, fd, volume_key, virtual_size, opts, progress, "verify",
                              wait=wait, algorithm=digest.VERIFY)[f"plaintext_{digest.VERIFY}"]
    finally:
        os.close(fd)


def verify_header(path: str, plan: HeaderPlan, passphrase: bytes | bytearray,
                  volume_key: bytes | bytearray) -> None:
    """Reopen the written file, parse its header and unlock it with the key file: it must give
    the volume key and the payload geometry that the payload check used."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        vol = open_luks(path, fd)
        found = (vol.payload_offset, vol.cipher, vol.sector_size, vol.key_bytes)
        want = (plan.header_size, plan.cipher, plan.sector_size, plan.key_bytes)
        if found != want:
            raise VerifyError(f"{path}: verification failed: the header says {found}, "
                              f"expected {want}")
        if not vol.opens_with(passphrase, volume_key):
            raise VerifyError(f"{path}: verification failed: the key file opens a different key")
    finally:
        os.close(fd)


def decrypt_stream(vol: LuksVolume, fd: int, volume_key: bytes | bytearray, plain_size: int,
                   opts: EncryptOptions, progress: ProgressFn | None, phase: str,
                   sink: Callable[[int, memoryview], None] | None = None,
                   in_hash: Any = None,
                   wait: Callable[[int], None] | None = None,
                   algorithm: str = digest.SHA256) -> dict[str, Any]:
    """Decrypt a payload; digest its first plain_size bytes, check the rest decrypts to zeros.

    wait(end), when given, is called before reading payload bytes up to `end`."""
    plain = digest.PlainCheck(algorithm, plain_size)
    base = vol.payload_offset
    size = vol.payload_size

    def read(offset: int, view: memoryview) -> None:
        if wait is not None:
            wait(offset + len(view))
        n = os.preadv(fd, [view], base + offset)
        if n != len(view):
            raise FormatError(f"{vol.path}: payload truncated at offset {base + offset + n}")

    def write(offset: int, data: memoryview, _meta: Any) -> None:
        plain.update(offset, data)
        if sink is not None:
            sink(offset, data)

    def transform_factory() -> Callable[[memoryview, int], None]:
        cipher = vol.sector_cipher(volume_key)
        return lambda buf, off: cipher.decrypt(buf, off // 512)

    run_stream(size, read, write, transform_factory=transform_factory, in_hash=in_hash,
               chunk_size=opts.chunk_size, workers=opts.workers,
               progress=_progress(progress, phase, size))
    if plain.nonzero_padding:
        raise VerifyError(f"{vol.path}: the padding after byte {plain_size} does not decrypt to "
                          "zeros")
    return {**plain.result(), "payload_bytes": size}


def _file_sha256(fd: int, size: int, progress: ProgressFn | None) -> str:
    h = hashlib.sha256()

    def read(offset: int, view: memoryview) -> None:
        os.preadv(fd, [view], offset)

    run_stream(size, read, lambda o, d, m: None, in_hash=h,
               progress=_progress(progress, "digest", size))
    return h.hexdigest()


def image_sha256(image: DiskImage, progress: ProgressFn | None = None,
                 opts: EncryptOptions | None = None) -> str:
    opts = opts or EncryptOptions()
    h = hashlib.sha256()
    run_stream(image.virtual_size, image.read_into, lambda o, d, m: None, in_hash=h,
               chunk_size=opts.chunk_size, progress=_progress(progress, "source", image.virtual_size))
    return h.hexdigest()


def _open_with_payload(path: str) -> tuple[int, LuksVolume]:
    """open_luks_path for the commands that read the payload: a header with no payload after it
    (a detached header, or a truncated image) is refused, as `cryptsetup open` refuses it."""
    fd, vol = open_luks_path(path)
    if vol.payload_size <= 0:
        os.close(fd)
        raise FormatError(f"{path}: has a LUKS{vol.version} header but no payload after it "
                          f"(payload offset {vol.payload_offset}, file size "
                          f"{vol.payload_offset + vol.payload_size}): a detached header or a "
                          "truncated image")
    return fd, vol


def verify(image_path: str, passphrase: bytes | bytearray, source: str | None = None,
           opts: EncryptOptions | None = None, progress: ProgressFn | None = None
           ) -> dict[str, Any]:
    """Unlock an image and decrypt its whole payload; with source, compare with it."""
    opts = opts or EncryptOptions()
    from lukspack import qcow2_ops

    if qcow2_ops.is_qcow2(image_path):
        return qcow2_ops.verify(image_path, passphrase, source, opts, progress)
    started = time.perf_counter()
    fd, vol = _open_with_payload(image_path)
    try:
        with vol.unlocked(passphrase) as key:
            result: dict[str, Any] = {"image": image_path, "type": f"luks{vol.version}",
                                      "cipher": vol.cipher}
            result.update(compare_with_source(
                image_path, source, vol.payload_size, opts, progress,
                lambda size: decrypt_stream(vol, fd, key, size, opts, progress, "verify")))
    finally:
        os.close(fd)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def compare_with_source(image_path: str, source: str | None, disk_size: int, opts: EncryptOptions,
                        progress: ProgressFn | None,
                        decrypt_fn: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """Decrypt the whole disk, or with a source the source's length, and compare the digests.

    decrypt_fn(plain_size) decrypts the image, hashing its first plain_size bytes and checking
    that the rest decrypts to zeros."""
    if source is None:
        return {**decrypt_fn(disk_size), "matches_source": False}
    with open_image(source, opts.input_format) as src:
        if src.virtual_size > disk_size:
            raise VerifyError(f"{image_path}: disk ({disk_size} bytes) is smaller than the source "
                              f"({src.virtual_size} bytes)")
        want = image_sha256(src, progress, opts)
        got = decrypt_fn(src.virtual_size)
    if got["plaintext_sha256"] != want:
        raise VerifyError(f"{image_path}: does not decrypt to {source} (sha256 "
                          f"{got['plaintext_sha256']} != {want})")
    return {**got, "source_sha256": want, "matches_source": True}


def decrypt(image_path: str, output: str, passphrase: bytes | bytearray, *, force: bool = False,
            opts: EncryptOptions | None = None, progress: ProgressFn | None = None
            ) -> dict[str, Any]:
    """Write the decrypted payload of a LUKS image as a RAW file (mode 0600: it is plaintext)."""
    opts = opts or EncryptOptions()
    from lukspack import qcow2_ops

    if qcow2_ops.is_qcow2(image_path):
        return qcow2_ops.decrypt(image_path, output, passphrase, force=force, opts=opts,
                                 progress=progress)
    fd, vol = _open_with_payload(image_path)
    try:
        with vol.unlocked(passphrase) as key:
            return write_plaintext(image_path, output, vol.payload_size, force, lambda sink:
                                   decrypt_stream(vol, fd, key, vol.payload_size, opts, progress,
                                                  "decrypt", sink=sink))
    finally:
        os.close(fd)


def write_plaintext(image_path: str, output: str, size: int, force: bool,
                    run: Callable[[Callable[[int, memoryview], None]], dict[str, Any]]
                    ) -> dict[str, Any]:
    """Create output (mode 0600: it is plaintext) as a sparse file of size bytes, let run(sink)
    stream the decrypted disk into it, and rename it into place."""
    with AtomicOutput(output, force=force, sources=(image_path,), mode=0o600) as out:
        out.truncate(size)
        d = run(_sparse_writer(out))
        out.commit()
    return {"image": image_path, "output": output, "bytes": size, **d}


def _sparse_writer(out: AtomicOutput, base: int = 0) -> Callable[[int, memoryview], None]:
    """Write a chunk unless it is all zeros (the file was sized first, so holes read as zeros)."""

    def write(offset: int, data: memoryview) -> None:
        if len(data) % 8 == 0 and not np.frombuffer(data, dtype=np.uint64).any():
            return
        out.pwrite(base + offset, data)

    return write


def size_report(source: str, luks_type: str = "luks1", input_format: str | None = None
                ) -> dict[str, Any]:
    """The documented step-4 arithmetic done right for this image and LUKS type."""
    with open_image(source, input_format) as image:
        raw = image.virtual_size
    if luks_type == "luks1":
        header = luks1.header_bytes(64)
    elif luks_type == "luks2":
        from lukspack.luks.luks2 import DEFAULT_DATA_OFFSET

        header = DEFAULT_DATA_OFFSET  # 2 x 16 KiB headers + keyslots area up to 16 MiB
    else:
        raise LukspackError(f"--type {luks_type} is not supported (use luks1 or luks2)")
    payload = round_up(raw)
    total = header + payload
    documented = round_up(raw + 4 * MiB)
    return {
        "source": source,
        "type": luks_type,
        "source_bytes": raw,
        "header_bytes": header,
        "payload_bytes": payload,
        "total_bytes": total,
        "total_mib": total // MiB,
        "documented_total_bytes": documented,
        "documented_fits": documented - header >= raw,
    }


def _lost_luks2_primary(fd: int) -> bool:
    from lukspack.luks.luks2 import find_secondary

    return find_secondary(lambda o, n: os.pread(fd, n, o), os.fstat(fd).st_size) is not None


def info(path: str, input_format: str | None = None) -> dict[str, Any]:
    """Describe any supported image: a LUKS header like luksDump, or a disk image's layout."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic != luks1.MAGIC and _lost_luks2_primary(f.fileno()):
                magic = luks1.MAGIC  # a LUKS2 image whose secondary header is still there
    except OSError as e:
        raise LukspackError(f"{path}: cannot open: {e.strerror}") from None
    if magic == luks1.MAGIC and input_format is None:
        fd, vol = open_luks_path(path)
        try:
            return {"format": f"luks{vol.version}", "file_size": os.fstat(fd).st_size,
                    "payload_offset": vol.payload_offset, "payload_bytes": vol.payload_size,
                    "sector_size": vol.sector_size, "luks": vol.dump()}
        finally:
            os.close(fd)
    if magic[:4] == b"QFI\xfb" and input_format in (None, "qcow2"):
        from lukspack import qcow2_ops

        return qcow2_ops.info(path)
    with open_image(path, input_format) as image:
        return image.info()


__all__ = ["EncryptOptions", "encrypt", "verify", "decrypt", "size_report", "info",
           "file_reader"]
