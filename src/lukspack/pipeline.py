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
from typing import Any

from lukspack import interrupt

CHUNK_SIZE = 4 << 20
WORKERS = 2
_POLL = 0.1

Reader = Callable[[int, memoryview], Any]  # fills the chunk; returns a ticket for the transform
Transform = Callable[[memoryview, int, Any], Any]  # (chunk, offset, ticket) -> meta for the writer
Writer = Callable[[int, memoryview, Any], None]  # (offset, chunk, meta, or the ticket without one)
Progress = Callable[[int], None]


class _Stop(Exception):
    pass


def aligned_buffer(size: int) -> mmap.mmap:
    """A zeroed, writable, page-aligned buffer (anonymous memory): O_DIRECT reads and writes need
    the alignment, which a bytearray does not promise."""
    return mmap.mmap(-1, max(size, 1))


# The data threads yield to the key derivation thread: PBKDF2 for --iter-time (2 s) is the longest
# single task of an encryption and cannot be split, so it gets a core while the stream shares the
# other. Linux applies nice to single threads; elsewhere this is a no-op.
DATA_THREAD_NICE = int(os.environ.get("LUKSPACK_DATA_NICE", "10"))


def _nice() -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (OSError, AttributeError):
        return None


_BASE_NICE = _nice()  # of the thread that imported lukspack (the main thread)


def lower_priority() -> None:
    """Set the calling (data) thread to the main thread's nice + DATA_THREAD_NICE, so that the key
    derivation thread gets a core. Absolute, not relative: threads inherit the nice value of the
    thread that starts them, and adding again would stack up to 19."""
    if DATA_THREAD_NICE <= 0 or _BASE_NICE is None or not sys.platform.startswith("linux"):
        return
    target = min(19, _BASE_NICE + DATA_THREAD_NICE)
    current = _nice()
    if current is None or current >= target:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), target)
    except OSError:
        pass


def run_stream(total: int, read: Reader, write: Writer, *,
               transform_factory: Callable[[], Transform] | None = None,
               in_hash: Any = None, out_hash: Any = None,
               chunk_size: int = CHUNK_SIZE, workers: int = WORKERS,
               progress: Progress | None = None) -> int:
    """Stream `total` bytes from read() through a per-thread transform to write(), in order.

    read(offset, chunk) runs on the reader thread, in order, and may return a ticket (a plan of
    where the chunk goes). transform_factory() is called once per worker thread to build that
    thread's transform (so each thread has its own cipher contexts and scratch buffers); it gets
    the ticket and returns what the writer gets (without a transform the writer gets the
    ticket). in_hash and out_hash are hashlib objects fed the data before and after the
    transform, in order.
    """
    depth = workers * 2 + 2
    free: queue.Queue[mmap.mmap] = queue.Queue()
    for _ in range(min(depth, max(1, -(-total // chunk_size)))):
        free.put(aligned_buffer(chunk_size))
    stop = threading.Event()
    errors: list[BaseException] = []
    ready: queue.Queue[tuple[int, memoryview, mmap.mmap, Any] | None] = queue.Queue(maxsize=depth)
    local = threading.local()

    def put(q: queue.Queue[Any], item: Any) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue
        raise _Stop

    def take_free() -> mmap.mmap:
        while not stop.is_set():
            try:
                return free.get(timeout=_POLL)
            except queue.Empty:
                continue
        raise _Stop

    def do_transform(view: memoryview, offset: int, ticket: Any) -> Any:
        fn = getattr(local, "fn", None)
        if fn is None:
            fn = local.fn = transform_factory()  # type: ignore[misc]
        return fn(view, offset, ticket)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="lukspack-x",
                              initializer=lower_priority) if transform_factory else None

    def produce() -> None:
        lower_priority()
        try:
            for offset in range(0, total, chunk_size):
                buf = take_free()
                view = memoryview(buf)[: min(chunk_size, total - offset)]
                ticket = read(offset, view)
                if in_hash is not None:
                    in_hash.update(view)
                fut = pool.submit(do_transform, view, offset, ticket) if pool else ticket
                put(ready, (offset, view, buf, fut))
            put(ready, None)
        except _Stop:
            pass
        except BaseException as e:  # handed to the writer thread, which re-raises it
            errors.append(e)
            stop.set()

    with interrupt.deferred():  # signals are raised at the polls below, never inside a lock
        reader = threading.Thread(target=produce, name="lukspack-read", daemon=True)
        reader.start()
        done = 0
        try:
            while True:
                interrupt.check()
                try:
                    item = ready.get(timeout=_POLL)
                except queue.Empty:
                    if errors:
                        raise errors[0] from None
                    continue
                if item is None:
                    break
                offset, view, buf, fut = item
                while isinstance(fut, Future) and not fut.done():
                    interrupt.check()
                    wait([fut], timeout=_POLL)
                meta = fut.result() if isinstance(fut, Future) else fut
                if out_hash is not None:
                    out_hash.update(view)
                write(offset, view, meta)
                done += len(view)
                free.put(buf)
                if progress is not None:
                    progress(done)
            if errors:
                raise errors[0]
        finally:
            stop.set()
            while reader.is_alive():
                reader.join(_POLL)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    return done
