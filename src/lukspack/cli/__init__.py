"""The `lukspack` command: parse options, call lukspack.ops, render progress, map exit codes.

Exit codes: 0 success, 1 a LukspackError (one line on stderr), 2 usage error, 130 SIGINT,
143 SIGTERM. Keys are read from files or standard input (`--key-file -`), never from arguments.
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

from lukspack import __version__, ops
from lukspack import convert as convert_mod
from lukspack.errors import Interrupted, LukspackError
from lukspack.keys import generate_dek, read_key_file, wipe, write_key_file
from lukspack.render import info_lines

KEY_FILE_HELP = "File holding the key (its whole content is the passphrase); '-' reads stdin."


# -- rendering ---------------------------------------------------------------------------------

@contextmanager
def progress_bar(enabled: bool) -> Iterator[ops.ProgressFn | None]:
    """A rich progress bar on stderr when it is a terminal; None (no output) otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(TextColumn("{task.description:>8}"), BarColumn(), DownloadColumn(binary_units=True),
                   TransferSpeedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done)

    with bar:
        yield update


def emit(data: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False))
    else:
        for line in lines:
            click.echo(line)


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@contextmanager
def key_from(path: str, *, dek_rules: bool) -> Iterator[bytearray]:
    key = read_key_file(path, dek_rules=dek_rules)
    try:
        yield key
    finally:
        wipe(key)


# -- commands ----------------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lukspack")
def cli() -> None:
    """Turn a VM disk image into a LUKS-encrypted image, rootless, in one streaming pass."""


@cli.command()
@click.argument("file", type=click.Path())
def keygen(file: str) -> None:
    """Write a new data encryption key: 32 random bytes, base64, one line, mode 0600."""
    key = generate_dek()
    try:
        write_key_file(file, key)
    finally:
        wipe(key)
    click.echo(f"wrote a 256-bit data encryption key to {file} (mode 0600)", err=True)


input_format_option = click.option(
    "--input-format", type=click.Choice(["raw", "vhd", "qcow2", "vmdk", "vhdx"]), default=None,
    help="Input container format (default: detected from the content).")


def kdf_options(f: Any) -> Any:
    """The key slot KDF options of `encrypt` and `add-key`, as cryptsetup spells them."""
    for opt in reversed([
        click.option("--pbkdf", type=click.Choice(["argon2id", "argon2i", "pbkdf2"]), default=None,
                     help="Key slot KDF [default: argon2id for LUKS2, pbkdf2 for LUKS1]."),
        click.option("--iter-time", type=click.IntRange(min=1), default=2000, show_default=True,
                     help="Milliseconds of KDF to unlock, calibrated as cryptsetup does."),
        click.option("--pbkdf-memory", type=click.IntRange(min=1), default=None,
                     help="Argon2 memory cost in KiB [default: 1048576, at most half the RAM]."),
        click.option("--pbkdf-parallel", type=click.IntRange(min=1), default=None,
                     help="Argon2 threads [default: 4, at most the CPUs]."),
        click.option("--pbkdf-force-iterations", type=click.IntRange(min=1), default=None,
                     help="Use this iteration count (Argon2: time cost) instead of calibrating."),
    ]):
        f = opt(f)
    return f


@cli.command()
@click.argument("source", type=click.Path())
@click.argument("output", type=click.Path())
@click.option("--key-file", required=True, help=KEY_FILE_HELP + " Must be a valid DEK.")
@click.option("--type", "luks_type", type=click.Choice(["luks1", "luks2"]), default="luks1",
              show_default=True, help="LUKS version.")
@click.option("--hash", "hash_", default="sha256", show_default=True,
              help="PBKDF2, AF and digest hash.")
@kdf_options
@click.option("--sector-size", type=click.Choice(["512", "4096"]), default="512",
              show_default=True, help="LUKS2 encryption sector size (LUKS1: 512 only).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Reopen the output with the key file and compare it with the source.")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on a terminal.")
@input_format_option
@click.option("--output-format", type=click.Choice(["raw", "qcow2"]), default=None,
              help="RAW LUKS, or qcow2 with LUKS inside (IBM Cloud VPC) [default: qcow2 when "
                   "OUTPUT ends in .qcow2, else raw].")
