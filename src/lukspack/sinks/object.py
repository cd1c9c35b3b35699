"""ObjectSink: the encrypted image streamed into an S3 multipart upload, no local copy.

Part n holds output bytes [(n-1) * part_size, n * part_size). The engine writes every byte
after the prefix once, in ascending order, and the prefix last; so the parts that hold the
prefix (part 1: LUKS header, qcow2 header and tables, and the first payload bytes, at least
5 MiB) are held in memory and sent by finish(), and every later part is sent as soon as it is
full. S3 assembles parts by number, not by arrival. Memory: the held parts, plus part size
times (concurrency + 1).

Verification without a local file: read_back() is AfterCommit (no part can be read before the
upload is complete); the server checks each part's Content-MD5; once complete, published_source() gives
the object as a ByteSource (ranged GETs, remote.RemoteFile, pinned to the ETag) and the engine
reads it back through the decrypting reader (readback.py); withdraw() deletes the object when
that fails. With verify_remote the object is also read back with parallel ranged GETs, each part
compared with the SHA-256 it was sent with, and the SHA-256 of the whole object computed from
what was read (output_sha256()). A whole-object SHA-256 cannot be computed while streaming: the
prefix is its first bytes and arrives last.

Resume: the state file (see cloud/multipart.py) keeps the upload id, part size, the parts the
server accepted (size, ETag, MD5, SHA-256), the source's identity, the output options'
fingerprint (options.fingerprint: every option that shapes the output: format, LUKS type,
cipher, key size, sector size, hash, PBKDF and its cost, UUID, label, subsystem, key slot; a
resume with any of them changed is refused before anything is streamed, naming it) and the LUKS
header area (key_material: its key slots are encrypted with the
passphrase and are public in the object anyway; for the encrypted VHD its footer, whose time
stamp and unique id a resume reuses). Never the volume key or the passphrase.
A resumed run regenerates the whole image (XTS is deterministic under the recovered volume
key) and sends only the parts the server does not hold with the same MD5.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from lukspack.cloud.errors import CloudError
from lukspack.cloud.multipart import (
    BufferPool,
    Journal,
    PartSender,
    abort_upload,
    complete_upload,
    identity_change,
    state_path,
    upload_exists,
)
from lukspack.cloud.resume import Multipart, plan_part_size
from lukspack.cloud.s3 import cloud_error
from lukspack.cloud.upload import CosOptions, connect, read_back_sha256, resumable_failure
from lukspack.errors import LukspackError
from lukspack.fingerprints import fingerprint_change
from lukspack.images.source import ByteSource
from lukspack.sinks.base import AfterCommit, ReadBack

ZEROS = bytes(1 << 20)
READ_BACK_CACHE = 16 << 20  # the block cache of the read-back through the reader


@dataclass
class ObjectSinkOptions(CosOptions):
    """CosOptions, plus what a resume must find unchanged."""

    source_identity: dict[str, Any] | None = None  # cloud.multipart.source_identity(SOURCE)
    fingerprint: dict[str, Any] | None = None  # options.fingerprint(): what shapes the output

    @classmethod
    def from_cos(cls, cos: CosOptions, *, resume: bool | None = None,
                 verify_remote: bool | None = None,
                 source_identity: dict[str, Any] | None = None,
                 fingerprint: dict[str, Any] | None = None) -> ObjectSinkOptions:
        """The sink options of an upload reached with cos (every CosOptions field copied);
        resume and verify_remote, when given, replace cos's."""
        return cls(endpoint_url=cos.endpoint_url, endpoint_type=cos.endpoint_type,
                   credentials_file=cos.credentials_file, iam_url=cos.iam_url,
                   part_size=cos.part_size, concurrency=cos.concurrency,
                   resume=cos.resume if resume is None else resume, resumable=cos.resumable,
                   state_dir=cos.state_dir,
                   verify_remote=cos.verify_remote if verify_remote is None else verify_remote,
                   source_identity=source_identity, fingerprint=fingerprint)


