"""The one encryption engine: image -> container -> sink, for every output format.

    reader thread    image.read_into (holes of sparse outputs: not read) -> container.plan
                     (runs: where each ciphertext byte goes, under which IV) -> disk digest
    worker threads   digest the plaintext of the runs, encrypt each run at its IV; "tee": decrypt
                     a copy again with a second cipher and compare, when the sink cannot read back
    this thread      sink.write of runs and plaintext metadata, ascending; hands each chunk to
    verifier thread  read back right behind the writer, decrypt, compare with the digest
    KDF thread       container.build_key_material (calibration, PBKDF2/Argon2: seconds, by design)
    at the end       trailer, prefix checked in memory (unlock with the key file), prefix placed,
                     sink.finish (durable), sink.commit (published)

The engine knows no format and no destination: containers/ and sinks/ do.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from lukspack import digest, interrupt
from lukspack.containers.base import ChunkPlan, Container
from lukspack.crypto.sector import make_sector_cipher
from lukspack.errors import VerifyError
from lukspack.images.base import DiskImage
from lukspack.keys import wipe
from lukspack.options import StreamOptions
from lukspack.pipeline import lower_priority, run_stream
from lukspack.sinks.base import Sink

ProgressFn = Callable[[str, int, int], None]
log = logging.getLogger(__name__)


def phase_progress(progress: ProgressFn | None, phase: str, total: int
                   ) -> Callable[[int], None] | None:
    if progress is None:
        return None
    progress(phase, 0, total)
    return lambda done: progress(phase, done, total)


class Background:
    """Run fn in a thread now; join() gives its result or raises its exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._box: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread by join()
            self._box["error"] = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> Any:
        while self._thread.is_alive():
            interrupt.check()
            self._thread.join(0.1)  # short waits keep the main thread responsive to signals
        if "error" in self._box:
            raise self._box["error"]
        return self._box.get("value")


class Mismatch(Exception):
    """A chunk that does not decrypt to what was read (raised inside the engine's threads)."""

    def __init__(self, offset: int, where: str, plan: ChunkPlan | None = None) -> None:
        super().__init__(offset, where)
        self.offset, self.where, self.plan = offset, where, plan


