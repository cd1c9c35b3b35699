"""Progress on stderr: a line redrawn in place on a terminal; with -p and stderr not a terminal,
a line every few seconds, as `qemu-img -p` and `dd status=progress` do. Binary units throughout
(KiB, MiB, GiB, and MiB/s); no ETA until the rate has been measured over a few seconds of real
progress (the key derivation at the start is not the stream's speed)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

ProgressFn = Callable[[str, int, int], None]
LINE_EVERY = 5.0  # seconds between lines when stderr is not a terminal
REDRAW_EVERY = 0.2
ETA_AFTER = 2.0  # seconds of progress before an ETA is shown


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Renderer:
    def __init__(self, stream: TextIO, interactive: bool) -> None:
        self.stream, self.interactive = stream, interactive
        self.phase = ""
        self.t0 = self.first = self.last = 0.0
        self.first_done = 0
        self.width = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase != self.phase:
            self.end_line()
            self.phase, self.t0, self.first, self.first_done, self.last = phase, now, 0.0, 0, 0.0
        if done and not self.first:
            self.first, self.first_done = now, done
        every = REDRAW_EVERY if self.interactive else LINE_EVERY
        if done < total and now - self.last < every:
            return
        self.last = now
        self.draw(self.line(done, total, now), final=done >= total)

    def line(self, done: int, total: int, now: float) -> str:
        pct = 100.0 * done / total if total else 100.0
        text = f"{self.phase:>8} {pct:5.1f}% {human(done)} of {human(total)}"
        span = now - self.first if self.first else 0.0
        if span > 0.5:
            rate = (done - self.first_done) / span
            text += f", {human(rate)}/s"
            if span >= ETA_AFTER and rate > 0 and done < total:
                left = int((total - done) / rate)
                text += f", {left // 60}:{left % 60:02d} left"
        return text

    def draw(self, text: str, final: bool) -> None:
        if self.interactive:
            pad = " " * max(0, self.width - len(text))
            self.stream.write("\r" + text + pad)
            self.width = len(text)
            if final:
                self.stream.write("\n")
                self.width = 0
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end_line(self) -> None:
        if self.interactive and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


@contextmanager
def progress_bar(enabled: bool | None) -> Iterator[ProgressFn | None]:
    """enabled None (the default): progress on a terminal only; True (-p): lines when stderr
    is not a terminal; False: none."""
    tty = sys.stderr.isatty()
    if enabled is False or (enabled is None and not tty):
        yield None
        return
    r = Renderer(sys.stderr, tty)
    try:
        yield r
    finally:
        r.end_line()
