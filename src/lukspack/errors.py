"""One exception base; the CLI turns any LukspackError into one line on stderr and exit code 1.

Every message names the file, the field and the bad value where there is one.
"""

from __future__ import annotations


class LukspackError(Exception):
    """Base of every error lukspack reports to a user. `hints` are what the user can do about it
    (add_hint()); str() is the message and the hints on one line, joined by "; "."""

    exit_code = 1
    hints: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """The message without the hints."""
        return super().__str__()

    def add_hint(self, hint: str) -> None:
        self.hints = (*self.hints, hint)

    def __str__(self) -> str:
        return "; ".join((self.message, *self.hints))


class UsageError(LukspackError):
    """Options that cannot work together or name something unknown (`--pbkdf argon2id` with
    LUKS1, an unknown `--hash`): a usage error, exit code 2, still one line."""

    exit_code = 2


class FormatError(LukspackError):
    """An input is malformed: bad magic, checksum, size, offset, table."""


class SourceChanged(LukspackError):
    """A source was truncated, grew or was written to while it was read: what was read is not
    one disk, so nothing made from it is kept."""


class UnsupportedError(LukspackError):
    """An input is valid but uses a feature lukspack does not handle."""


class KeyFileError(LukspackError):
    """A key file cannot be read or breaks the DEK rules."""


class WrongKeyError(LukspackError):
    """No key slot opens with the given passphrase."""


class OutputError(LukspackError):
    """The output cannot be created: exists, is the source, no space, no permission."""


class VerifyError(LukspackError):
    """The written image does not decrypt to the source."""


class BootTestFailed(LukspackError):
    """`boot-test`: the seed's marker did not reach the serial console (BootResult.raise_on_fail);
    exit code 1, like a FAIL of `check`."""

    exit_code = 1


class Interrupted(LukspackError):
    """Work stopped by a signal; exit code 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


def exit_code(error: BaseException) -> int:
    """The one mapping of an error to the process's exit code, for the CLI and for scripts:
    a LukspackError's own (1; UsageError 2; Interrupted 130 or 143), 130 for KeyboardInterrupt,
    1 for anything else."""
    if isinstance(error, LukspackError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 130
    return 1
