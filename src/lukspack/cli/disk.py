"""Commands on disk images: encrypt, verify, decrypt, info, size, convert, sample, benchmark."""

from __future__ import annotations

from typing import Any

import click

from lukspack.cli import KEY_FILE_HELP, emit, human, progress_bar
from lukspack.cli.cloud import cos_options, remote_options_from, stream_options
from lukspack.cli.options import (
    batch_option,
    disk_option,
    force_option,
    input_format_option,
    json_option,
    kdf_options,
    keyfile_options,
    progress_option,
)

MiB = 1 << 20
# qemu-img's -O names too; vmdk, vhdx and vdi are refused by the library, naming the format
OUTPUT_FORMAT_NAMES = ["raw", "qcow2", "vhd", "luks", "vpc", "vmdk", "vhdx", "vdi"]


COS_ONLY = ("resume", "part_size", "concurrency", "state_dir", "verify_remote")


def _upload_given(cloud: dict[str, Any]) -> Any:
    """api.ObjectUpload from the transfer options given on the command line (not defaults)."""
    from lukspack.api import ObjectUpload

    ctx = click.get_current_context()
    given = {n: cloud[n] for n in COS_ONLY
             if ctx.get_parameter_source(n) not in (None, click.core.ParameterSource.DEFAULT)}
    if "part_size" in given:
        given["part_size_mib"] = given.pop("part_size")
    return ObjectUpload(**given)


@click.command()
@click.argument("source")
@click.argument("output")
@click.option("--key-file", required=True,
              help=KEY_FILE_HELP + " qcow2: UTF-8 text, no final newline (QEMU's rule); RAW: a "
                   "valid DEK; VHD: a 32 or 64-byte key or its base64.")
@click.option("--type", "luks_type", type=click.Choice(["luks1", "luks2", "luks"]), default=None,
              help="LUKS version of a RAW output; luks is cryptsetup's name for luks1 (qcow2 "
                   "holds LUKS1; the encrypted VHD none) [default: luks1].")
@click.option("--output-format", "-O", type=click.Choice(OUTPUT_FORMAT_NAMES), default=None,
              help="raw (qemu-img: luks): LUKS RAW; qcow2: qcow2 with LUKS inside (IBM Cloud "
                   "VPC); vhd (qemu-img: vpc): the vhd-util encrypted VHD (IBM Cloud classic); "
                   "vmdk, vhdx and vdi are not written [default: from OUTPUT's suffix, .qcow2 "
                   "or .vhd, else raw].")
@click.option("--cipher", "-c", default=None,
              help="Payload cipher, LUKS outputs (aes-xts-plain64 only) [default: "
                   "aes-xts-plain64].")
@click.option("--key-size", "-s", type=int, default=None,
              help="Volume key bits, LUKS outputs (256 or 512; qcow2: 512) [default: 512].")
@click.option("--hash", "hash_", default=None,
              help="PBKDF2, AF and digest hash, LUKS outputs [default: sha256].")
@kdf_options
@click.option("--sector-size", type=click.Choice(["512", "4096"]), default=None,
              help="Encryption sector size, LUKS2 RAW only (LUKS1: 512) [default: 512].")
@click.option("--uuid", default=None, help="The LUKS header's UUID [default: random].")
@click.option("--label", default=None, help="LUKS2 header label.")
@click.option("--subsystem", default=None, help="LUKS2 header subsystem.")
@click.option("--key-slot", "-S", type=int, default=None,
              help="The key slot the key file opens, LUKS outputs [default: 0].")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check the header with the key file and the payload against the source.")
@force_option
@json_option
@click.option("--no-digest", is_flag=True,
              help="With --json: skip the SHA-256 of the source and disk (0.7 s per GiB, holes "
                   "included).")
@progress_option
@batch_option
@input_format_option
@disk_option
@stream_options
@click.option("--target", type=click.Choice(["vpc", "classic"]), default=None,
              help="IBM Cloud target: check the image first (lukspack check) and write its "
                   "format (vpc: qcow2+LUKS, classic: encrypted VHD) unless -O says otherwise.")
@click.option("--skip-check", is_flag=True,
              help="With --target: do not run the check (encrypt even an image it would fail).")
