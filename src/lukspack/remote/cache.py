"""RemoteFile: a remote object as a ByteSource, read in aligned blocks through a bounded cache.

Every read is cut into aligned blocks (RemoteOptions.block_size); a block is fetched with one
ranged GET by a fetcher (http.py, s3.py) on a small thread pool, and kept in an LRU cache bounded
in bytes (blocks in flight count once they arrive). The blocks of one read are fetched in
parallel; a read that continues the previous one (a sequential run) also starts GETs for the
next `readahead` blocks. A GET that fails in a way that may pass (5xx, a reset connection, a short
body: the fetcher raises Transient) is tried again after a pause that doubles each time, up to
`attempts` times; then one error line. A changed object (SourceChanged) is final, and every later
read raises it again: the readers never see bytes of two versions.

Memory: cache_bytes, plus the blocks in flight (at most workers + readahead blocks).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from lukspack.images.source import ByteSource
from lukspack.remote import RemoteOptions, RemoteSourceError, SourceChanged

T = TypeVar("T")


class Transient(Exception):
    """A failed GET that may pass on a retry (never leaves this package)."""


@dataclass
class Opened:
    """What the first request learnt: the size, the version pinned (an ETag or Last-Modified,
    for messages), and bytes it already holds (offset, data)."""

    size: int
    version: str | None
    head: tuple[int, bytes] | None = None


class RemoteFile(ByteSource):
    """The object a fetcher reads (fetcher: name, gets, bytes, open(), get(offset, n), close())."""

    def __init__(self, fetcher: Any, opts: RemoteOptions) -> None:
        self.fetcher, self.opts = fetcher, opts
        self.name = fetcher.name
        self.block = opts.block_size
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached = 0  # bytes in _cache
        self._pending: dict[int, Future[bytes]] = {}
        self._failed: BaseException | None = None
        self._lock = threading.Lock()
        self._next = -1  # the block after the last read: a read starting there is sequential
        self._closed = False
        self._pool: ThreadPoolExecutor | None = None
        try:
            opened = self._retry(fetcher.open, "open")
        except BaseException:
            fetcher.close()
            raise
        self.size, self.version = opened.size, opened.version
        if opened.head is not None:
            off, data = opened.head
            for i in range(off // self.block, -(-(off + len(data)) // self.block)):
                lo = i * self.block - off
                piece = data[lo : lo + self.block]
                if len(piece) == self._block_length(i):
                    self._store(i, piece)

    # -- ByteSource ------------------------------------------------------------------------------
    def readinto(self, offset: int, view: memoryview) -> int:
        end = min(offset + len(view), self.size)
        if offset >= end:
            return 0
        first, last = offset // self.block, (end - 1) // self.block
        futures = [self._block_future(i) for i in range(first, last + 1)]
        with self._lock:
            sequential = first in (self._next, self._next - 1)
            self._next = last + 1
        if sequential:
            self._read_ahead(last + 1)
        pos = offset
        for i, fut in zip(range(first, last + 1), futures, strict=True):
            data = fut.result()
            lo = pos - i * self.block
            n = min(end - pos, len(data) - lo)
            view[pos - offset : pos - offset + n] = data[lo : lo + n]
            pos += n
        return pos - offset

    def stats(self) -> dict[str, Any]:
        return {"gets": self.fetcher.gets, "bytes": self.fetcher.bytes}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._cache.clear()
            self._cached = 0
        self.fetcher.close()

    # -- blocks ----------------------------------------------------------------------------------
    def _block_length(self, i: int) -> int:
        return max(0, min(self.block, self.size - i * self.block))

    def _block_future(self, i: int) -> Future[bytes]:
        with self._lock:
            if self._failed is not None:
                raise self._failed
            data = self._cache.get(i)
            if data is not None:
                self._cache.move_to_end(i)
                done: Future[bytes] = Future()
                done.set_result(data)
                return done
            fut = self._pending.get(i)
            if fut is None:
                if self._closed:
                    raise RemoteSourceError(f"{self.name}: read after close")
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.opts.workers,
                                                    thread_name_prefix="lukspack-get")
                fut = self._pool.submit(self._fetch_block, i)
                self._pending[i] = fut
            return fut

    def _read_ahead(self, start: int) -> None:
        blocks = -(-self.size // self.block)
        ahead = min(self.opts.readahead, self.opts.cache_bytes // (2 * self.block))
        for i in range(start, min(blocks, start + ahead)):
            with self._lock:
                if i in self._cache or i in self._pending or self._failed or self._closed:
                    continue
            self._block_future(i)

    def _fetch_block(self, i: int) -> bytes:
        n = self._block_length(i)
        try:
            data = self._retry(lambda: self._get_exact(i * self.block, n),
                               f"bytes {i * self.block}-{i * self.block + n - 1}")
        except SourceChanged as e:
            with self._lock:
                self._failed = e
                self._pending.pop(i, None)
            raise
        except BaseException:
            with self._lock:
                self._pending.pop(i, None)
            raise
        with self._lock:
            self._pending.pop(i, None)
            self._store(i, data)
        return data

    def _store(self, i: int, data: bytes) -> None:
        """Keep block i (the lock held, or during __init__), evicting the least recently used."""
        if i in self._cache:
            return
        self._cache[i] = data
        self._cached += len(data)
        while self._cached > self.opts.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)

    def _get_exact(self, offset: int, n: int) -> bytes:
        data = self.fetcher.get(offset, n)
        if len(data) != n:
            raise Transient(f"short read: {len(data)} of {n} bytes")
        return bytes(data)

    def _retry(self, call: Callable[[], T], what: str) -> T:
        delay = self.opts.backoff_s
        last: Transient | None = None
        for attempt in range(1, self.opts.attempts + 1):
            try:
                return call()
            except Transient as e:
                last = e
                if attempt < self.opts.attempts:
                    time.sleep(delay)
                    delay *= 2
        raise RemoteSourceError(f"{self.name}: {what}: {last} (failed {self.opts.attempts} times)")