def encrypt(source: str, output: str, key_file: str, luks_type: str, hash_: str,
            pbkdf: str | None, iter_time: int, pbkdf_memory: int | None,
            pbkdf_parallel: int | None, pbkdf_force_iterations: int | None, sector_size: str,
            verify: bool, force: bool, as_json: bool, progress: bool,
            input_format: str | None, output_format: str | None) -> None:
    """Encrypt SOURCE (raw, VHD, VHDX, qcow2 or VMDK) into a LUKS image OUTPUT, aes-xts-plain64:
    LUKS1 or LUKS2 RAW, or qcow2 with LUKS1 encryption inside (IBM Cloud VPC)."""
    opts = ops.EncryptOptions(luks_type=luks_type, hash=hash_, iter_time_ms=iter_time,
                              force_iterations=pbkdf_force_iterations, pbkdf=pbkdf,
                              pbkdf_memory_kb=pbkdf_memory, pbkdf_parallel=pbkdf_parallel,
                              sector_size=int(sector_size), verify=verify, force=force,
                              input_format=input_format, output_format=output_format,
                              output_digest=as_json, plaintext_digest=as_json)
    with key_from(key_file, dek_rules=True) as key, progress_bar(progress) as bar:
        s = ops.encrypt(source, output, key, opts, bar)
    emit(s, as_json, [
        f"{output}: {'qcow2+' if s.get('output_format') == 'qcow2' else ''}"
        f"{s['type'].upper()} {s['cipher']} {s['key_bits']}-bit, "
        f"{human(s['total_bytes'])} ({s['header_bytes']} header + {s['payload_bytes']} payload)",
        f"source {source} ({s['source_format']}, {human(s['virtual_size'])})"
        + (f", sha256 {s['plaintext_sha256']}" if s["plaintext_sha256"] else ""),
        ("verified: decrypts to the source" if s["verified"] else "not verified (--no-verify)")
        + f", {s['seconds']:.1f} s",
    ])


@cli.command()
@click.argument("image", type=click.Path())
@click.option("--key-file", required=True, help=KEY_FILE_HELP)
@click.option("--source", type=click.Path(), default=None,
              help="Compare the decrypted payload with this image.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--progress/--no-progress", default=True)
@input_format_option
def verify(image: str, key_file: str, source: str | None, as_json: bool, progress: bool,
           input_format: str | None) -> None:
    """Unlock IMAGE and decrypt its whole payload; with --source, compare with it."""
    opts = ops.EncryptOptions(input_format=input_format)
    with key_from(key_file, dek_rules=False) as key, progress_bar(progress) as bar:
        r = ops.verify(image, key, source, opts, bar)
    line = f"{image}: key opens {r['type'].upper()} {r['cipher']}, payload sha256 " \
           f"{r['plaintext_sha256']}"
    emit(r, as_json, [line] + ([f"matches {source}"] if source else []))


@cli.command()
@click.argument("image", type=click.Path())
@click.argument("output", type=click.Path())
@click.option("--key-file", required=True, help=KEY_FILE_HELP)
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--progress/--no-progress", default=True)
def decrypt(image: str, output: str, key_file: str, force: bool, as_json: bool,
            progress: bool) -> None:
    """Write the decrypted payload of IMAGE to OUTPUT as RAW (mode 0600)."""
    with key_from(key_file, dek_rules=False) as key, progress_bar(progress) as bar:
        r = ops.decrypt(image, output, key, force=force, progress=bar)
    emit(r, as_json, [f"{output}: {human(r['bytes'])} RAW, sha256 {r['plaintext_sha256']}"])


