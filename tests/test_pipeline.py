"""The streaming engine: order, digests, error propagation, bounded buffers."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from pathlib import Path

import pytest

from lukspack.pipeline import run_stream


def test_order_digests_and_transform() -> None:
    data = random.Random(3).randbytes(10 * 65536 + 123)
    out = bytearray(len(data))

    def read(off: int, view: memoryview) -> None:
        view[:] = data[off : off + len(view)]

    def factory():  # noqa: ANN202
        def transform(view: memoryview, off: int, _ticket: object) -> int:
            time.sleep(random.random() / 1000)  # finish out of order
            for i in range(len(view)):
                view[i] ^= 0xFF
            return off

        return transform

    seen: list[int] = []

    def write(off: int, view: memoryview, meta: int) -> None:
        assert meta == off
        seen.append(off)
        out[off : off + len(view)] = view

    h_in, h_out = hashlib.sha256(), hashlib.sha256()
    n = run_stream(len(data), read, write, transform_factory=factory, in_hash=h_in,
                   out_hash=h_out, chunk_size=65536, workers=3)
    assert n == len(data) and seen == sorted(seen)
    assert bytes(out) == bytes(b ^ 0xFF for b in data)
    assert h_in.digest() == hashlib.sha256(data).digest()
    assert h_out.digest() == hashlib.sha256(out).digest()


@pytest.mark.parametrize("where", ["read", "transform", "write"])
def test_errors_propagate_and_threads_stop(where: str) -> None:
    def read(off: int, view: memoryview) -> None:
        if where == "read" and off == 3 * 4096:
            raise OSError("read failed")

    def factory():  # noqa: ANN202
        def transform(view: memoryview, off: int, _ticket: object) -> None:
            if where == "transform" and off == 5 * 4096:
                raise ValueError("transform failed")

        return transform

    def write(off: int, view: memoryview, meta: object) -> None:
        if where == "write" and off == 2 * 4096:
            raise RuntimeError("write failed")

    before = threading.active_count()
    with pytest.raises((OSError, ValueError, RuntimeError), match=f"{where} failed"):
        run_stream(40 * 4096, read, write, transform_factory=factory, chunk_size=4096)
    time.sleep(0.3)
    assert threading.active_count() <= before


def test_buffers_are_bounded() -> None:
    """However long the stream, at most workers*2+2 chunk buffers exist."""
    ids: set[int] = set()

    def read(off: int, view: memoryview) -> None:
        ids.add(id(view.obj))

    run_stream(1000 * 1024, read, lambda o, v, m: None, chunk_size=1024, workers=2)
    assert len(ids) <= 6


def test_file_sink_direct_writes_and_their_fallback(tmp_path: Path) -> None:
    """Aligned payload writes go through O_DIRECT; unaligned ones (or a refused direct write)
    land through the buffered descriptor with the same bytes."""
    import os

    from lukspack.pipeline import aligned_buffer
    from lukspack.sinks.file import FileSink

    out = FileSink(str(tmp_path / "o.img"), direct=True)
    try:
        out.begin(0, 3 * 4096 + 100)
        a = aligned_buffer(8192)
        a[:] = os.urandom(8192)
        out.write(4096, memoryview(a))  # aligned: direct when the filesystem allows
        out.write(12288, memoryview(b"x" * 100))  # unaligned length: buffered
        b = bytearray(os.urandom(4096))
        out.write(0, memoryview(b)[:4096])  # bytearray memory may be unaligned: either way
        out.finish(3 * 4096 + 100)
        with open(out.tmp, "rb") as f:
            data = f.read()
        assert data == bytes(b) + bytes(a) + b"x" * 100
        assert isinstance(out.direct, bool)
    finally:
        out.abort()
    assert not list(tmp_path.iterdir())


def test_data_threads_nice_is_absolute_not_stacked() -> None:
    """A data thread started by another data thread ends at the same nice value, not at 19."""
    import os
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from lukspack import pipeline

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def outer() -> tuple[int, int]:
        pipeline.lower_priority()
        with ThreadPoolExecutor(1, initializer=pipeline.lower_priority) as pool:
            return nice(), pool.submit(nice).result()

    with ThreadPoolExecutor(1) as pool:
        got = pool.submit(outer).result()
    main = nice()
    want = min(19, main + pipeline.data_thread_nice()) if sys.platform.startswith("linux") else main
    assert got == (want, want)
    assert nice() == main  # the calling thread is untouched


def test_a_stream_raises_its_own_interruptions_signal() -> None:
    """A recorded signal of the Interruption passed in stops the stream as Interrupted (exit
    130); the process default is untouched, so the next stream runs."""
    import signal

    import pytest

    from lukspack.errors import Interrupted
    from lukspack.interrupt import Interruption, current

    mine = Interruption()
    seen: list[int] = []

    def write(offset: int, view: memoryview, meta: object) -> None:
        seen.append(offset)
        mine.request(signal.SIGINT)

    with pytest.raises(Interrupted) as e:
        run_stream(64 * 1024, lambda o, v: None, write, chunk_size=1024, interruption=mine)
    assert e.value.exit_code == 130
    assert len(seen) < 64
    assert not current().deferring()
    assert run_stream(4096, lambda o, v: None, lambda o, v, m: None, chunk_size=1024) == 4096
