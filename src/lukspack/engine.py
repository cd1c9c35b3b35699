"""The one encryption engine: image -> container -> sink, for every output format.

    reader thread    image.read_into (holes of sparse outputs: not read) -> container.plan
                     (runs: where each ciphertext byte goes, under which IV) -> disk digest
    worker threads   XXH3 of each chunk as read (readback.SourceDigests), encrypt each run at
                     its IV
    this thread      sink.write of runs and plaintext metadata, ascending
    KDF thread       container.build_key_material (calibration, PBKDF2/Argon2: seconds, by design)
    at the end       trailer, prefix checked in memory (unlock with the key file), prefix placed;
                     a file: prefix and trailer bytes read back, then the whole output read back
                     through the decrypting reader `verify` uses (readback.py: offsets and IVs
                     from the header and tables as written) and compared with the digests;
                     sink.finish (durable), sink.commit (published); an object: read back through
                     the reader after commit, deleted when it does not verify

A custom sink that can be read neither before nor after commit gets the weaker "tee": each chunk
decrypted again with the container's own plan before it leaves.

The engine knows no format and no destination: containers/ and sinks/ do.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from lukspack import digest
from lukspack.containers.base import ChunkPlan, Container, Finished
from lukspack.crypto.sector import SectorCipher, make_sector_cipher
from lukspack.errors import LukspackError, VerifyError
from lukspack.images import announce
from lukspack.images.base import DiskImage
from lukspack.images.source import ByteSource
from lukspack.interrupt import Interruption, current
from lukspack.keys import wipe
from lukspack.luks.kdf import KdfCache
from lukspack.options import StreamOptions
from lukspack.pipeline import run_stream
from lukspack.readback import SourceDigests, open_output, read_back
from lukspack.sinks.base import AfterCommit, BeforeCommit, Sink

ProgressFn = Callable[[str, int, int], None]
log = logging.getLogger(__name__)
T = TypeVar("T")


def phase_progress(progress: ProgressFn | None, phase: str, total: int
                   ) -> Callable[[int], None] | None:
    if progress is None:
        return None
    progress(phase, 0, total)
    return lambda done: progress(phase, done, total)


class Background(Generic[T]):
    """Run fn in a thread now; join() gives its result or raises its exception."""

    def __init__(self, fn: Callable[[], T], interruption: Interruption | None = None) -> None:
        self._interruption = current() if interruption is None else interruption
        self._value: list[T] = []  # [fn's result] once it returned
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._value.append(fn())
        except BaseException as e:  # re-raised in the caller's thread by join()
            self._error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> T:
        while self._thread.is_alive():
            self._interruption.check()
            self._thread.join(0.1)  # short waits keep the main thread responsive to signals
        if self._error is not None:
            raise self._error
        return self._value[0]


def encrypt_image(image: DiskImage, container: Container, sink: Sink,
                  passphrase: bytes | bytearray, opts: StreamOptions,
                  progress: ProgressFn | None = None, *, key_material: bytes | None = None,
                  cache: Any = None, interruption: Interruption | None = None
                  ) -> dict[str, Any]:
    """Stream the image through the container into the sink; returns a summary. On any error
    or signal (taken from `interruption`, by default interrupt.current()) the sink is aborted
    (nothing is left behind) and the error re-raised."""
    if interruption is None:
        interruption = current()
    started = time.perf_counter()
    if key_material is None:
        volume_key = container.new_volume_key(passphrase)
    else:
        volume_key = container.recover_volume_key(key_material, passphrase, cache)
    try:
        with interruption.deferred(), contextlib.ExitStack() as stack:
            if cache is None:  # the header check and the read-back reuse the build's KDF
                cache = stack.enter_context(KdfCache())
            summary = _Run(image, container, sink, passphrase, volume_key, opts, progress,
                           key_material, cache, interruption).run()
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
                 progress: ProgressFn | None, key_material: bytes | None, cache: Any,
                 interruption: Interruption) -> None:
        self.interruption = interruption
        self.image, self.container, self.sink = image, container, sink
        self.passphrase, self.volume_key, self.opts = passphrase, volume_key, opts
        self.progress, self.key_material, self.cache = progress, key_material, cache
        # through the reader: a file before commit; an object once the upload is complete; a
        # sink that declares neither gets the tee
        readback = sink.read_back() if opts.verify else None
        self.before: BeforeCommit | None = readback if isinstance(readback, BeforeCommit) \
            else None
        self.after: AfterCommit | None = readback if isinstance(readback, AfterCommit) else None
        self.before_commit = self.before is not None
        self.after_commit = self.after is not None
        self.tee = opts.verify and readback is None
        self.source_digests: SourceDigests | None = None
        self.digest = digest.DiskDigest(container.disk_size, image.virtual_size) \
            if opts.plaintext_digest else None
        self.kept = False
        self.direct = False
        self.header: Background[bytes] | None = None

    def new_cipher(self) -> SectorCipher:
        c = self.container
        return make_sector_cipher(c.cipher_name, c.cipher_mode, self.volume_key, c.sector_size)

    # -- the stages ----------------------------------------------------------------------------
    def read(self, offset: int, view: memoryview) -> ChunkPlan:  # reader thread, in order
        image, n = self.image, len(view)
        allocated = not self.container.sparse or any(
            e.allocated for e in image.extents(offset, min(offset + n, image.virtual_size)))
        if allocated:
            image.read_into(offset, view)  # which checks the source is unchanged
        else:
            image.check_unchanged()  # a RAW that shrank reads as holes: say so at once
        if self.source_digests is not None:
            self.source_digests.mark(offset, allocated)
        if self.digest is not None:
            self.digest.update(offset, view if allocated else None, n)
        return self.container.plan(offset, view if allocated else None, allocated)

    def transform_factory(self) -> Callable[[memoryview, int, ChunkPlan],
                                            tuple[ChunkPlan, bool]]:
        cipher = self.new_cipher()
        check = self.new_cipher() if self.tee else None
        concurrent = self.sink.concurrent_writes and not self.opts.verify
        sink = self.sink

        digests = self.source_digests

        def transform(view: memoryview, offset: int, plan: ChunkPlan) -> tuple[ChunkPlan, bool]:
            if digests is not None:
                digests.add(offset, view)
            want = digest.runs_digest(view, plan.runs) if check is not None and plan.runs \
                else None
            for r in plan.runs:
                cipher.encrypt(view[r.start : r.start + r.length], r.iv_sector)
            if want is not None and check is not None:  # tee: decrypt a copy again before it leaves
                d = digest.new(digest.VERIFY)
                for r in plan.runs:
                    copy = bytearray(view[r.start : r.start + r.length])
                    check.decrypt(copy, r.iv_sector)
                    d.update(copy)
                if d.digest() != want:
                    raise VerifyError(f"{sink.location}: verification failed: the chunk at "
                                      f"guest offset {offset}, decrypted again before it was "
                                      "sent, does not decrypt to the source's bytes")
            if concurrent:  # direct I/O: each worker writes its own chunk
                for r in plan.runs:
                    sink.write(r.dest, view[r.start : r.start + r.length])
            return plan, concurrent

        return transform

    def write(self, offset: int, view: memoryview, meta: tuple[ChunkPlan, bool]
              ) -> None:  # this thread, in order
        plan, written = meta
        placements: list[tuple[int, bytes | memoryview]] = list(plan.metadata)
        if not written:
            placements += [(r.dest, view[r.start : r.start + r.length]) for r in plan.runs]
        placements.sort(key=lambda p: p[0])
        for dest, data in placements:
            self.sink.write(dest, data)
        if not self.kept and self.header is not None and self.header.done():
            self._keep(self.header)

    def _keep(self, header: Background[bytes]) -> None:
        self.kept = True
        self.sink.keep_key_material(header.join())

    # -- the whole run -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        header = self._start()
        self._encrypt_stream()
        fin = self._place_header(header)
        location = self._publish(fin.total_size)
        # after commit: an object's bytes are in order only once the upload is complete
        out_sha = self.sink.output_sha256() if self.opts.output_digest else None
        return self._summary(location, fin.total_size, out_sha)

    def _start(self) -> Background[bytes]:
        """Begin the sink, announce the image, start the key derivation in the background."""
        c = self.container
        self.sink.begin(c.prefix_size, space_needed(c, self.image))
        announce(self.image)  # the checks passed (space too): its notes come before the work
        if self.key_material is None:
            c.prepare()  # Argon2 calibration, before the payload threads load the CPU
            header = self.header = Background(lambda: c.build_key_material(
                self.volume_key, self.passphrase, self.cache), self.interruption)
        else:
            material = self.key_material
            header = self.header = Background(lambda: material, self.interruption)
        return header

    def _encrypt_stream(self) -> None:
        """The payload: read, encrypt and write every chunk."""
        c, opts = self.container, self.opts
        chunk = max(c.chunk_align, opts.chunk_size // c.chunk_align * c.chunk_align)
        if opts.verify and not self.tee:
            self.source_digests = SourceDigests(c.stream_size, chunk)
        log.info("stream: %d-byte chunks, %d workers, verification %s", chunk, opts.workers,
                 ("tee" if self.tee else "read back through the reader") if opts.verify
                 else "off (--no-verify)")
        t0 = time.perf_counter()
        run_stream(c.stream_size, self.read, self.write,
                   transform_factory=self.transform_factory, chunk_size=chunk,
                   workers=opts.workers,
                   progress=phase_progress(self.progress, "encrypt", c.stream_size),
                   interruption=self.interruption)
        self.image.check_unchanged()  # after the last read, before anything is committed
        log.info("stage encrypt: %.3f s for %d bytes", time.perf_counter() - t0, c.stream_size)

    def _place_header(self, header: Background[bytes]) -> Finished:
        """Wait for the key material; write the trailer and the checked prefix."""
        c, sink = self.container, self.sink
        sink.start_writeback()  # a file's disk drains while the key slot is derived
        t0 = time.perf_counter()
        key_material = header.join()
        log.info("stage key slot: waited %.3f s for the key derivation after the stream",
                 time.perf_counter() - t0)
        t0 = time.perf_counter()
        if not self.kept:
            self._keep(header)
        fin = c.finish(key_material)
        for dest, data in fin.trailer:
            sink.write(dest, data)
        if self.opts.verify:  # on the bytes in memory, before they are placed
            c.check_prefix(fin.prefix, self.passphrase, self.volume_key, self.cache)
        sink.write_prefix(0, fin.prefix)
        if self.before is not None:
            for dest, data in [(0, fin.prefix), *fin.trailer]:
                if self.before.read_at(dest, len(data)) != data:
                    raise VerifyError(f"{sink.location}: verification failed: the "
                                      f"{len(data)} bytes at output offset {dest} read back "
                                      "differently")
        log.info("stage header: built, checked and placed in %.3f s",
                 time.perf_counter() - t0)
        return fin

    def _publish(self, total_size: int) -> str:
        """Read back before commit, make durable, commit, read back after commit."""
        sink = self.sink
        if self.before is not None:  # before anything is published
            self._read_back(self.before.source(total_size))
        self.direct = sink.direct
        t0 = time.perf_counter()
        sink.finish(total_size)
        log.info("stage finish: %.3f s (durable)", time.perf_counter() - t0)
        t0 = time.perf_counter()
        location = sink.commit()
        log.info("stage commit: %.3f s (%s)", time.perf_counter() - t0, location)
        if self.after is not None:
            try:
                self._read_back(self.after.source())
            except BaseException as e:
                note = self.after.withdraw()
                if isinstance(e, LukspackError) and note:  # one line says what is left
                    e.add_hint(note)
                raise
        return location

    def _read_back(self, source: ByteSource) -> None:
        """The output as written, through the decrypting reader, against the source's digests."""
        c, sink = self.container, self.sink
        assert self.source_digests is not None
        t0 = time.perf_counter()
        try:
            read_back(lambda: open_output(c.name, source, sink.location, self.passphrase,
                                          self.cache),
                      self.source_digests, disk_size=c.disk_size, stream_size=c.stream_size,
                      source=self.image, label=sink.location, workers=self.opts.workers,
                      progress=phase_progress(self.progress, "verify", c.stream_size),
                      interruption=self.interruption)
        finally:
            source.close()
        log.info("stage verify: read back through the %s reader in %.3f s", c.name,
                 time.perf_counter() - t0)

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
        if image.warnings:  # issued before the work too (images.announce)
            d["warnings"] = list(image.warnings)
        d["direct_io"] = self.direct
        d["verified"] = self.opts.verify
        d["verification"] = None if not self.opts.verify else "tee" if self.tee else \
            "read back" + (" after upload" if self.after_commit else "")
        return d
