"""-v/--verbose and --debug: what lukspack decided and why, on stderr, never a secret.

The library logs to the `lukspack` logger (logging.getLogger("lukspack.<module>")): INFO for
its decisions (the input format and how it was found, the output format and why, the layout,
the KDF and its cost, each stage's time), DEBUG for the details behind them. Nothing is logged
unless asked: -v shows INFO, --debug DEBUG too, each line prefixed `lukspack:` (with --debug,
the seconds since start and the module). Key bytes, passphrases and volume keys are never passed
to a log call.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import click

LOGGER = "lukspack"
_started = time.time()  # record.created is wall-clock time


class _Format(logging.Formatter):
    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if self.debug:
            where = record.name.removeprefix("lukspack.")
            return f"lukspack: [{record.created - _started:7.3f} s] {where}: {msg}"
        return f"lukspack: {msg}"


class _Handler(logging.StreamHandler[TextIO]):
    """lukspack's own stderr handler: enable() finds it again by its class."""


def enable(level: int) -> None:
    """Log the lukspack logger at level (INFO: -v, DEBUG: --debug) to stderr; a second call
    lowers the level, never adds a second handler."""
    log = logging.getLogger(LOGGER)
    handler = next((h for h in log.handlers if isinstance(h, _Handler)), None)
    if handler is None:
        handler = _Handler(sys.stderr)
        log.addHandler(handler)
        log.propagate = False
    current = log.level or logging.WARNING
    level = min(level, current)
    handler.setFormatter(_Format(level <= logging.DEBUG))
    handler.setLevel(level)
    log.setLevel(level)


def _verbose(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value:
        enable(logging.INFO)


def _debug(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value:
        enable(logging.DEBUG)


def log_options() -> list[click.Option]:
    return [
        click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, is_eager=True,
                     callback=_verbose,
                     help="Say what lukspack decided and why (format, layout, KDF cost, each "
                          "stage's time) on stderr; never a secret."),
        click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True,
                     callback=_debug,
                     help="-v, and the details behind each decision; each line with the "
                          "seconds since start and its module."),
    ]


def add_log_options(cmd: click.Command) -> None:
    """-v/--verbose and --debug on a command (before or after its arguments, as cryptsetup
    takes them), unless it has them."""
    names = {o for p in cmd.params for o in getattr(p, "opts", [])}
    if "--verbose" not in names and "-v" not in names:
        cmd.params.extend(log_options())
