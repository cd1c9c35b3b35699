"""Commands on disk images: encrypt, verify, decrypt, info, size, convert, sample, benchmark."""

from __future__ import annotations

from typing import Any

import click

from lukspack.cli import KEY_FILE_HELP, emit, human, key_from, progress_bar
from lukspack.cli.cloud import cos_options, remote_options_from, stream_options
from lukspack.cli.options import (
    batch_option,
    check_kdf_usage,
    disk_option,
    force_option,
    input_format_option,
    json_option,
    kdf_options,
    keyfile_options,
    progress_option,
)

MiB = 1 << 20
CIPHERS = ("aes-xts-plain64",)
KEY_SIZES = (256, 512)


def _stream(verify: bool = True, as_json: bool = False, digest: bool = True) -> Any:
    from lukspack.options import StreamOptions

    return StreamOptions(verify=verify, plaintext_digest=as_json and digest,
                         output_digest=as_json and digest)


def _check_cipher(cipher: str, key_size: int) -> None:
    if cipher not in CIPHERS:
        raise click.UsageError(f"--cipher {cipher} is not supported (supported: "
                               f"{', '.join(CIPHERS)})")
    if key_size not in KEY_SIZES:
        raise click.UsageError(f"--key-size {key_size} is not supported for {cipher} "
                               f"(supported: {', '.join(map(str, KEY_SIZES))})")


@click.command()
@click.argument("source")
@click.argument("output")
@click.option("--key-file", required=True,
              help=KEY_FILE_HELP + " qcow2: UTF-8 text, no final newline (QEMU's rule); RAW: a "
                   "valid DEK; VHD: a 32 or 64-byte key or its base64.")
@click.option("--type", "luks_type", type=click.Choice(["luks1", "luks2"]), default="luks1",
              show_default=True, help="LUKS version (RAW output; qcow2 holds LUKS1).")
@click.option("--output-format", "-O", type=click.Choice(["raw", "qcow2", "vhd"]), default=None,
              help="raw: LUKS RAW; qcow2: qcow2 with LUKS inside (IBM Cloud VPC); vhd: the "
                   "vhd-util encrypted VHD (IBM Cloud classic) [default: from OUTPUT's suffix, "
                   ".qcow2 or .vhd, else raw].")
@click.option("--cipher", "-c", default="aes-xts-plain64", show_default=True,
              help="Payload cipher (aes-xts-plain64 only).")
@click.option("--key-size", "-s", type=int, default=512, show_default=True,
              help="Volume key bits (256 or 512).")
@click.option("--hash", "hash_", default="sha256", show_default=True,
              help="PBKDF2, AF and digest hash.")
@kdf_options
@click.option("--sector-size", type=click.Choice(["512", "4096"]), default="512",
              show_default=True, help="LUKS2 encryption sector size (LUKS1: 512 only).")
