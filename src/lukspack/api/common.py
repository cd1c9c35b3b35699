"""What every job of the Python API shares: where a key comes from (`KeySource`), the one
serializer of a typed result (`Result.to_dict`, what `--json` prints) and the exit code of an
error (`lukspack.errors.exit_code`, re-exported here).

A job is one function taking a frozen request dataclass and returning a frozen result
dataclass (`lukspack.api`). Every rule of a command (which options go together, what a key
must be for its target) is checked by the job, so a script and the CLI get the same typed
errors: `UsageError` (exit 2) for requests that cannot work, another `LukspackError` (exit 1)
for what fails while the job runs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

from lukspack.errors import KeyFileError, UsageError, exit_code
from lukspack.keys import key_part, read_key_file, wipe

__all__ = ["KeySource", "Result", "exit_code"]


@dataclass(frozen=True)
class KeySource:
    """Where a key comes from: a file (`path`, '-' for standard input, asked for with echo off
    when that is a terminal) or bytes a program already holds (`data`, never shown in a repr).
    `size` and `offset` are cryptsetup's --keyfile-size and --keyfile-offset."""

    path: str | None = None
    data: bytes | None = field(default=None, repr=False)
    size: int | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise UsageError("a key comes from one place: give a key file or the key's bytes")
        if self.size is not None and self.size < 1:
            raise UsageError(f"--keyfile-size {self.size}: give a positive number of bytes")
        if self.offset < 0:
            raise UsageError(f"--keyfile-offset {self.offset}: give a number of bytes >= 0")

    @property
    def name(self) -> str:
        """How messages name the key: its file, or "key" for bytes given in memory."""
        return self.path if self.path is not None else "key"

    @contextmanager
    def open(self, *, dek_rules: bool = False) -> Iterator[bytearray]:
        """The key's bytes for a with-block, wiped after it. dek_rules: the file must hold a
        DEK (base64 text, one line, no newline), checked on the whole file."""
        partial = self.size is not None or bool(self.offset)
        if self.data is not None:
            key = bytearray(self.data)
        elif self.path == "-" and sys.stdin is not None and sys.stdin.isatty():
            key = _read_tty_key()
        else:
            assert self.path is not None
            key = read_key_file(self.path, dek_rules=dek_rules and not partial)
        if partial:
            key = key_part(key, self.size, self.offset, self.name)
        try:
            yield key
        finally:
            wipe(key)


def _read_tty_key() -> bytearray:
    """A passphrase typed at a terminal, echo off, as cryptsetup asks for it."""
    import getpass

    try:
        text = getpass.getpass("Enter passphrase: ", stream=sys.stderr)
    except EOFError:
        text = ""
    data = bytearray(text.encode())
    if not data:
        raise KeyFileError("-: no passphrase was typed")
    return data


def _plain(value: Any) -> Any:
    """A result's value as JSON has it: nested results as objects, tuples as lists."""
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Result:
    """Base of the typed results. `to_dict()` is what `--json` prints: the fields in declared
    order, those that are None left out (a field that does not apply to this output). A field
    whose JSON name is not a Python name (or is a keyword) says it in metadata {"json": NAME}.
    `from_summary` builds a result from the engine's summary and refuses a key the result does
    not declare, so a new summary field cannot reach --json without a typed field."""

    ALWAYS: ClassVar[tuple[str, ...]] = ()  # fields printed even when None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = self.__dict__[f.name]
            if value is None and f.name not in self.ALWAYS:
                continue
            out[f.metadata.get("json", f.name)] = _plain(value)
        return out

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], **extra: Any) -> Self:
        names = {f.metadata.get("json", f.name): f.name for f in fields(cls)}
        unknown = sorted(set(summary) - set(names))
        if unknown:
            raise TypeError(f"{cls.__name__} does not declare {', '.join(unknown)}")
        values = {names[k]: tuple(v) if isinstance(v, list) else v for k, v in summary.items()}
        return cls(**{**values, **extra})
