"""The streaming engine: read -> transform -> write in chunks, overlapped across threads.

    reader thread ──► [hasher thread] ──► transform pool (N threads) ──► caller's thread: write

The reader fills chunk buffers from a bounded free list, so memory is `depth` chunks whatever the
image size. The optional hasher digests plaintext in order before the in-place transform. The
transform runs in worker threads (OpenSSL via ctypes and numpy release the GIL). The calling
thread writes results in order, so an interrupt (KeyboardInterrupt, or the CLI's SIGTERM handler)
lands there; it stops the other stages within one chunk and re-raises.
"""

from __future__ import annotations

import mmap
import os
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from typing import Any

from lukspack.interrupt import Interruption, current

CHUNK_SIZE = 4 << 20
WORKERS = 2
_POLL = 0.1

Reader = Callable[[int, memoryview], Any]  # fills the chunk; returns a ticket for the transform
Transform = Callable[[memoryview, int, Any], Any]  # (chunk, offset, ticket) -> meta for the writer
Writer = Callable[[int, memoryview, Any], None]  # (offset, chunk, meta, or the ticket without one)
Progress = Callable[[int], None]


Item = tuple[int, memoryview, mmap.mmap, Any]  # (offset, chunk, its buffer, Future or ticket)


class _Stop(Exception):
    pass


def aligned_buffer(size: int) -> mmap.mmap:
    """A zeroed, writable, page-aligned buffer (anonymous memory): O_DIRECT reads and writes need
    the alignment, which a bytearray does not promise."""
    return mmap.mmap(-1, max(size, 1))


# The data threads yield to the key derivation thread: PBKDF2 for --iter-time (2 s) is the longest
# single task of an encryption and cannot be split, so it gets a core while the stream shares the
# other. Linux applies nice to single threads; elsewhere this is a no-op.
def data_thread_nice() -> int:
    """LUKSPACK_DATA_NICE (default 10), read when a stream starts."""
    return int(os.environ.get("LUKSPACK_DATA_NICE", "10"))


def _nice() -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (OSError, AttributeError):
        return None


_BASE_NICE = _nice()  # of the thread that imported lukspack (the main thread)


def lower_priority(nice: int | None = None) -> None:
    """Set the calling (data) thread to the main thread's nice + `nice` (by default
    data_thread_nice()), so that the key derivation thread gets a core. Absolute, not relative:
    threads inherit the nice value of the thread that starts them, and adding again would stack
    up to 19."""
    if nice is None:
        nice = data_thread_nice()
    if nice <= 0 or _BASE_NICE is None or not sys.platform.startswith("linux"):
        return
    target = min(19, _BASE_NICE + nice)
    current_nice = _nice()
    if current_nice is None or current_nice >= target:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), target)
    except OSError:
        pass


class _Transforms(threading.local):
    """Each worker thread's own transform, built on its first chunk."""

    fn: Transform | None = None