def encrypt(source: str, output: str, key_file: str, luks_type: str | None,
            output_format: str | None, cipher: str | None, key_size: int | None,
            hash_: str | None, pbkdf: str | None, iter_time: int | None,
            pbkdf_memory: int | None, pbkdf_parallel: int | None,
            pbkdf_force_iterations: int | None, sector_size: str | None, uuid: str | None,
            label: str | None, subsystem: str | None, key_slot: int | None, verify: bool,
            force: bool, as_json: bool, no_digest: bool, progress: bool | None, batch_mode: bool,
            input_format: str | None, disk: int | None, target: str | None,
            skip_check: bool, **cloud: Any) -> None:
    """Encrypt SOURCE (raw, VHD, VHDX, qcow2, VMDK, VDI or OVA; a file, cos://REGION/BUCKET/OBJECT
    or an http(s):// URL) into OUTPUT: LUKS1 or LUKS2 RAW, qcow2 with LUKS inside (IBM Cloud
    VPC), or the encrypted VHD (IBM Cloud classic). An option the output format does not take
    is a usage error (the encrypted VHD takes none of the LUKS options)."""
    from lukspack import api
    from lukspack.options import header_fields, kdf_options

    req = api.EncryptRequest(
        source, output, api.KeySource(path=key_file), output_format, luks_type, cipher, key_size,
        kdf_options(hash_, iter_time, pbkdf_force_iterations, pbkdf, pbkdf_memory,
                    pbkdf_parallel), int(sector_size) if sector_size else None,
        header_fields(uuid, label, subsystem, key_slot), verify, force,
        api.json_digests(as_json, no_digest), input_format, disk, target, skip_check,
        remote_options_from(**cloud), _upload_given(cloud))
    with progress_bar(progress) as bar:
        r = api.encrypt(req, bar)
    emit(r.to_dict(), as_json, _encrypt_lines(r, source, target))


def _encrypt_lines(r: Any, source: str, target: str | None) -> list[str]:
    kind = {"qcow2": "qcow2+LUKS1", "vhd": "encrypted VHD"}.get(r.output_format,
                                                               r.kind.upper())
    return [
        f"{r.output}: {kind} {r.cipher} {r.key_bits}-bit, "
        f"{human(r.total_bytes)} ({r.header_bytes} header + {r.payload_bytes} payload)",
        f"source {source} ({r.source_format}, {human(r.virtual_size)})"
        + (f", sha256 {r.source_sha256}" if r.source_sha256 else ""),
        (f"verified ({r.verification}): decrypts to the source" if r.verified
         else "not verified (--no-verify)") + f", {r.seconds:.1f} s",
    ] + ([f"check for IBM Cloud {target}: {r.check.passed} passed, "
          f"{r.check.warned} warnings, {r.check.failed} failed"] if r.check else [])


@click.command()
@click.argument("image")
@click.option("--key-file", required=True, help=KEY_FILE_HELP)
@keyfile_options
@click.option("--source", default=None, help="Compare the decrypted disk with this image (a "
              "file, cos://... or http(s)://...).")
@json_option
@progress_option
@batch_option
@input_format_option
@disk_option
@cos_options
@click.option("--key-only", is_flag=True,
              help="Only test that the key opens IMAGE (a key slot, or the VHD key hash); decrypt "
                   "nothing, as cryptsetup open --test-passphrase. Exit 0 it opens, 1 it does not.")
def verify(image: str, key_file: str, keyfile_size: int | None, keyfile_offset: int,
           source: str | None, as_json: bool, progress: bool | None, batch_mode: bool,
           input_format: str | None, disk: int | None, key_only: bool, **cloud: Any) -> None:
    """Unlock IMAGE and decrypt its whole disk; with --source, compare it byte for byte."""
    from lukspack import api

    req = api.VerifyRequest(image, api.KeySource(path=key_file, size=keyfile_size,
                                                  offset=keyfile_offset),
                            source, input_format, disk, remote_options_from(**cloud), key_only)
    with progress_bar(False if key_only else progress) as bar:
        r = api.verify(req, bar)
    if key_only:
        lines = [f"{image}: key opens {r.kind.upper()} {r.cipher}; nothing decrypted"]
    else:
        lines = [f"{image}: key opens {r.kind.upper()} {r.cipher}, disk sha256 "
                 f"{r.disk_sha256} ({r.disk_bytes} bytes)"]
    if source and not key_only:
        assert r.disk_bytes is not None and r.source_bytes is not None
        rest = r.disk_bytes - r.source_bytes
        lines.append(f"matches {r.source} ({r.source_bytes} bytes"
                     + (f"; the other {rest} bytes of the disk decrypt to zeros)" if rest else ")"))
    emit(r.to_dict(), as_json, lines + [f"note: {n}" for n in r.notes or ()])


