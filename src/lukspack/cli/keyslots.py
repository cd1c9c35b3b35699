"""Key slot commands: add-key and remove-key, as cryptsetup's luksAddKey and luksRemoveKey."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click

from lukspack.cli import KEY_FILE_HELP, emit
from lukspack.cli.options import (
    batch_option,
    json_option,
    kdf_options,
    keyfile_options,
    progress_option,
)


@dataclass
class _BarState:
    phase: str = ""
    last: float = 0.0
    width: int = 0


@contextmanager
def kdf_progress(enabled: bool | None) -> Iterator[Any]:
    """Progress of a key derivation on stderr, as encrypt's: redrawn on a terminal, with -p a
    line every few seconds elsewhere: the phase (unlock, calibrate, key slot), the seconds so
    far and, when known, the seconds it takes."""
    from lukspack.cli import progress as p

    tty = sys.stderr.isatty()
    if enabled is False or (enabled is None and not tty):
        yield None
        return
    state = _BarState()

    def end() -> None:
        if tty and state.width:
            sys.stderr.write("\n")
            state.width = 0

    def show(phase: str, seconds: float, expected: float | None) -> None:
        if phase != state.phase:
            end()
            state.phase, state.last = phase, 0.0
        every = p.REDRAW_EVERY if tty else p.LINE_EVERY
        if state.last and seconds - state.last < every:
            return
        state.last = seconds
        text = f"{phase:>8} {seconds:5.1f} s" + (f" of about {expected:.1f} s"
                                                 if expected else "")
        if tty:
            sys.stderr.write("\r" + text + " " * max(0, state.width - len(text)))
            state.width = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    try:
        yield show
    finally:
        end()


@click.command(name="add-key")
@click.argument("image")
@click.option("--key-file", required=True, help=KEY_FILE_HELP + " It must open a key slot.")
@keyfile_options
@click.option("--new-key-file", required=True, help="File holding the new key; '-' reads stdin.")
@click.option("--key-slot", "-S", type=click.IntRange(min=0), default=None,
              help="Slot to fill [default: the first free one].")
@click.option("--hash", "hash_", default=None,
              help="PBKDF2 and AF hash [LUKS2 default: sha256; LUKS1: the header's].")
@kdf_options
@json_option
@progress_option
@batch_option
def add_key(image: str, key_file: str, keyfile_size: int | None, keyfile_offset: int,
            new_key_file: str, key_slot: int | None, hash_: str | None, pbkdf: str | None,
            iter_time: int | None, pbkdf_memory: int | None, pbkdf_parallel: int | None,
            pbkdf_force_iterations: int | None, as_json: bool, progress: bool | None,
            batch_mode: bool) -> None:
    """Add a key slot to IMAGE (LUKS1, LUKS2 or qcow2+LUKS, in place), as luksAddKey."""
    from lukspack.api import KeySource
    from lukspack.api.keyslots import AddKeyRequest
    from lukspack.api.keyslots import add_key as job
    from lukspack.luks.format import KdfOptions

    kdf = KdfOptions(iter_time_ms=iter_time or 2000, force_iterations=pbkdf_force_iterations,
                     pbkdf=pbkdf, memory_kb=pbkdf_memory, parallel=pbkdf_parallel)
    request = AddKeyRequest(image, KeySource(key_file, size=keyfile_size, offset=keyfile_offset),
                            KeySource(new_key_file), key_slot, hash_, kdf)
    with kdf_progress(progress) as bar:
        r = job(request, bar)
    emit(r.to_dict(), as_json, [f"{image}: added key slot {r.added_slot} ({r.pbkdf}), opened "
                                f"with slot {r.opened_slot}; active slots: "
                                f"{', '.join(map(str, r.active_slots))}"])


@click.command(name="remove-key")
@click.argument("image")
@click.option("--key-file", required=True, help=KEY_FILE_HELP + " Its slot is removed.")
@keyfile_options
@json_option
@batch_option
def remove_key(image: str, key_file: str, keyfile_size: int | None, keyfile_offset: int,
               as_json: bool, batch_mode: bool) -> None:
    """Remove the key slot that --key-file opens, as luksRemoveKey; never the last one."""
    from lukspack.api import KeySource
    from lukspack.api.keyslots import RemoveKeyRequest
    from lukspack.api.keyslots import remove_key as job

    key = KeySource(key_file, size=keyfile_size, offset=keyfile_offset)
    r = job(RemoveKeyRequest(image, key))
    emit(r.to_dict(), as_json, [f"{image}: removed key slot {r.removed_slot}; active slots: "
                                f"{', '.join(map(str, r.active_slots))}"])


def register(cli: click.Group) -> None:
    cli.add_command(add_key)
    cli.add_command(remove_key)
