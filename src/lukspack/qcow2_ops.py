"""qcow2 outputs: encrypt into qcow2+LUKS (what IBM Cloud VPC imports), plain `convert --to
qcow2`, and verify/decrypt/info of qcow2+LUKS images written by lukspack or by qemu-img.

ops.py dispatches here; the streaming engine, atomic output, key handling and progress are the
same as for RAW LUKS. What differs: the LUKS1 header lives in clusters named by the qcow2 crypto
header extension, laid out as qemu lays it out (payload offset right after the key material, not
aligned to 1 MiB); only non-zero clusters are stored; and each stored cluster is encrypted with
aes-xts-plain64 whose IV is its *host* offset / 512, as qemu does for LUKS in qcow2.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from lukspack import digest
from lukspack.crypto.sector import make_sector_cipher
from lukspack.errors import FormatError, LukspackError, UnsupportedError, VerifyError
from lukspack.images import DiskImage, open_image, source_files
from lukspack.images.qcow2 import Qcow2Image
from lukspack.images.qcow2_header import MAGIC
from lukspack.images.qcow2_write import Qcow2Writer
from lukspack.keys import wipe
from lukspack.luks import kdf, luks1
from lukspack.luks.format import KdfOptions
from lukspack.luks.kdf import Pbkdf2Cost, calibrate_before_stream, pbkdf2_cost
from lukspack.luks.volume import LuksVolume, dump_header, open_luks
from lukspack.ops import (
    EncryptOptions,
    ProgressFn,
    _background,
    _file_sha256,
    _Flusher,
    _progress,
    compare_with_source,
    write_plaintext,
)
from lukspack.output import AtomicOutput
from lukspack.pipeline import run_stream

OUTPUT_FORMATS = ("raw", "qcow2")
QCOW2_SUFFIXES = (".qcow2", ".qcow")
KEY_BYTES = 64  # aes-xts-plain64 with two AES-256 keys, as qemu's default
CIPHER = ("aes", "xts-plain64")
LUKS_HEADER_BYTES = luks1.header_bytes(KEY_BYTES, luks1.ALIGN_KEYSLOTS)  # 2068480, as qemu


def output_format(output: str, requested: str | None) -> str:
    """The output container: --output-format when given, else from the name's suffix."""
    if requested is None:
        return "qcow2" if output.lower().endswith(QCOW2_SUFFIXES) else "raw"
    if requested not in OUTPUT_FORMATS:
        raise LukspackError(f"--output-format {requested} is not supported "
                            f"(use {', '.join(OUTPUT_FORMATS)})")
    return requested


