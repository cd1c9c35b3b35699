"""Options shared by several commands, spelled as cryptsetup and qemu-img spell them."""

from __future__ import annotations

from typing import Any

import click

INPUT_FORMATS = ["raw", "vhd", "qcow2", "vmdk", "vhdx", "vdi", "ova"]

# qemu-img's -f names: vpc is its VHD; luks (a LUKS image) is a usage error saying to decrypt
INPUT_ALIASES = {"vpc": "vhd", "luks": "luks"}


def _input_format(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value == "luks":
        raise click.UsageError("-f luks names an encrypted image; a source is read as a plain "
                               "disk: decrypt it first (lukspack decrypt IMAGE OUT.raw "
                               "--key-file KEY)")
    return INPUT_ALIASES.get(value, value) if value is not None else None


input_format_option = click.option(
    "--input-format", "-f", type=click.Choice(INPUT_FORMATS + list(INPUT_ALIASES)), default=None,
    callback=_input_format,
    help="Input container format; vpc is qemu-img's name for vhd (default: detected from the "
         "content; luks: an encrypted source is refused).")

progress_option = click.option(
    "--progress/--no-progress", "-p", default=None,
    help="Progress on stderr [default: on a terminal; -p also prints a line every few seconds "
         "when stderr is not a terminal].")

json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")

force_option = click.option("--force", is_flag=True,
                            help="Replace an existing OUTPUT (a block device: write onto it); "
                                 "a symbolic link is replaced itself, not the file it points to "
                                 "(a link to a block device: the device is written).")

batch_option = click.option("--batch-mode", "-q", is_flag=True, hidden=False,
                            help="Accepted for cryptsetup users: lukspack never asks.")


def keyfile_options(f: Any) -> Any:
    """cryptsetup's --keyfile-size/-l and --keyfile-offset, for commands that open an image."""
    f = click.option("--keyfile-offset", type=click.IntRange(min=0), default=0,
                     help="Skip this many bytes at the start of the key file.")(f)
    return click.option("--keyfile-size", "-l", type=click.IntRange(min=1), default=None,
                        help="Read at most this many bytes of the key file.")(f)


def kdf_options(f: Any) -> Any:
    """The key slot KDF options of `encrypt` and `add-key`, as cryptsetup spells them."""
    for opt in reversed([
        click.option("--pbkdf", type=click.Choice(["argon2id", "argon2i", "pbkdf2"]), default=None,
                     help="Key slot KDF [default: argon2id for LUKS2, pbkdf2 for LUKS1]."),
        click.option("--iter-time", "-i", type=click.IntRange(min=1), default=None,
                     help="Milliseconds of KDF to unlock, calibrated as cryptsetup does "
                          "[default: 2000]."),
        click.option("--pbkdf-memory", type=click.IntRange(min=1), default=None,
                     help="Argon2 memory cost in KiB [default: 1048576, at most half the RAM]."),
        click.option("--pbkdf-parallel", type=click.IntRange(min=1), default=None,
                     help="Argon2 threads [default: 4, at most the CPUs]."),
        click.option("--pbkdf-force-iterations", type=click.IntRange(min=1), default=None,
                     help="Use this iteration count (Argon2: time cost) instead of calibrating."),
    ]):
        f = opt(f)
    return f


disk_option = click.option("--disk", type=click.IntRange(min=0), default=None,
                           help="Which disk of an OVA with several (0 is the first).")


def cryptsetup_spellings(group: click.Group) -> None:
    """What a cryptsetup user types first, on every command of the group (and its groups):
    -d for --key-file (cryptsetup's short option), and -v/--verbose and --debug (cli/logs.py),
    which the group takes too (`lukspack -v encrypt ...`)."""
    from lukspack.cli.logs import add_log_options

    add_log_options(group)
    for cmd in list(group.commands.values()):
        if isinstance(cmd, click.Group):
            cryptsetup_spellings(cmd)
        for p in cmd.params:
            if isinstance(p, click.Option) and "--key-file" in p.opts and "-d" not in p.opts:
                p.opts.append("-d")
        add_log_options(cmd)