@cli.command()
@click.argument("image", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@input_format_option
def info(image: str, as_json: bool, input_format: str | None) -> None:
    """Describe IMAGE: its format and sizes, VHD footer fields, or its LUKS header."""
    d = ops.info(image, input_format)
    emit(d, as_json, list(info_lines(d)))


@cli.command(name="add-key")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--key-file", required=True, help=KEY_FILE_HELP + " It must open a key slot.")
@click.option("--new-key-file", required=True, help="File holding the new key; '-' reads stdin.")
@click.option("--key-slot", type=click.IntRange(min=0), default=None,
              help="Slot to fill [default: the first free one].")
@click.option("--hash", "hash_", default=None,
              help="PBKDF2 and AF hash [LUKS2 default: sha256; LUKS1: the header's].")
@kdf_options
@click.option("--json", "as_json", is_flag=True)
def add_key(image: str, key_file: str, new_key_file: str, key_slot: int | None,
            hash_: str | None, pbkdf: str | None, iter_time: int, pbkdf_memory: int | None,
            pbkdf_parallel: int | None, pbkdf_force_iterations: int | None,
            as_json: bool) -> None:
    """Add a key slot to IMAGE (LUKS1 or LUKS2, in place), as `cryptsetup luksAddKey`."""
    from lukspack.keys import dek_rule_broken
    from lukspack.luks.format import KdfOptions
    from lukspack.luks.keyslots import add_key as do_add

    if key_file == "-" and new_key_file == "-":
        raise click.UsageError("only one of --key-file and --new-key-file can be '-' (stdin)")
    kdf = KdfOptions(hash_, iter_time, pbkdf_force_iterations, pbkdf, pbkdf_memory,  # type: ignore[arg-type]
                     pbkdf_parallel)
    with key_from(key_file, dek_rules=False) as key, key_from(new_key_file, dek_rules=False) as new:
        r = do_add(image, key, new, kdf, key_slot=key_slot)
        rule = dek_rule_broken(new)
    if rule is not None:
        warnings.warn(f"{new_key_file}: cryptsetup accepts this key, but it is not a valid "
                      f"IBM Cloud data encryption key: {rule}", stacklevel=1)
    emit(r, as_json, [f"{image}: added key slot {r['added_slot']} ({r['pbkdf']}), opened with "
                      f"slot {r['opened_slot']}; active slots: "
                      f"{', '.join(map(str, r['active_slots']))}"])


@cli.command(name="remove-key")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--key-file", required=True, help=KEY_FILE_HELP + " Its slot is removed.")
@click.option("--json", "as_json", is_flag=True)
def remove_key(image: str, key_file: str, as_json: bool) -> None:
    """Remove the key slot that --key-file opens, as `cryptsetup luksRemoveKey`; the last
    slot is never removed."""
    from lukspack.luks.keyslots import remove_key as do_remove

    with key_from(key_file, dek_rules=False) as key:
        r = do_remove(image, key)
    emit(r, as_json, [f"{image}: removed key slot {r['removed_slot']}; active slots: "
                      f"{', '.join(map(str, r['active_slots']))}"])


@cli.command()
@click.argument("source", type=click.Path())
@click.option("--type", "luks_type", type=click.Choice(["luks1", "luks2"]), default="luks1",
              show_default=True)
@click.option("--json", "as_json", is_flag=True)
@input_format_option
def size(source: str, luks_type: str, as_json: bool, input_format: str | None) -> None:
    """Size of the encrypted image: the documented step 4 (RAW + header, whole MiB) done right."""
    r = ops.size_report(source, luks_type, input_format)
    lines = [
        f"source bytes:  {r['source_bytes']}",
        f"header bytes:  {r['header_bytes']} ({r['header_bytes'] // ops.MiB} MiB {luks_type} "
        "header and key slots)",
        f"payload bytes: {r['payload_bytes']} (source rounded up to a whole MiB)",
        f"total bytes:   {r['total_bytes']}",
        f"total MiB:     {r['total_mib']}",
    ]
    if luks_type == "luks2":
        lines.append("LUKS2 (cryptsetup's default since 2.1) keeps 16 MiB before the data: two "
                     "16 KiB headers and the keyslots area; size the image as RAW + 16 MiB, "
                     "rounded up to a whole MiB")
    if not r["documented_fits"]:
        lines.append(f"note: the documented 'RAW + 4 MiB' ({r['documented_total_bytes']} bytes) is "
                     f"too small for a {luks_type} header of {r['header_bytes'] // ops.MiB} MiB: "
                     "the image would be truncated")
    emit(r, as_json, lines)


@cli.command()
@click.argument("source", type=click.Path())
@click.argument("output", type=click.Path())
@click.option("--to", type=click.Choice(list(convert_mod.CONVERT_TARGETS)), required=True)
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--progress/--no-progress", default=True)
@input_format_option
def convert(source: str, output: str, to: str, force: bool, as_json: bool, progress: bool,
            input_format: str | None) -> None:
    """Convert SOURCE to RAW, VHD (fixed or dynamic) or plain qcow2: the documented steps 1 and 2."""
    opts = ops.EncryptOptions(input_format=input_format)
    with progress_bar(progress) as bar:
        r = convert_mod.convert(source, output, to, force=force, opts=opts, progress=bar)
    emit(r, as_json, [f"{output}: {to}, {human(r['virtual_size'])} from {r['source_format']}"])


@cli.command()
@click.argument("output", type=click.Path())
@click.option("--size", "size_mib", type=click.IntRange(min=4, max=1 << 20), default=64,
              show_default=True, help="Size in MiB.")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT.")
def sample(output: str, size_mib: int, force: bool) -> None:
    """Write a sample RAW disk (MBR, one Linux partition, data and holes) to try lukspack on."""
    from lukspack.sample import write_sample

    n = write_sample(output, size_mib, force=force)
    click.echo(f"{output}: sample RAW disk of {human(n)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--threads", type=click.IntRange(min=1, max=64), default=None,
              help="Threads for the multi-threaded rows (default: all cores).")
def benchmark(as_json: bool, threads: int | None) -> None:
    """Measure PBKDF2 and AES-XTS speed in memory, like `cryptsetup benchmark`."""
    from lukspack import benchmark as bench

    r = bench.run(threads)
    n = r["threads"]
    lines = ["# Tests are approximate using memory only (no storage IO).",
             f"# AES from {r['aes_backend']}, XTS engine {r['xts_engine']}; {n} thread(s) in "
             "the last columns."]
    for k in r["pbkdf2"]:
        lines.append(f"PBKDF2-{k['hash']:<8} {k['iterations_per_second']:>9} iterations per second "
                     f"for {k['key_bits']}-bit key")
    lines.append(f"#  Algorithm |  Key | Sector |  Encryption |  Decryption |"
                 f"  Enc {n}t    |  Dec {n}t")
    for c in r["ciphers"]:
        lines.append(f"    {c['cipher']:>7}  {c['key_bits']:>4}b {c['sector_size']:>6}  "
                     f"{c['encrypt_mib_s_1t']:>7.1f} MiB/s {c['decrypt_mib_s_1t']:>7.1f} MiB/s "
                     f"{c.get(f'encrypt_mib_s_{n}t', 0):>7.1f} MiB/s "
                     f"{c.get(f'decrypt_mib_s_{n}t', 0):>7.1f} MiB/s")
    emit(r, as_json, lines)


# -- command modules ---------------------------------------------------------------------------

# Each module in lukspack.cli named here defines register(cli) and adds its commands; they are
# imported when the group is built, and keep their heavy imports inside the commands.
COMMAND_MODULES: tuple[str, ...] = ("cloud", "publish")


def _register_all() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"lukspack.cli.{name}").register(cli)


