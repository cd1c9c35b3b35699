"""Signals, delivered where they are safe.

Python runs a signal handler between two bytecodes of the main thread; an exception raised there
can land inside `with lock:` before the lock's release is set up, and a queue or condition is left
locked for ever (seen here: SIGINT during `convert` left the reader thread waiting for the free
buffers' queue mutex, and the process hung). So while the streaming code runs (`deferred()`), the
CLI's handler only records the signal, and the loops of the pipeline and the engine, which wake
every 0.1 s, raise `Interrupted` at a point where no lock is held (`check()`). Outside those
regions the handler raises at once, as before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from lukspack.errors import Interrupted

_requested = threading.Event()
_signum = [0]
_depth = [0]  # nesting of deferred() in the main thread


def deferring() -> bool:
    return _depth[0] > 0


def request(signum: int) -> None:
    """Record a signal for the next check()."""
    _signum[0] = signum
    _requested.set()


def check() -> None:
    """Raise Interrupted if a signal was recorded (call it where no lock is held)."""
    if _requested.is_set():
        _requested.clear()
        raise Interrupted(_signum[0])


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Signals arriving inside are raised by check() calls, or when the region ends."""
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
    check()