class ObjectSink:
    concurrent_writes = False
    direct = False  # no O_DIRECT: parts are sent from memory

    def __init__(self, location: str, options: ObjectSinkOptions | None = None) -> None:
        self.location = location
        self.options = options or ObjectSinkOptions()
        self.loc, self.endpoint, self.client = connect(location, self.options)
        self.state_file = state_path(self.loc, None, self.options.state_dir)
        self._journal = Journal.load(self.state_file)
        self.discarded_upload: str | None = None
        self.resumed = False
        if self._journal is not None:
            self._check_kept(self._journal)
        self.resume_hint: str | None = None
        self._sender: PartSender | None = None
        self._multipart: Multipart | None = None
        self._held: dict[int, bytearray] = {}
        self._cur = bytearray()
        self._fill = 0  # bytes of _cur in use
        self._buffers: BufferPool | None = None
        self._cur_n = 1
        self._pos = 0
        self._prefix_size = 0
        self._prefix_filled = 0
        self._part_size = 0
        self._total = 0
        self._sha256: str | None = None
        self._finished = self._closed = False
        self.kept_parts = 0  # parts a resumed run found on the server and did not send again

    def _check_kept(self, j: Journal) -> None:
        opts = self.options
        up = j.upload
        if not opts.resume or up.get("kind") != "stream":
            self._discard(j)
            return
        change = identity_change(up.get("source"), opts.source_identity or {})
        if change:
            raise CloudError(f"{self.location}: the source changed since the kept upload started "
                             f"({change}); run without --resume to start again")
        changed = fingerprint_change(up.get("fingerprint"), opts.fingerprint)
        if changed:  # before anything is streamed: the kept parts are of another image
            raise CloudError(f"{self.location}: the kept upload was made with other output "
                             f"options: {changed}; resume with the same options, or run "
                             "without --resume to start again")
        if j.key_material is None or not upload_exists(self.client, self.loc, up["upload_id"]):
            self._discard(j)  # nothing useful kept: start again
            return
        self.resumed = True

    def _discard(self, j: Journal) -> None:
        abort_upload(self.client, self.loc, j.upload["upload_id"])
        j.remove()
        self.discarded_upload = j.upload["upload_id"]
        self._journal = None

    @property
    def saved_key_material(self) -> bytes | None:
        """The LUKS header area a kept upload was made with: pass it to the engine
        (`encrypt(..., key_material=...)`) so it recovers the same volume key."""
        return self._journal.key_material if self.resumed and self._journal else None

    # -- the Sink interface --------------------------------------------------------------------
    def begin(self, prefix_size: int, size_hint: int) -> None:
        opts = self.options
        if self.resumed and self._journal is not None:
            up = self._journal.upload
            if (up["prefix_size"], up["size_hint"]) != (prefix_size, size_hint):
                raise CloudError(f"{self.location}: the kept upload has another layout "
                                 f"(prefix {up['prefix_size']}, size {up['size_hint']}); run "
                                 "without --resume to start again")
            mp = Multipart.resume(self.client, self.loc, self._journal)
        else:
            mp = Multipart.start(self.client, self.loc, self.state_file, {
                "version": 1, "kind": "stream", "location": str(self.loc),
                "endpoint": self.endpoint, "prefix_size": prefix_size, "size_hint": size_hint,
                "source": opts.source_identity, "fingerprint": opts.fingerprint},
                plan_part_size(max(size_hint, prefix_size), opts.part_size))
        self._multipart, self._journal, self._part_size = mp, mp.journal, mp.part_size
        ps = self._part_size
        self._sender = PartSender(self.client, self.loc, self._journal.upload["upload_id"],
                                  self._journal, opts.concurrency)
        self._prefix_size = self._pos = prefix_size
        self._cur_n = prefix_size // ps + 1
        self._buffers = BufferPool(ps)
        for n in range(1, self._cur_n):  # parts wholly inside the prefix
            self._held[n] = bytearray(ps)
        self._cur = self._buffers.take()
        self._fill = prefix_size - (self._cur_n - 1) * ps

    def write(self, offset: int, data: memoryview | bytes) -> None:
        if offset < self._pos:
            raise CloudError(f"{self.location}: write at {offset} behind {self._pos} (the object "
                             "sink takes ascending offsets only)")
        self._zeros(offset - self._pos)
        self._append(memoryview(data).cast("B"))

    def write_prefix(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self._prefix_size:
            raise CloudError(f"{self.location}: prefix bytes {offset}+{len(data)} outside "
                             f"[0, {self._prefix_size})")
        ps, view, pos = self._part_size, memoryview(data).cast("B"), offset
        while view:
            n, at = pos // ps + 1, pos % ps
            buf = self._held.get(n)
            if buf is None and n == self._cur_n:
                buf = self._cur
            if buf is None:
                raise CloudError(f"{self.location}: prefix part {n} is not held")
            take = min(len(view), ps - at)
            buf[at : at + take] = view[:take]
            view, pos = view[take:], pos + take
        self._prefix_filled += len(data)

    def read_back(self) -> ReadBack:
        """After commit only: the object through ranged GETs, deleted when it does not verify."""
        return AfterCommit(self.published_source, self.withdraw)

    def start_writeback(self) -> None:
        """Nothing to start: full parts are already on their way."""

    def keep_key_material(self, data: bytes) -> None:
        if self._journal is not None and not self.resumed:
            self._journal.set_key_material(data)

    def finish(self, total_size: int) -> None:
        if total_size < self._pos:
            raise CloudError(f"{self.location}: total size {total_size} is less than the "
                             f"{self._pos} bytes written")
        self._zeros(total_size - self._pos)
        if self._prefix_filled < self._prefix_size:
            raise CloudError(f"{self.location}: only {self._prefix_filled} of the "
                             f"{self._prefix_size} prefix bytes were written")
        if self._fill:  # the last part, shorter
            self._full(self._cur_n, self._cur[: self._fill])
            self._cur, self._fill = bytearray(), 0
        for n in sorted(self._held):
            self._send(n, self._held.pop(n))
        assert self._sender is not None
        self._sender.wait()
        self._total = total_size
        self._finished = True

    def output_sha256(self) -> str | None:
        """The SHA-256 of the stored object: known after commit() with verify_remote (read back),
        else None (a streamed object's first bytes are sent last)."""
        return self._sha256

    def commit(self) -> str:
        if not self._finished or self._sender is None or self._journal is None:
            raise CloudError(f"{self.location}: commit before finish")
        upload_id = self._journal.upload["upload_id"]
        records = self._sender.records
        complete_upload(self.client, self.loc, upload_id, records)
        self._sender.close()
        self._closed = True
        self._buffers, self._cur = None, bytearray()  # the part buffers go before any read-back
        self._journal.remove()
        if self.options.verify_remote:
            self._sha256 = read_back_sha256(
                self.client, self.loc, self._total, self._part_size, self.options.concurrency,
                {n: r.sha256 for n, r in records.items()})
        return str(self.loc)

    def published_source(self) -> ByteSource:
        """After commit(): the object as a ByteSource (ranged GETs through the block cache of
        remote.RemoteFile, pinned to the ETag it has now), for the engine's read-back. The
        read-back is sequential: a 16 MiB cache holds its read-ahead (4 blocks of 1 MiB)."""
        from lukspack.remote import RemoteOptions, open_remote

        src: ByteSource = open_remote(self.location, RemoteOptions(
            cos=self.options, workers=self.options.concurrency, cache_bytes=READ_BACK_CACHE))
        return src

    def withdraw(self) -> str:
        """After commit(): delete the object (its read-back failed); says what was done."""
        try:
            self.client.delete_object(Bucket=self.loc.bucket, Key=self.loc.key)
        except Exception as e:
            return f"deleting the object failed: {cloud_error(e, f'{self.loc}: delete object')}"
        return "the object was deleted"

    def abort(self) -> None:
        """On a failure or signal: keep the upload for --resume when the failure may pass (an
        interrupt, the network, a 5xx) and the header area is saved; else abort it."""
        if self._closed:
            return
        self._closed = True
        if self._sender is not None:
            self._sender.close()
        j = self._journal
        if j is None:
            return
        err = sys.exc_info()[1]
        if self.options.resumable and err is not None and resumable_failure(err) and \
                j.key_material is not None:
            self.resume_hint = (f"the upload is kept: run the same command with --resume to send "
                                f"the rest (state {self.state_file})")
            if isinstance(err, LukspackError):
                err.add_hint(self.resume_hint)
            return
        abort_upload(self.client, self.loc, j.upload["upload_id"])
        j.remove()

    # -- parts ---------------------------------------------------------------------------------
    def _zeros(self, n: int) -> None:
        while n > 0:
            k = min(n, len(ZEROS))
            self._append(memoryview(ZEROS)[:k])
            n -= k

    def _append(self, view: memoryview) -> None:
        ps = self._part_size
        assert self._buffers is not None
        while view:
            take = min(len(view), ps - self._fill)
            self._cur[self._fill : self._fill + take] = view[:take]
            view = view[take:]
            self._pos += take
            self._fill += take
            if self._fill == ps:
                self._full(self._cur_n, self._cur)
                self._cur_n += 1
                self._cur, self._fill = self._buffers.take(), 0

    def _full(self, n: int, buf: bytearray) -> None:
        if (n - 1) * self._part_size < self._prefix_size:
            self._held[n] = buf  # sent by finish(), once the prefix is in it
        else:
            self._send(n, buf)

    def _send(self, n: int, buf: bytearray) -> None:
        assert self._sender is not None and self._multipart is not None
        held = self._multipart.held(n, buf)  # a resumed upload's part the server holds intact
        if held is not None:
            self._sender.done(n, held)
            self.kept_parts += 1
            if self._buffers is not None:
                self._buffers.give(buf)
            return
        self._sender.submit(n, buf, self._buffers)


def open_object_sink(location: str, options: ObjectSinkOptions | None = None) -> ObjectSink:
    if options is not None and not isinstance(options, ObjectSinkOptions):
        raise CloudError(f"{location}: sink options must be ObjectSinkOptions, not "
                         f"{type(options).__name__}")
    return ObjectSink(location, options)



def open_streamed(location: str, source: str, options: ObjectSinkOptions | None = None,
                  fingerprint: dict[str, Any] | None = None, remote: Any = None) -> ObjectSink:
    """The sink for `encrypt SOURCE cos://...`: records the source's identity and the output
    options' fingerprint so that a resume finds them unchanged. With options.resume, pass
    `sink.saved_key_material` to the engine (`encrypt(..., sink=sink, key_material=...)`)."""
    from dataclasses import replace

    from lukspack.cloud.multipart import source_identity
    from lukspack.remote import is_remote, remote_identity

    ident = remote_identity(source, remote) if is_remote(source) else source_identity(source)
    opts = replace(options or ObjectSinkOptions(), source_identity=ident,
                   fingerprint=fingerprint)
    return ObjectSink(location, opts)