class _Stream:
    """One run_stream call: the reader stage (a thread), the transform stage (a pool), and the
    writer stage (the calling thread), linked by the free-buffer and ready queues."""

    def __init__(self, total: int, read: Reader, write: Writer,
                 transform_factory: Callable[[], Transform] | None, in_hash: Any, out_hash: Any,
                 chunk_size: int, workers: int, progress: Progress | None,
                 interruption: Interruption) -> None:
        self.total, self.read, self.write = total, read, write
        self.transform_factory, self.in_hash, self.out_hash = transform_factory, in_hash, out_hash
        self.chunk_size, self.progress, self.interruption = chunk_size, progress, interruption
        self.nice = data_thread_nice()
        depth = workers * 2 + 2
        self.free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(min(depth, max(1, -(-total // chunk_size)))):
            self.free.put(aligned_buffer(chunk_size))
        self.ready: queue.Queue[Item | None] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.local = _Transforms()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="lukspack-x",
                                       initializer=partial(lower_priority, self.nice)) \
            if transform_factory else None

    # -- queue operations that give up when the stream stops -----------------------------------

    def _put_ready(self, item: Item | None) -> None:
        while not self.stop.is_set():
            try:
                self.ready.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue
        raise _Stop

    def _take_free(self) -> mmap.mmap:
        while not self.stop.is_set():
            try:
                return self.free.get(timeout=_POLL)
            except queue.Empty:
                continue
        raise _Stop

    # -- stages --------------------------------------------------------------------------------

    def transform_stage(self, view: memoryview, offset: int, ticket: Any) -> Any:
        """On a pool thread: this thread's transform of one chunk."""
        fn = self.local.fn
        if fn is None:
            assert self.transform_factory is not None  # the pool exists only with a factory
            fn = self.local.fn = self.transform_factory()
        return fn(view, offset, ticket)

    def reader_stage(self) -> None:
        """On the reader thread: fill free buffers in order, hash them, hand them to the pool."""
        lower_priority(self.nice)
        try:
            for offset in range(0, self.total, self.chunk_size):
                buf = self._take_free()
                view = memoryview(buf)[: min(self.chunk_size, self.total - offset)]
                ticket = self.read(offset, view)
                if self.in_hash is not None:
                    self.in_hash.update(view)
                fut = self.pool.submit(self.transform_stage, view, offset, ticket) \
                    if self.pool else ticket
                self._put_ready((offset, view, buf, fut))
            self._put_ready(None)
        except _Stop:
            pass
        except BaseException as e:  # handed to the writer stage, which re-raises it
            self.errors.append(e)
            self.stop.set()

    def _next_ready(self) -> Item | None:
        """The next chunk in order (None at the end); raises a recorded signal or reader error."""
        while True:
            self.interruption.check()
            try:
                return self.ready.get(timeout=_POLL)
            except queue.Empty:
                if self.errors:
                    raise self.errors[0] from None

    def _result(self, fut: Any) -> Any:
        while isinstance(fut, Future) and not fut.done():
            self.interruption.check()
            wait([fut], timeout=_POLL)
        return fut.result() if isinstance(fut, Future) else fut

    def writer_stage(self) -> int:
        """On the calling thread: write the chunks in order, recycle their buffers."""
        done = 0
        while (item := self._next_ready()) is not None:
            offset, view, buf, fut = item
            meta = self._result(fut)
            if self.out_hash is not None:
                self.out_hash.update(view)
            self.write(offset, view, meta)
            done += len(view)
            self.free.put(buf)
            if self.progress is not None:
                self.progress(done)
        if self.errors:
            raise self.errors[0]
        return done

    def run(self) -> int:
        with self.interruption.deferred():  # signals are raised at the polls, never in a lock
            reader = threading.Thread(target=self.reader_stage, name="lukspack-read",
                                      daemon=True)
            reader.start()
            try:
                return self.writer_stage()
            finally:
                self.stop.set()
                while reader.is_alive():
                    reader.join(_POLL)
                if self.pool is not None:
                    self.pool.shutdown(wait=True, cancel_futures=True)


def run_stream(total: int, read: Reader, write: Writer, *,
               transform_factory: Callable[[], Transform] | None = None,
               in_hash: Any = None, out_hash: Any = None,
               chunk_size: int = CHUNK_SIZE, workers: int = WORKERS,
               progress: Progress | None = None,
               interruption: Interruption | None = None) -> int:
    """Stream `total` bytes from read() through a per-thread transform to write(), in order.

    read(offset, chunk) runs on the reader thread, in order, and may return a ticket (a plan of
    where the chunk goes). transform_factory() is called once per worker thread to build that
    thread's transform (so each thread has its own cipher contexts and scratch buffers); it gets
    the ticket and returns what the writer gets (without a transform the writer gets the
    ticket). in_hash and out_hash are hashlib objects fed the data before and after the
    transform, in order. Signals are taken from `interruption` (by default interrupt.current()).
    """
    return _Stream(total, read, write, transform_factory, in_hash, out_hash, chunk_size,
                   workers, progress,
                   current() if interruption is None else interruption).run()