@click.command()
@click.argument("image")
@click.argument("output")
@click.option("--key-file", required=True, help=KEY_FILE_HELP)
@keyfile_options
@force_option
@json_option
@progress_option
@batch_option
def decrypt(image: str, output: str, key_file: str, keyfile_size: int | None,
            keyfile_offset: int, force: bool, as_json: bool, progress: bool | None,
            batch_mode: bool) -> None:
    """Write the decrypted disk of IMAGE to OUTPUT as RAW (mode 0600)."""
    from lukspack import api

    req = api.DecryptRequest(image, output, api.KeySource(path=key_file, size=keyfile_size,
                                                           offset=keyfile_offset), force)
    with progress_bar(progress) as bar:
        r = api.decrypt(req, bar)
    emit(r.to_dict(), as_json, [f"{output}: {human(r.bytes)} RAW, disk sha256 {r.disk_sha256}"]
         + [f"note: {n}" for n in r.notes or ()])


@click.command()
@click.argument("image")
@json_option
@input_format_option
@disk_option
@cos_options
def info(image: str, as_json: bool, input_format: str | None, disk: int | None,
         **cloud: Any) -> None:
    """Describe IMAGE: its format and sizes, VHD footer fields, or its LUKS header."""
    from lukspack.info import info as do_info
    from lukspack.render import info_lines

    d = do_info(image, input_format, disk, remote=remote_options_from(**cloud))
    emit(d, as_json, list(info_lines(d)))


@click.command()
@click.argument("source")
@click.option("--type", "luks_type", type=click.Choice(["luks1", "luks2", "luks", "vhd"]),
              default="luks1", show_default=True, help="The output: LUKS1/LUKS2 RAW (luks: "
              "cryptsetup's name for luks1) or the encrypted VHD.")
@json_option
@input_format_option
@disk_option
@cos_options
def size(source: str, luks_type: str, as_json: bool, input_format: str | None,
         disk: int | None, **cloud: Any) -> None:
    """Size of the encrypted image: the documented step 4 (RAW + header, whole MiB) done right."""
    from lukspack.options import luks_type_name
    from lukspack.sizing import size_report

    if luks_type != "vhd":
        luks_type = luks_type_name(luks_type)
    r = size_report(source, luks_type, input_format, disk, remote=remote_options_from(**cloud))
    if luks_type == "vhd":
        emit(r, as_json, [f"{k}: {v}" for k, v in r.items() if k not in ("source", "type")])
        return
    lines = [
        f"source bytes:  {r['source_bytes']}",
        f"header bytes:  {r['header_bytes']} ({r['header_bytes'] // MiB} MiB {luks_type} "
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
                     f"too small for a {luks_type} header of {r['header_bytes'] // MiB} MiB: "
                     "the image would be truncated")
    emit(r, as_json, lines)


@click.command()
@click.argument("source")
@click.argument("output")
@click.option("--to", type=click.Choice(["raw", "vhd-fixed", "vhd-dynamic", "qcow2"]),
              required=True, help="Output format.")
@force_option
@json_option
@progress_option
@input_format_option
@disk_option
@cos_options
def convert(source: str, output: str, to: str, force: bool, as_json: bool,
            progress: bool | None, input_format: str | None, disk: int | None,
            **cloud: Any) -> None:
    """Convert SOURCE to RAW, VHD (fixed or dynamic) or plain qcow2: the documented steps 1 and 2."""
    from lukspack.convert import convert as do_convert

    with progress_bar(progress) as bar:
        r = do_convert(source, output, to, force=force, progress=bar, input_format=input_format,
                       disk=disk, remote=remote_options_from(**cloud))
    emit(r, as_json, [f"{output}: {to}, {human(r['virtual_size'])} from {r['source_format']}"])


@click.command()
@click.argument("output")
@click.option("--size", "size_mib", type=click.IntRange(min=4, max=1 << 20), default=64,
              show_default=True, help="Size in MiB.")
@force_option
def sample(output: str, size_mib: int, force: bool) -> None:
    """Write a sample RAW disk (MBR, one Linux partition, data and holes) to try lukspack on."""
    from lukspack.sample import write_sample

    n = write_sample(output, size_mib, force=force)
    click.echo(f"{output}: sample RAW disk of {human(n)}")


@click.command()
@json_option
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


def register(cli: click.Group) -> None:
    for cmd in (encrypt, verify, decrypt, info, size, convert, sample, benchmark):
        cli.add_command(cmd)