class ReadBackVerifier:
    """A thread right behind the writer: reads each placed chunk back from the sink, decrypts it
    with its own cipher and compares it with the digest of what was read from the source."""

    def __init__(self, read_at: Callable[[int, int], bytes], new_cipher: Callable[[], Any]) -> None:
        self.read_at, self.new_cipher = read_at, new_cipher
        self.queue: queue.Queue[tuple[int, ChunkPlan, bytes] | None] = queue.Queue(maxsize=64)
        self.error: BaseException | None = None
        self.cancelled = False  # the run failed or was interrupted: skip what is still queued
        self.closing = False  # no more chunks come: stop once the queue is empty
        self.thread = threading.Thread(target=self._run, name="lukspack-verify", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        lower_priority()
        cipher = self.new_cipher()
        try:
            while True:  # short waits: a signal in the main thread can never leave it asleep
                try:
                    item = self.queue.get(timeout=0.1)
                except queue.Empty:
                    if self.closing:
                        return
                    continue
                if self.error is None and not self.cancelled:
                    self._check(cipher, *item)
        except BaseException as e:
            self.error = e

    def _check(self, cipher: Any, offset: int, plan: ChunkPlan, want: bytes) -> None:
        d = digest.new(digest.VERIFY)
        for r in plan.runs:
            data = bytearray(self.read_at(r.dest, r.length))
            cipher.decrypt(data, r.iv_sector)
            d.update(data)
        if d.digest() != want:
            raise Mismatch(offset, "read back from the output", plan)
        for dest, meta in plan.metadata:
            if self.read_at(dest, len(meta)) != meta:
                raise Mismatch(offset, f"metadata at output offset {dest} read back")

    def submit(self, offset: int, plan: ChunkPlan, want: bytes) -> None:
        if self.error is not None:
            raise self.error
        while True:
            try:
                self.queue.put((offset, plan, want), timeout=0.1)
                return
            except queue.Full:
                if self.error is not None or not self.thread.is_alive():
                    raise self.error or RuntimeError("verifier stopped") from None

    def close(self, cancel: bool = False) -> None:
        """No more chunks: wait for the verifier to check what is queued and raise what it
        found. cancel: the run is over (an error or a signal); what is queued is not checked."""
        self.cancelled = self.cancelled or cancel
        self.closing = True
        while self.thread.is_alive():
            if not cancel:
                interrupt.check()
            self.thread.join(0.1)
        if self.error is not None:
            raise self.error


def encrypt_image(image: DiskImage, container: Container, sink: Sink,
                  passphrase: bytes | bytearray, opts: StreamOptions,
                  progress: ProgressFn | None = None, *, key_material: bytes | None = None,
                  cache: Any = None) -> dict[str, Any]:
    """Stream the image through the container into the sink; returns a summary. On any error
    or signal the sink is aborted (nothing is left behind) and the error re-raised."""
    started = time.perf_counter()
    if key_material is None:
        volume_key = container.new_volume_key(passphrase)
    else:
        volume_key = container.recover_volume_key(key_material, passphrase, cache)
    try:
        with interrupt.deferred():
            summary = _Run(image, container, sink, passphrase, volume_key, opts, progress,
                           key_material, cache).run()
    except BaseException:
        sink.abort()
        raise
    finally:
        wipe(volume_key)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def space_needed(container: Container, image: DiskImage) -> int:
    """Bytes the output can take: the container's bound, or for a sparse container one from the
    source's allocated extents (a 40 GiB disk holding 22 MiB must not ask for 40 GiB free): the
    container units they touch, 1 % for tables and bitmaps, and a few units of slack."""
    bound = container.size_hint
    if not container.sparse:
        return bound
    unit = container.chunk_align
    units, last = 0, -1
    for e in image.extents():
        if e.allocated and e.length:
            first, end = max(e.offset // unit, last + 1), (e.offset + e.length - 1) // unit
            if end >= first:
                units += end - first + 1
                last = end
    data = units * unit
    return min(bound, container.prefix_size + data + data // 100 + 4 * unit + (1 << 20))


class _Run:
    """One encryption's state: its threads share it, nothing is global."""

    def __init__(self, image: DiskImage, container: Container, sink: Sink,
                 passphrase: bytes | bytearray, volume_key: bytearray, opts: StreamOptions,
                 progress: ProgressFn | None, key_material: bytes | None, cache: Any) -> None:
        self.image, self.container, self.sink = image, container, sink
        self.passphrase, self.volume_key, self.opts = passphrase, volume_key, opts
        self.progress, self.key_material, self.cache = progress, key_material, cache
        self.read_at = sink.read_back() if opts.verify else None
        self.tee = opts.verify and self.read_at is None
        self.digest = digest.DiskDigest(container.disk_size, image.virtual_size) \
            if opts.plaintext_digest else None
        self.kept = False

    def new_cipher(self) -> Any:
        c = self.container
        return make_sector_cipher(c.cipher_name, c.cipher_mode, self.volume_key, c.sector_size)

    # -- the stages ----------------------------------------------------------------------------
    def read(self, offset: int, view: memoryview) -> ChunkPlan:  # reader thread, in order
        image, n = self.image, len(view)
        allocated = not self.container.sparse or any(
            e.allocated for e in image.extents(offset, min(offset + n, image.virtual_size)))
        if allocated:
            image.read_into(offset, view)
        if self.digest is not None:
            self.digest.update(offset, view if allocated else None, n)
        return self.container.plan(offset, view if allocated else None, allocated)

    def transform_factory(self) -> Callable[[memoryview, int, ChunkPlan], Any]:
        cipher = self.new_cipher()
        check = self.new_cipher() if self.tee else None
        concurrent = self.sink.concurrent_writes and not self.opts.verify
        sink = self.sink

        def transform(view: memoryview, offset: int, plan: ChunkPlan) -> Any:
            want = digest.runs_digest(view, plan.runs) if self.opts.verify and plan.runs else None
            for r in plan.runs:
                cipher.encrypt(view[r.start : r.start + r.length], r.iv_sector)
            if check is not None and plan.runs:  # tee: decrypt a copy again before it leaves
                d = digest.new(digest.VERIFY)
                for r in plan.runs:
                    copy = bytearray(view[r.start : r.start + r.length])
                    check.decrypt(copy, r.iv_sector)
                    d.update(copy)
                if d.digest() != want:
                    raise Mismatch(offset, "decrypted again before it was sent")
                want = None
            if concurrent:  # direct I/O: each worker writes its own chunk
                for r in plan.runs:
                    sink.write(r.dest, view[r.start : r.start + r.length])
            return plan, want, concurrent

        return transform

    def write(self, offset: int, view: memoryview, meta: Any) -> None:  # this thread, in order
        plan, want, written = meta
        placements: list[tuple[int, Any]] = list(plan.metadata)
        if not written:
            placements += [(r.dest, view[r.start : r.start + r.length]) for r in plan.runs]
        placements.sort(key=lambda p: p[0])
        for dest, data in placements:
            self.sink.write(dest, data)
        if self.verifier is not None and want is not None:
            self.verifier.submit(offset, plan, want)
        if not self.kept and self.header.done():
            self._keep()

    def _keep(self) -> None:
        self.kept = True
        self.sink.keep_key_material(self.header.join())

    # -- the whole run -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        c, sink, opts = self.container, self.sink, self.opts
        sink.begin(c.prefix_size, space_needed(c, self.image))
        if self.key_material is None:
            c.prepare()  # Argon2 calibration, before the payload threads load the CPU
            self.header = Background(lambda: c.build_key_material(
                self.volume_key, self.passphrase, self.cache))
        else:
            material = self.key_material
            self.header = Background(lambda: material)
        self.verifier = ReadBackVerifier(self.read_at, self.new_cipher) \
            if self.read_at is not None else None
        chunk = max(c.chunk_align, opts.chunk_size // c.chunk_align * c.chunk_align)
        log.info("stream: %d-byte chunks, %d workers, verification %s", chunk, opts.workers,
                 ("read back" if self.read_at is not None else "tee") if opts.verify
                 else "off (--no-verify)")
        t0 = time.perf_counter()
        try:
            run_stream(c.stream_size, self.read, self.write,
                       transform_factory=self.transform_factory, chunk_size=chunk,
                       workers=opts.workers,
                       progress=phase_progress(self.progress, "encrypt", c.stream_size))
            if self.verifier is not None:
                self.verifier.close()
        except Mismatch as m:
            raise VerifyError(self._mismatch_message(m)) from None
        finally:
            if self.verifier is not None and self.verifier.thread.is_alive():
                with contextlib.suppress(BaseException):
                    self.verifier.close(cancel=True)
        log.info("stage encrypt: %.3f s for %d bytes", time.perf_counter() - t0, c.stream_size)
        if hasattr(sink, "start_writeback"):
            sink.start_writeback()  # the disk drains while the key slot is derived
        t0 = time.perf_counter()
        key_material = self.header.join()
        log.info("stage key slot: waited %.3f s for the key derivation after the stream",
                 time.perf_counter() - t0)
        t0 = time.perf_counter()
        if not self.kept:
            self._keep()
        fin = c.finish(key_material)
        for dest, data in fin.trailer:
            sink.write(dest, data)
        if opts.verify:  # on the bytes in memory, before they are placed
            c.check_prefix(fin.prefix, self.passphrase, self.volume_key, self.cache)
        sink.write_prefix(0, fin.prefix)
        if self.read_at is not None:
            for dest, data in [(0, fin.prefix), *fin.trailer]:
                if self.read_at(dest, len(data)) != data:
                    raise VerifyError(f"{sink.location}: verification failed: the "
                                      f"{len(data)} bytes at output offset {dest} read back "
                                      "differently")
        log.info("stage header: built, checked and placed in %.3f s",
                 time.perf_counter() - t0)
        self.direct = bool(getattr(sink, "direct", False))
        t0 = time.perf_counter()
        sink.finish(fin.total_size)
        log.info("stage finish: %.3f s (durable)", time.perf_counter() - t0)
        t0 = time.perf_counter()
        location = sink.commit()
        log.info("stage commit: %.3f s (%s)", time.perf_counter() - t0, location)
        # after commit: an object's bytes are in order only once the upload is complete
        out_sha = sink.output_sha256() if opts.output_digest and \
            hasattr(sink, "output_sha256") else None
        return self._summary(location, fin.total_size, out_sha)

    def _mismatch_message(self, m: Mismatch) -> str:
        where = f"the chunk at guest offset {m.offset}"
        if m.plan is not None and self.read_at is not None:
            with contextlib.suppress(Exception):  # the message is best effort, the failure is not
                where = self._first_difference(m.offset, m.plan)
        return (f"{self.sink.location}: verification failed: {where} {m.where} does not "
                "decrypt to the source's bytes")

    def _first_difference(self, offset: int, plan: ChunkPlan) -> str:
        """Re-read the source chunk (the stream has stopped) and find the first differing byte,
        as `qemu-img compare` names it."""
        assert self.read_at is not None
        cipher = self.new_cipher()
        for r in plan.runs:
            src = bytearray(r.length)
            self.image.read_into(offset + r.start, src)
            got = bytearray(self.read_at(r.dest, r.length))
            cipher.decrypt(got, r.iv_sector)
            if got != src:
                i = next(k for k in range(r.length) if got[k] != src[k])
                return f"guest byte {offset + r.start + i} (output offset {r.dest + i})"
        return f"the chunk at guest offset {offset}"

    def _summary(self, location: str, total: int, out_sha: str | None) -> dict[str, Any]:
        c, image = self.container, self.image
        d: dict[str, Any] = {
            "source": image.path, "source_format": image.format_name, "output": location,
            "output_format": "qcow2" if c.name == "qcow2" else ("vhd" if c.name == "vhd" else "raw"),
            "type": c.name, "cipher": f"{c.cipher_name}-{c.cipher_mode}",
            "key_bits": c.key_bytes * 8, "sector_size": c.sector_size,
            "virtual_size": image.virtual_size, "source_bytes_read": image.bytes_read,
            "disk_bytes": c.disk_size, "total_bytes": total,
        }
        d.update(c.summary())
        if self.digest is not None:
            d["source_sha256"] = self.digest.source_hex
            d["disk_sha256"] = self.digest.hexdigest()
            d["digests"] = (f"source_sha256: the source's {image.virtual_size} bytes; "
                            f"disk_sha256: the {c.disk_size} bytes of the encrypted disk as it "
                            "decrypts (the source, then zeros to the container's size), what "
                            "`verify` and `decrypt` report")
        if out_sha is not None:
            d["output_sha256"] = out_sha
        if image.warnings:  # shown once the run succeeded: a failure stays one line
            d["warnings"] = list(image.warnings)
        d["direct_io"] = self.direct
        d["verified"] = self.opts.verify
        d["verification"] = ("read back" if self.read_at is not None else "tee") \
            if self.opts.verify else None
        return d
