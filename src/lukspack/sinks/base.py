"""The sink interface: where the engine stores an output image's bytes.

The engine calls, from one thread unless `concurrent_writes`:

    begin(prefix_size, size_hint)   once; size_hint is the final size when known (RAW LUKS), else
                                    an upper bound; a sink that needs room checks it here
    write(offset, data)             payload and trailer bytes, offsets ascending, all >= prefix_size
    write_prefix(offset, data)      bytes inside [0, prefix_size), once they are known (late)
    read_back() -> ReadAt | None    a reader of what was written, before commit (the engine
                                    compares the prefix and trailer bytes); None when the sink
                                    cannot read back before commit (an object)
    output_source(size)             (with read_back) the output as a ByteSource before commit: the
                                    engine reads it back through the decrypting reader
    published_source(), withdraw()  (an object, optional) the output as a ByteSource after commit,
                                    and its removal when that read-back fails; a sink with
                                    neither way gets the weaker "tee" (readback.py, engine.py)
    keep_key_material(data)        the container's key material (LUKS header area) as soon as the
                                    key derivation has built it, before the prefix is placed: a
                                    resumable sink saves it (it is public in the image anyway)
    finish(total_size)              all bytes are written; make them durable (fsync, complete the
                                    upload's last parts) but do not publish yet
    commit() -> str                 publish (rename into place, complete the multipart upload);
                                    returns the location
    abort()                         on any failure or signal: leave nothing behind

Every method raises a LukspackError subclass with one line on failure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

ReadAt = Callable[[int, int], bytes]  # (offset, size) -> exactly size bytes


class Sink(Protocol):
    location: str  # what the user named: a path, a device, cos://REGION/BUCKET/OBJECT
    concurrent_writes: bool  # write() may be called from several threads (disjoint ranges)

    def begin(self, prefix_size: int, size_hint: int) -> None: ...

    def write(self, offset: int, data: memoryview | bytes) -> None: ...

    def write_prefix(self, offset: int, data: bytes) -> None: ...

    def read_back(self) -> ReadAt | None: ...

    def keep_key_material(self, data: bytes) -> None: ...

    def finish(self, total_size: int) -> None: ...

    def commit(self) -> str: ...

    def abort(self) -> None: ...