def is_qcow2(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False  # the caller's own open reports it


def _chunk(opts: EncryptOptions, cluster_size: int) -> int:
    return max(cluster_size, opts.chunk_size // cluster_size * cluster_size)


# -- encrypt -----------------------------------------------------------------------------------

def encrypt(source: str, output: str, passphrase: bytes | bytearray, opts: EncryptOptions,
            progress: ProgressFn | None = None) -> dict[str, Any]:
    """Encrypt a disk image into a qcow2 v3 image with a LUKS1 header; returns a summary."""
    started = time.perf_counter()
    if opts.luks_type != "luks1":
        raise UnsupportedError(f"qcow2 output holds a LUKS1 header (as qemu writes it), not "
                               f"{opts.luks_type}: use --type luks1, or a RAW output")
    # bad KDF options (an Argon2 --pbkdf too: qemu's LUKS1 has PBKDF2 slots) fail now, before any
    # output exists
    KdfOptions(opts.hash, opts.iter_time_ms, opts.force_iterations, opts.pbkdf,
               opts.pbkdf_memory_kb, opts.pbkdf_parallel).slot_kdf("luks1", KEY_BYTES,
                                                                   check_only=True)
    with open_image(source, opts.input_format) as image:
        volume_key = bytearray(secrets.token_bytes(KEY_BYTES))
        try:
            with kdf.remember():  # verification re-derives nothing it already derived
                cost = None  # calibrated beside the stream unless cores are shared
                if calibrate_before_stream(opts.force_iterations):
                    cost = pbkdf2_cost(opts.hash, KEY_BYTES, opts.iter_time_ms, None)
                return _encrypt(image, output, passphrase, volume_key, opts, progress, started,
                                cost)
        finally:
            wipe(volume_key)


def build_luks_header(volume_key: bytes | bytearray, passphrase: bytes | bytearray,
                      opts: EncryptOptions, cost: Pbkdf2Cost | None = None) -> bytes:
    """The LUKS1 header area as qemu lays it out inside qcow2 (LUKS_HEADER_BYTES long).

    Without a cost, calibrates PBKDF2 first, on this thread's CPU clock (kdf.pbkdf2_rate), so it
    can run beside the payload stream."""
    if cost is None:
        cost = pbkdf2_cost(opts.hash, KEY_BYTES, opts.iter_time_ms, opts.force_iterations)
    return luks1.format_luks1(volume_key, passphrase, slot_iterations=cost.slot_iterations,
                              digest_iterations=cost.digest_iterations, hash_spec=opts.hash,
                              payload_align=luks1.ALIGN_KEYSLOTS)


def _encrypt(image: DiskImage, output: str, passphrase: bytes | bytearray, volume_key: bytearray,
             opts: EncryptOptions, progress: ProgressFn | None, started: float,
             cost: Pbkdf2Cost | None) -> dict[str, Any]:
    writer = Qcow2Writer(image.virtual_size, crypto_header_length=LUKS_HEADER_BYTES)
    assert writer.crypto_header is not None
    with AtomicOutput(output, force=opts.force, sources=source_files(image)) as out:
        header_join = _background(lambda: build_luks_header(volume_key, passphrase, opts, cost))
        flusher = _Flusher(out)
        source_read, sha, check = digest.source_digests(
            image.read_into, image.virtual_size, sha256=opts.plaintext_digest, verify=opts.verify)
        plans: dict[int, Any] = {}

        def read(offset: int, view: memoryview) -> None:  # reader thread, in guest order
            source_read(offset, view)
            plans[offset] = writer.plan(offset, view)

        def transform_factory() -> Callable[[memoryview, int], Any]:
            cipher = make_sector_cipher(*CIPHER, volume_key, 512)

            def encrypt_chunk(buf: memoryview, offset: int) -> Any:
                plan = plans.pop(offset)
                for b, n, host in plan.runs:
                    cipher.encrypt(buf[b : b + n], host // 512)
                return plan

            return encrypt_chunk

        def write(offset: int, data: memoryview, plan: Any) -> None:
            writer.write(out, data, plan)
            flusher.wrote(plan.data_bytes)

        run_stream(writer.stream_size, read, write, transform_factory=transform_factory,
                   chunk_size=_chunk(opts, writer.cluster_size), workers=opts.workers,
                   progress=_progress(progress, "encrypt", writer.stream_size))
        flusher.kick()  # the disk drains while the key slot is derived
        header = header_join()
        out.pwrite(writer.crypto_header[0], header)
        total = writer.finish(out)
        flusher.join()
        summary: dict[str, Any] = {
            "source": image.path,
            "source_format": image.format_name,
            "output": output,
            "output_format": "qcow2",
            "type": "luks1",
            "cipher": "-".join(CIPHER),
            "key_bits": len(volume_key) * 8,
            "sector_size": 512,
            "virtual_size": image.virtual_size,
            "source_bytes_read": image.bytes_read,
            "cluster_size": writer.cluster_size,
            "data_clusters": writer.data_clusters,
            "luks_header_offset": writer.crypto_header[0],
            "luks_header_bytes": len(header),
            "header_bytes": writer.metadata_bytes,
            "payload_bytes": writer.data_clusters * writer.cluster_size,
            "total_bytes": total,
            "plaintext_sha256": sha.hexdigest() if sha else None,
        }
        fsync_join = _background(out.fsync)
        if check is not None:
            got, want = verify_written(out.tmp, passphrase, volume_key, image.virtual_size, opts,
                                       progress), check.hexdigest()
            if got != want:
                raise VerifyError(f"{output}: verification failed: the image decrypts to "
                                  f"{digest.VERIFY} {got}, the source has {want}")
        summary["verified"] = opts.verify
        if opts.output_digest:
            summary["output_sha256"] = _file_sha256(out.fd, total, progress)
        fsync_join()
        out.commit()
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def verify_written(path: str, passphrase: bytes | bytearray, volume_key: bytes | bytearray,
                   virtual_size: int, opts: EncryptOptions, progress: ProgressFn | None) -> str:
    """Reopen a just-written qcow2+LUKS image, unlock it with the key file (in a thread) while
    its clusters are decrypted; return the plaintext digest."""
    fd, image, vol = open_qcow2_luks(path)
    try:
        unlock_join = _background(lambda: vol.opens_with(passphrase, volume_key))
        d = decrypt_stream(image, vol, volume_key, virtual_size, opts, progress, "verify",
                           algorithm=digest.VERIFY)
        if not unlock_join():
            raise VerifyError(f"{path}: verification failed: the key file opens a different key")
        return d[f"plaintext_{digest.VERIFY}"]
    finally:
        os.close(fd)


# -- reading qcow2+LUKS ------------------------------------------------------------------------

def open_qcow2_luks(path: str) -> tuple[int, Qcow2Image, LuksVolume]:
    """Open an encrypted qcow2 and parse the LUKS header its crypto extension points to."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise LukspackError(f"{path}: cannot open: {e.strerror}") from None
    try:
        image = Qcow2Image(path, fd, allow_encrypted=True)
        if image.crypto_header is None:
            raise LukspackError(f"{path}: is a qcow2 image without encryption; there is nothing "
                                "to unlock")
        base, length = image.crypto_header

        def read_at(offset: int, size: int) -> bytes:
            if offset + size > length:
                raise FormatError(f"{path}: LUKS header read of {size} bytes at {offset} runs past "
                                  f"the qcow2 crypto header area ({length} bytes)")
            return image.pread(base + offset, size, "LUKS header")

        vol = open_luks(path, fd, read_at, size=length)
        if vol.version != 1:
            raise UnsupportedError(f"{path}: LUKS{vol.version} inside qcow2 is not supported "
                                   "(qemu writes LUKS1)")
        if image.virtual_size % 512:
            raise FormatError(f"{path}: qcow2 size {image.virtual_size} of an encrypted image is "
                              "not a whole number of 512-byte sectors")
        return fd, image, vol
    except BaseException:
        os.close(fd)
        raise


def decrypt_stream(image: Qcow2Image, vol: LuksVolume, volume_key: bytes | bytearray,
                   plain_size: int, opts: EncryptOptions, progress: ProgressFn | None, phase: str,
                   sink: Callable[[int, memoryview], None] | None = None,
                   algorithm: str = digest.SHA256) -> dict[str, Any]:
    """Decrypt the guest disk (stored clusters only; holes read as zeros); digest its first
    plain_size bytes and check the rest is zeros."""
    size = image.virtual_size
    plain = digest.PlainCheck(algorithm, plain_size)
    stored: dict[int, list[tuple[int, int, int]]] = {}

    def read(offset: int, view: memoryview) -> None:
        stored[offset] = image.read_ciphertext(offset, view)

    def transform_factory() -> Callable[[memoryview, int], None]:
        cipher = vol.sector_cipher(volume_key)

        def decrypt_chunk(buf: memoryview, offset: int) -> None:
            for b, n, host in stored.pop(offset):
                cipher.decrypt(buf[b : b + n], host // 512)

        return decrypt_chunk

    def write(offset: int, data: memoryview, _meta: Any) -> None:
        plain.update(offset, data)
        if sink is not None:
            sink(offset, data)

    run_stream(size, read, write, transform_factory=transform_factory,
               chunk_size=_chunk(opts, image.cluster_size), workers=opts.workers,
               progress=_progress(progress, phase, size))
    if plain.nonzero_padding:
        raise VerifyError(f"{image.path}: the bytes after {plain_size} do not decrypt to zeros")
    return {**plain.result(), "payload_bytes": size}


def verify(image_path: str, passphrase: bytes | bytearray, source: str | None,
           opts: EncryptOptions, progress: ProgressFn | None) -> dict[str, Any]:
    """Unlock a qcow2+LUKS image and decrypt its whole disk; with source, compare with it."""
    started = time.perf_counter()
    fd, image, vol = open_qcow2_luks(image_path)
    try:
        with vol.unlocked(passphrase) as key:
            result: dict[str, Any] = {"image": image_path, "format": "qcow2",
                                      "type": f"luks{vol.version}", "cipher": vol.cipher}
            result.update(compare_with_source(
                image_path, source, image.virtual_size, opts, progress,
                lambda size: decrypt_stream(image, vol, key, size, opts, progress, "verify")))
    finally:
        os.close(fd)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def decrypt(image_path: str, output: str, passphrase: bytes | bytearray, *, force: bool,
            opts: EncryptOptions, progress: ProgressFn | None) -> dict[str, Any]:
    """Write the decrypted disk of a qcow2+LUKS image as a sparse RAW file (mode 0600)."""
    fd, image, vol = open_qcow2_luks(image_path)
    try:
        with vol.unlocked(passphrase) as key:
            return write_plaintext(image_path, output, image.virtual_size, force, lambda sink:
                                   decrypt_stream(image, vol, key, image.virtual_size, opts,
                                                  progress, "decrypt", sink=sink))
    finally:
        os.close(fd)


def info(path: str) -> dict[str, Any]:
    """A qcow2 image's layout; for an encrypted one also its LUKS header, like luksDump."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise LukspackError(f"{path}: cannot open: {e.strerror}") from None
    try:
        image = Qcow2Image(path, fd, allow_encrypted=True)
        d = image.info()
    finally:
        os.close(fd)
    if image.crypto_header is not None:
        fd, _image, vol = open_qcow2_luks(path)
        try:
            d["encryption"] = {"format": "luks", **dump_header(vol)}
        finally:
            os.close(fd)
    return d


# -- plain qcow2 -------------------------------------------------------------------------------

def convert_to_qcow2(image: DiskImage, out: AtomicOutput, opts: EncryptOptions,
                     progress: Callable[[int], None] | None) -> int:
    """Write the image as a plain qcow2 v3 (64 KiB clusters, all-zero clusters not stored)."""
    writer = Qcow2Writer(image.virtual_size)

    def write(offset: int, data: memoryview, _meta: Any) -> None:
        writer.write(out, data, writer.plan(offset, data))

    run_stream(writer.stream_size, image.read_into, write,
               chunk_size=_chunk(opts, writer.cluster_size), progress=progress)
    return writer.finish(out)