_register_all()


# -- entry point -------------------------------------------------------------------------------

_interrupted = False


def _on_signal(signum: int, _frame: Any) -> None:
    """SIGINT and SIGTERM raise Interrupted in the main thread, once: the `with` blocks on the
    way out remove temporary outputs; a second signal does not interrupt that cleanup."""
    global _interrupted
    if _interrupted:
        return
    _interrupted = True
    raise Interrupted(signum)


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    click.echo(f"lukspack: warning: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    # installed even where the shell started us with SIGINT ignored (a background job)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    warnings.showwarning = _show_warning
    code = 0
    try:
        cli.main(args=argv, prog_name="lukspack", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("lukspack: interrupted", err=True)
        code = 130
    except KeyboardInterrupt:
        click.echo("lukspack: interrupted", err=True)
        code = 130
    except Interrupted as e:
        click.echo(f"lukspack: {e}", err=True)
        code = e.exit_code
    except click.ClickException as e:
        e.show()
        code = e.exit_code
    except LukspackError as e:
        click.echo(f"lukspack: error: {e}", err=True)
        code = e.exit_code
    except BrokenPipeError:
        code = 1
    except MemoryError:
        click.echo("lukspack: error: out of memory", err=True)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if code in (130, 143):
        os._exit(code)  # worker threads may still be finishing a chunk
    sys.exit(code)