@click.option("--uuid", default=None, help="The LUKS header's UUID [default: random].")
@click.option("--label", default=None, help="LUKS2 header label.")
@click.option("--subsystem", default=None, help="LUKS2 header subsystem.")
@click.option("--key-slot", "-S", type=int, default=0, show_default=True,
              help="The key slot the key file opens.")
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
def encrypt(source: str, output: str, key_file: str, luks_type: str, output_format: str | None,
            cipher: str, key_size: int, hash_: str, pbkdf: str | None, iter_time: int,
            pbkdf_memory: int | None, pbkdf_parallel: int | None,
            pbkdf_force_iterations: int | None, sector_size: str, uuid: str | None,
            label: str | None, subsystem: str | None, key_slot: int, verify: bool, force: bool,
            as_json: bool, no_digest: bool, progress: bool | None, batch_mode: bool,
            input_format: str | None, disk: int | None, target: str | None,
            skip_check: bool, **cloud: Any) -> None:
    """Encrypt SOURCE (raw, VHD, VHDX, qcow2, VMDK, VDI or OVA; a file, cos://REGION/BUCKET/OBJECT
    or an http(s):// URL) into OUTPUT: LUKS1 or LUKS2 RAW, qcow2 with LUKS inside (IBM Cloud
    VPC), or the encrypted VHD (IBM Cloud classic)."""
    from lukspack.encrypt import encrypt as do_encrypt
    from lukspack.luks.format import HeaderFields, KdfOptions
    from lukspack.options import EncryptOptions

    check_kdf_usage(luks_type, hash_, pbkdf)
    _check_cipher(cipher, key_size)
    kdf = KdfOptions(hash_, iter_time, pbkdf_force_iterations, pbkdf, pbkdf_memory,
                     pbkdf_parallel)
    opts = EncryptOptions(luks_type=luks_type, kdf=kdf, sector_size=int(sector_size),
                          key_bytes=key_size // 8,
                          fields=HeaderFields(uuid, label, subsystem, key_slot),
                          output_format=output_format, input_format=input_format, disk=disk,
                          force=force, stream=_stream(verify, as_json, not no_digest),
                          target=target, skip_check=skip_check,
                          source_options=remote_options_from(**cloud))
    from lukspack.options import output_format as format_of

    sink = None
    if output.startswith("cos://"):  # streamed into a multipart upload: no local copy
        from lukspack.cli.cloud import object_sink_from

        fingerprint = {"format": format_of(output, output_format, target), "luks_type": luks_type}

        def sink() -> Any:
            return object_sink_from(source, output, fingerprint, **cloud)
    # what the key means for the output's target is keys.key_for_target's, in do_encrypt
    with key_from(key_file, dek_rules=False) as key, progress_bar(progress) as bar:
        s = do_encrypt(source, output, key, opts, bar, sink=sink,
                       protected=(("key file", key_file),))
    kind = {"qcow2": "qcow2+LUKS1", "vhd": "encrypted VHD"}.get(s["output_format"],
                                                               s["type"].upper())
    emit(s, as_json, [
        f"{s['output']}: {kind} {s['cipher']} {s['key_bits']}-bit, "
        f"{human(s['total_bytes'])} ({s['header_bytes']} header + {s['payload_bytes']} payload)",
        f"source {source} ({s['source_format']}, {human(s['virtual_size'])})"
        + (f", sha256 {s['source_sha256']}" if s.get("source_sha256") else ""),
        (f"verified ({s['verification']}): decrypts to the source" if s["verified"]
         else "not verified (--no-verify)") + f", {s['seconds']:.1f} s",
    ] + ([f"check for IBM Cloud {target}: {s['check']['PASS']} passed, "
          f"{s['check']['WARN']} warnings, {s['check']['FAIL']} failed"]
         if s.get("check") else []))


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
    from lukspack.plaintext import verify as do_verify

    if key_only:
        if source is not None:
            raise click.UsageError("--key-only decrypts nothing: it cannot compare with --source")
        from lukspack.plaintext import test_key

        with key_from(key_file, dek_rules=False, size=keyfile_size,
                      offset=keyfile_offset) as key:
            r = test_key(image, key)
        emit(r, as_json, [f"{image}: key opens {r['type'].upper()} {r['cipher']}; nothing "
                          "decrypted"] + [f"note: {n}" for n in r.get("notes", [])])
        return
    with key_from(key_file, dek_rules=False, size=keyfile_size, offset=keyfile_offset) as key, \
            progress_bar(progress) as bar:
        r = do_verify(image, key, source, _stream(), bar, input_format=input_format, disk=disk,
                      remote=remote_options_from(**cloud))
    lines = [f"{image}: key opens {r['type'].upper()} {r['cipher']}, disk sha256 "
             f"{r['disk_sha256']} ({r['disk_bytes']} bytes)"]
    rest = "; the rest decrypts to zeros" if source and r["disk_bytes"] > r["source_bytes"] else ""
    lines += [f"matches {r['source']} ({r['source_bytes']} bytes{rest})"] if source else []
    lines += [f"note: {n}" for n in r.get("notes", [])]
    emit(r, as_json, lines)


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
    from lukspack.plaintext import decrypt as do_decrypt

    with key_from(key_file, dek_rules=False, size=keyfile_size, offset=keyfile_offset) as key, \
            progress_bar(progress) as bar:
        r = do_decrypt(image, output, key, force=force, progress=bar,
                       protected=(("key file", key_file),))
    emit(r, as_json, [f"{output}: {human(r['bytes'])} RAW, disk sha256 {r['disk_sha256']}"]
         + [f"note: {n}" for n in r.get("notes", [])])


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
@click.option("--type", "luks_type", type=click.Choice(["luks1", "luks2", "vhd"]),
              default="luks1", show_default=True, help="The output: LUKS1/LUKS2 RAW or the "
              "encrypted VHD.")
@json_option
@input_format_option
@disk_option
@cos_options
def size(source: str, luks_type: str, as_json: bool, input_format: str | None,
         disk: int | None, **cloud: Any) -> None:
    """Size of the encrypted image: the documented step 4 (RAW + header, whole MiB) done right."""
    from lukspack.sizing import size_report

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
