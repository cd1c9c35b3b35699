"""The `lukspack` command: parse options, call the library, render progress, map exit codes.

Exit codes: 0 success, 1 a LukspackError (one line on stderr), 2 usage error, 130 SIGINT,
143 SIGTERM. Keys are read from files or standard input (`--key-file -`), never from arguments.
The commands live in the modules named in COMMAND_MODULES; each imports what it needs when it
runs, so `lukspack --version` and `--help` start fast.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from lukspack import __version__
from lukspack.cli.progress import human, progress_bar
from lukspack.errors import Interrupted, LukspackError, exit_code

__all__ = ["cli", "main", "emit", "human", "key_from", "progress_bar", "KEY_FILE_HELP"]

KEY_FILE_HELP = "File holding the key (its whole content is the passphrase); '-' reads stdin."


class Group(click.Group):
    """A group whose command list shows each command's whole first line, not 45 characters."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=300)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


_shown: set[str] = set()  # warnings already on stderr in this run (see _show_warning)


def emit(data: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    """The result on stdout (text lines or JSON); its warnings on stderr, after it, but for
    those the library issued when they happened (before the work): they are not repeated."""
    try:
        if as_json:
            click.echo(json.dumps(data, indent=2, sort_keys=False))
        else:
            for line in lines:
                click.echo(line)
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:  # a full device, an I/O error: one line, not a traceback
        raise LukspackError(f"standard output: cannot write the result: {e.strerror}") from None
    for note in data.get("warnings", []):
        if note not in _shown:
            warnings.warn(note, stacklevel=2)


@contextmanager
def key_from(path: str, *, dek_rules: bool, size: int | None = None,
             offset: int = 0) -> Iterator[bytearray]:
    """The key file's bytes for a with-block, wiped after it (api.KeySource's). size/offset are
    cryptsetup's --keyfile-size and --keyfile-offset (commands that open images)."""
    from lukspack.api.common import KeySource

    with KeySource(path=path, size=size, offset=offset).open(dek_rules=dek_rules) as key:
        yield key


# -- commands ----------------------------------------------------------------------------------

@click.group(cls=Group,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lukspack")
def cli() -> None:
    """Turn a VM disk image into a LUKS-encrypted image, rootless, in one streaming pass."""


@cli.command()
@click.argument("file", type=click.Path())
@click.option("--for", "target", type=click.Choice(["luks", "vpc", "classic", "vhd"]),
              default="luks", show_default=True,
              help="luks: a DEK (base64 of random bytes) used as the LUKS passphrase; vpc: a "
                   "printable passphrase for qcow2+LUKS (Key Protect wraps its base64); "
                   "classic/vhd: the base64 DEK of an encrypted VHD (its decoded bytes are the "
                   "AES-XTS key).")
@click.option("--bytes", "nbytes", type=click.Choice(["32", "64"]), default=None,
              help="Random bytes in the DEK [default: 32 for luks; 64 (AES-256-XTS) for "
                   "classic/vhd, 32 gives AES-128-XTS].")
def keygen(file: str, target: str, nbytes: str | None) -> None:
    """Write a new key to FILE, mode 0600, never over an existing file ('-': standard output,
    refused on a terminal): a data encryption key (base64 of random bytes, one line, no
    newline) or, --for vpc, a random passphrase."""
    from lukspack.api import keys

    r = keys.keygen(keys.KeygenRequest(file, target, None if nbytes is None else int(nbytes)))
    click.echo(f"wrote {r.what} to {r.where}", err=True)


# -- command modules ---------------------------------------------------------------------------

# Each module in lukspack.cli named here defines register(cli) and adds its commands; they are
# imported when the group is built, and keep their heavy imports inside the commands.
COMMAND_MODULES: tuple[str, ...] = ("disk", "keyslots", "vhd", "check", "cloud", "publish",
                                     "fleet")


def _register_all() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"lukspack.cli.{name}").register(cli)
    from lukspack.cli.options import cryptsetup_spellings

    cryptsetup_spellings(cli)  # -d for --key-file, -v/--verbose and --debug, on every command


_register_all()


# -- entry point -------------------------------------------------------------------------------

def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    _shown.add(str(message))
    click.echo(f"lukspack: warning: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    """SIGINT and SIGTERM raise Interrupted in the main thread, once: the `with` blocks on the
    way out remove temporary outputs; a second signal does not interrupt that cleanup. Inside the
    streaming code the signal is recorded and raised at its next safe point (interrupt.py). Each
    call has its own Interruption, bound for the streaming code below it."""
    from lukspack.interrupt import Interruption, bound

    interruption = Interruption()

    def on_signal(signum: int, _frame: Any) -> None:
        interruption.handle(signum)

    # installed even where the shell started us with SIGINT ignored (a background job)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    warnings.showwarning = _show_warning
    _shown.clear()
    code = 0
    try:
        with bound(interruption):
            cli.main(args=argv, prog_name="lukspack", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("lukspack: interrupted", err=True)
        code = 130
    except KeyboardInterrupt:
        click.echo("lukspack: interrupted", err=True)
        code = 130
    except Interrupted as e:
        click.echo(f"lukspack: {e}", err=True)
        code = exit_code(e)
    except click.UsageError as e:  # one line, as for every other error
        where = f" (see 'lukspack {e.ctx.info_name} --help')" if e.ctx is not None and \
            e.ctx.info_name != "lukspack" else " (see 'lukspack --help')"
        click.echo(f"lukspack: usage error: {e.format_message()}{where}", err=True)
        code = 2
    except click.ClickException as e:
        e.show()
        code = e.exit_code
    except LukspackError as e:
        code = exit_code(e)  # the one mapping, as a script calling lukspack.api gets it
        click.echo(f"lukspack: {'usage error' if code == 2 else 'error'}: {e}", err=True)
    except BrokenPipeError:
        code = 1
    except MemoryError:
        click.echo("lukspack: error: out of memory", err=True)
        code = 1
    for stream in (sys.stdout, sys.stderr):  # None when the shell closed it (`>&-`)
        try:
            if stream is not None:
                stream.flush()
        except OSError:
            code = code or 1
    if code in (130, 143):
        os._exit(code)  # worker threads may still be finishing a chunk
    sys.exit(code)
