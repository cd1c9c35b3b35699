"""The sink interface: where the engine stores an output image's bytes.

Every member the engine uses is declared here; the engine never asks a sink what it has
(no hasattr). A sink that has nothing to do for a member says so in its body (a no-op, None).

The engine calls, from one thread unless `concurrent_writes`:

    begin(prefix_size, size_hint)   once; size_hint is the final size when known (RAW LUKS), else
                                    an upper bound; a sink that needs room checks it here
    write(offset, data)             payload and trailer bytes, offsets ascending, all >= prefix_size
    write_prefix(offset, data)      bytes inside [0, prefix_size), once they are known (late)
    keep_key_material(data)         the container's key material (LUKS header area) as soon as the
                                    key derivation has built it, before the prefix is placed: a
                                    resumable sink saves it (it is public in the image anyway)
    start_writeback()               the stream is done: a file starts writing back what it holds
                                    while the key slot is derived; others do nothing
    finish(total_size)              all bytes are written; make them durable (fsync, complete the
                                    upload's last parts) but do not publish yet
    commit() -> str                 publish (rename into place, complete the multipart upload);
                                    returns the location
    output_sha256() -> str | None   after commit: SHA-256 of the output (a file: read again; an
                                    object: from its read-back with verify_remote, else None)
    abort()                         on any failure or signal: leave nothing behind

and reads these declared attributes:

    location            what the user named: a path, a device, cos://REGION/BUCKET/OBJECT
    concurrent_writes   write() may be called from several threads (disjoint ranges)
    direct              payload writes go through O_DIRECT (the summary's direct_io)
    saved_key_material  the key material a kept upload was made with (a resumed object), the
                        engine recovers the volume key from it; None for every other sink
    read_back()         how the output can be read back for verification, one of:
                        BeforeCommit (a file, a block device: raw bytes and a ByteSource of the
                        output before it is published), AfterCommit (an object: a ByteSource once
                        published, and its withdrawal when that read-back fails), or None (neither:
                        the engine's weaker "tee", readback.py, engine.py)

Every method raises a LukspackError subclass with one line on failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from lukspack.images.source import ByteSource

ReadAt = Callable[[int, int], bytes]  # (offset, size) -> exactly size bytes


@dataclass(frozen=True)
class BeforeCommit:
    """The output can be read back before it is published (a file, a block device)."""

    read_at: ReadAt  # the bytes as written (the engine compares the prefix and trailer)
    source: Callable[[int], ByteSource]  # the first n bytes, for the decrypting reader


@dataclass(frozen=True)
class AfterCommit:
    """The output can be read back only once published (an object)."""

    source: Callable[[], ByteSource]  # the published output, for the decrypting reader
    withdraw: Callable[[], str]  # remove it (its read-back failed); says what was done


ReadBack = BeforeCommit | AfterCommit | None  # None: no read-back, the engine tees


@runtime_checkable
class Sink(Protocol):
    location: str
    concurrent_writes: bool

    @property
    def direct(self) -> bool: ...

    @property
    def saved_key_material(self) -> bytes | None: ...

    def begin(self, prefix_size: int, size_hint: int) -> None: ...

    def write(self, offset: int, data: memoryview | bytes) -> None: ...

    def write_prefix(self, offset: int, data: bytes) -> None: ...

    def read_back(self) -> ReadBack: ...

    def keep_key_material(self, data: bytes) -> None: ...

    def start_writeback(self) -> None: ...

    def finish(self, total_size: int) -> None: ...

    def commit(self) -> str: ...

    def output_sha256(self) -> str | None: ...

    def abort(self) -> None: ...


SinkFactory = Callable[[], Sink]  # makes the sink once the run's checks passed (nothing before)
