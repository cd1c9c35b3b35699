"""Signals, delivered where they are safe.

Python runs a signal handler between two bytecodes of the main thread; an exception raised there
can land inside `with lock:` before the lock's release is set up, and a queue or condition is left
locked for ever (seen here: SIGINT during `convert` left the reader thread waiting for the free
buffers' queue mutex, and the process hung). So while the streaming code runs (`deferred()`), the
CLI's handler only records the signal, and the loops of the pipeline and the engine, which wake
every 0.1 s, raise `Interrupted` at a point where no lock is held (`check()`). Outside those
regions the handler raises at once, as before.

The state lives in an `Interruption` object: the CLI's main() makes one per run and binds it
(`bound()`); the streaming code takes one as a parameter, by default `current()` (the bound one,
or a process-wide default, so a library user gets a working one without setup). Tests make their
own.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

from lukspack.errors import Interrupted


class Interruption:
    """One run's signal state: a recorded signal, and how deep the deferring regions nest."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._signum = 0
        self._depth = 0  # nesting of deferred() in the main thread
        self._handled = False  # handle() acts on the first signal only

    def deferring(self) -> bool:
        return self._depth > 0

    def request(self, signum: int) -> None:
        """Record a signal for the next check()."""
        self._signum = signum
        self._requested.set()

    def check(self) -> None:
        """Raise Interrupted if a signal was recorded (call it where no lock is held)."""
        if self._requested.is_set():
            self._requested.clear()
            raise Interrupted(self._signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals arriving inside are raised by check() calls, or when the region ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        self.check()

    def handle(self, signum: int) -> None:
        """A signal handler's body: the first signal is recorded inside deferred() and raised as
        Interrupted outside it; later ones are ignored (they must not break the cleanup)."""
        if self._handled:
            return
        self._handled = True
        if self.deferring():
            self.request(signum)
            return
        raise Interrupted(signum)


_DEFAULT = Interruption()
_CURRENT: contextvars.ContextVar[Interruption] = contextvars.ContextVar(
    "lukspack_interruption", default=_DEFAULT)


def current() -> Interruption:
    """The bound Interruption, or the process default."""
    return _CURRENT.get()


@contextlib.contextmanager
def bound(interruption: Interruption) -> Iterator[Interruption]:
    """Make `interruption` what current() returns inside the block."""
    token = _CURRENT.set(interruption)
    try:
        yield interruption
    finally:
        _CURRENT.reset(token)


# the module-level spellings act on current() (fleet's worker handler uses them)
def deferring() -> bool:
    return current().deferring()


def request(signum: int) -> None:
    current().request(signum)


def check() -> None:
    current().check()


def deferred() -> contextlib.AbstractContextManager[None]:
    return current().deferred()
