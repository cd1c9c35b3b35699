"""Options of the commands, as small typed parts: the KDF, the stream, the output.

`EncryptOptions` holds a `KdfOptions` (the key slot KDF, as cryptsetup spells it) and a
`StreamOptions` (chunking, threads, verification, digests) rather than copies of their fields.
Its output options are None unless asked for: `for_format` decides, for the output format, which
of them apply (one that does not is a usage error naming the format, for the CLI, `fleet` and the
Python API alike) and fills in the defaults; `fingerprint` is what a resumed upload must find
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from lukspack.errors import UsageError
from lukspack.fingerprints import fingerprint_change  # re-exported: options' public name
from lukspack.luks.format import HeaderFields, KdfOptions
from lukspack.pipeline import CHUNK_SIZE, WORKERS

if TYPE_CHECKING:  # the name for checkers only (sinks.object does not import this module)
    from lukspack.sinks.object import ObjectSinkOptions

OUTPUT_FORMATS = ("raw", "qcow2", "vhd")
# qemu-img's names (-O) for what lukspack writes: vpc is its VHD, luks its LUKS RAW
FORMAT_ALIASES = {"vpc": "vhd", "luks": "raw"}
NOT_WRITTEN = ("vmdk", "vhdx", "vdi", "qed", "parallels", "cloop", "dmg", "bochs")
LUKS_TYPES = ("luks1", "luks2")
LUKS_TYPE_ALIASES = {"luks": "luks1"}  # cryptsetup's --type luks
CIPHERS = ("aes-xts-plain64",)
KEY_SIZES = (256, 512)
FORMAT_NAMES = {"raw": "LUKS RAW", "qcow2": "qcow2+LUKS", "vhd": "encrypted VHD"}
_WHY_NOT = {
    "vhd": "the encrypted VHD (IBM Cloud classic) has no LUKS header and no key slots: its "
           "AES-XTS key is the key file's 32 or 64 bytes",
    "qcow2": "qcow2+LUKS holds a LUKS1 header with a 512-bit aes-xts-plain64 key and 512-byte "
             "sectors, as qemu writes it",
}


@dataclass(frozen=True)
class StreamOptions:
    chunk_size: int = CHUNK_SIZE
    workers: int = WORKERS
    verify: bool = True
    # SHA-256 of the disk while it streams (0.7 s per GiB here), for --json; verification
    # compares a faster digest of its own (digest.py)
    plaintext_digest: bool = True
    output_digest: bool = False  # SHA-256 of the whole output, for --json


@dataclass(frozen=True)
class EncryptOptions:
    # None: not asked for; for_format() gives the format's default (luks1, aes-xts-plain64,
    # 512-bit key, 512-byte sectors, cryptsetup's KDF, a random UUID, key slot 0)
    luks_type: str | None = None  # luks1 | luks2 (luks: cryptsetup's alias for luks1)
    kdf: KdfOptions | None = None
    sector_size: int | None = None
    key_bytes: int | None = None  # volume key (aes-xts-plain64: 64 = two AES-256 keys)
    fields: HeaderFields | None = None  # --uuid, --label, --subsystem, --key-slot
    cipher: str | None = None
    output_format: str | None = None  # raw | qcow2 | vhd (or vpc, luks); None: from the name
    input_format: str | None = None
    disk: int | None = None  # which disk of an OVA
    force: bool = False
    stream: StreamOptions = field(default_factory=StreamOptions)
    target: str | None = None  # vpc | classic: check the source first (check/), pick the format
    skip_check: bool = False
    sink_options: ObjectSinkOptions | None = None  # an object-storage output's (cos://)
    source_options: Any = None  # a remote source's (remote.RemoteOptions; None: from the env)


TARGET_FORMATS = {"vpc": "qcow2", "classic": "vhd"}


def format_name(requested: str) -> str:
    """lukspack's name for an output format, qemu-img's accepted (vpc, luks); a format lukspack
    does not write is a usage error naming it."""
    name = requested.lower()
    name = FORMAT_ALIASES.get(name, name)
    if name in OUTPUT_FORMATS:
        return name
    if name in NOT_WRITTEN:
        raise UsageError(f"--output-format {requested}: lukspack does not write {requested} "
                         "images (it writes raw or luks: LUKS RAW; qcow2: qcow2+LUKS; vhd or "
                         "vpc: the encrypted VHD)")
    raise UsageError(f"--output-format {requested} is not supported "
                     f"(use {', '.join(OUTPUT_FORMATS)}, or qemu-img's luks, vpc)")


def luks_type_name(requested: str) -> str:
    """luks1 or luks2; cryptsetup's `--type luks` is luks1."""
    name = LUKS_TYPE_ALIASES.get(requested.lower(), requested.lower())
    if name not in LUKS_TYPES:
        raise UsageError(f"--type {requested} is not supported (use luks1, luks2 or luks)")
    return name


def output_format(output: str, requested: str | None, target: str | None = None) -> str:
    """The output container: --output-format when given; else the target's (VPC: qcow2+LUKS,
    classic: the encrypted VHD); else from the name's suffix."""
    if requested is None and target is not None:
        want = TARGET_FORMATS[target]
        by_name = output_format(output, None)
        if by_name not in (want, "raw") and not output.startswith("cos://"):
            raise UsageError(f"{output}: a {by_name} name for --target {target}, which takes "
                             f"{want} (or say --output-format)")
        return want
    if requested is None:
        low = output.lower()
        if low.endswith((".qcow2", ".qcow")):
            return "qcow2"
        if low.endswith(".vhd"):
            return "vhd"
        return "raw"
    return format_name(requested)


def kdf_options(hash: str | None = None, iter_time_ms: int | None = None,
                force_iterations: int | None = None, pbkdf: str | None = None,
                memory_kb: int | None = None, parallel: int | None = None
                ) -> KdfOptions | None:
    """KdfOptions from the options given (None each when not), or None when none was."""
    given = (hash, iter_time_ms, force_iterations, pbkdf, memory_kb, parallel)
    if all(v is None for v in given):
        return None
    d = KdfOptions()
    return KdfOptions(hash or d.hash, iter_time_ms or d.iter_time_ms, force_iterations, pbkdf,
                      memory_kb, parallel)


def header_fields(uuid: str | None = None, label: str | None = None,
                  subsystem: str | None = None, key_slot: int | None = None
                  ) -> HeaderFields | None:
    """HeaderFields from the options given, or None when none was."""
    if uuid is None and label is None and subsystem is None and key_slot is None:
        return None
    return HeaderFields(uuid, label, subsystem, 0 if key_slot is None else key_slot)


def _given(opts: EncryptOptions) -> list[str]:
    """The output options asked for, as the command line spells them."""
    out = []
    if opts.luks_type is not None:
        out.append(f"--type {opts.luks_type}")
    if opts.cipher is not None:
        out.append(f"--cipher {opts.cipher}")
    if opts.key_bytes is not None:
        out.append(f"--key-size {opts.key_bytes * 8}")
    if opts.sector_size is not None:
        out.append(f"--sector-size {opts.sector_size}")
    out += _kdf_given(opts.kdf)
    f = opts.fields
    if f is not None:
        for flag, value in (("--uuid", f.uuid), ("--label", f.label),
                            ("--subsystem", f.subsystem)):
            if value is not None:
                out.append(f"{flag} {value}")
        if f.key_slot or (f.uuid, f.label, f.subsystem) == (None, None, None):
            out.append(f"--key-slot {f.key_slot}")
    return out


KDF_FLAGS = (("hash", "--hash"), ("iter_time_ms", "--iter-time"), ("pbkdf", "--pbkdf"),
             ("memory_kb", "--pbkdf-memory"), ("parallel", "--pbkdf-parallel"),
             ("force_iterations", "--pbkdf-force-iterations"))


def _kdf_given(kdf: KdfOptions | None) -> list[str]:
    if kdf is None:
        return []
    d = KdfOptions()
    out = [f"{flag} {getattr(kdf, name)}" for name, flag in KDF_FLAGS
           if getattr(kdf, name) != getattr(d, name)]
    return out or [KDF_ANY]


KDF_ANY = "the key slot KDF options (--hash, --iter-time, --pbkdf*)"


def _refuse(fmt: str, given: list[str]) -> None:
    if given:
        verb = "does" if len(given) == 1 and given[0] != KDF_ANY else "do"
        raise UsageError(f"{', '.join(given)} {verb} not apply to {fmt} output "
                         f"({_WHY_NOT[fmt]})")


def for_format(opts: EncryptOptions, fmt: str) -> EncryptOptions:
    """The options for an output of format fmt (raw, qcow2, vhd), defaults filled in. An option
    that does not apply to the format is a usage error naming the format and the option: the
    encrypted VHD takes none of the LUKS options; qcow2+LUKS no --sector-size, --type luks2,
    --key-size 256 or LUKS2 header fields (and, LUKS1 inside, no Argon2)."""
    fmt = format_name(fmt)
    if opts.skip_check and opts.target is None:
        raise UsageError("--skip-check skips the check of --target: give --target, or drop "
                         "--skip-check")
    luks_type = luks_type_name(opts.luks_type) if opts.luks_type is not None else None
    if fmt == "vhd":
        _refuse(fmt, _given(opts))
        return replace(opts, output_format=fmt)
    if opts.cipher is not None and opts.cipher not in CIPHERS:
        raise UsageError(f"--cipher {opts.cipher} is not supported (supported: "
                         f"{', '.join(CIPHERS)})")
    if opts.key_bytes is not None and opts.key_bytes * 8 not in KEY_SIZES:
        raise UsageError(f"--key-size {opts.key_bytes * 8} is not supported for aes-xts-plain64 "
                         f"(supported: {', '.join(map(str, KEY_SIZES))})")
    kdf = opts.kdf or KdfOptions()
    check_hash(kdf.hash)
    fields_ = opts.fields or HeaderFields()
    if fmt == "qcow2":
        wrong = [g for g in _given(opts) if g.startswith((
            "--sector-size", "--type luks2", "--key-size 256", "--label", "--subsystem"))]
        _refuse(fmt, wrong)
        luks_type = "luks1"
    luks_type = luks_type or "luks1"
    sector_size = 512 if opts.sector_size is None else opts.sector_size
    if luks_type == "luks1" and sector_size != 512:
        raise UsageError(f"--sector-size {sector_size} needs --type luks2 (LUKS1 has 512-byte "
                         "sectors only)")
    key_bytes = 64 if opts.key_bytes is None else opts.key_bytes
    kdf.check(luks_type, key_bytes)  # an unknown --hash, Argon2 with LUKS1: usage errors
    fields_.check(luks_type)
    return replace(opts, output_format=fmt, luks_type=luks_type, kdf=kdf,
                   sector_size=sector_size, key_bytes=key_bytes, fields=fields_,
                   cipher=opts.cipher or CIPHERS[0])


def kdf_note(opts: EncryptOptions, fmt: str) -> str | None:
    """How long the key slot KDF will take, when over a minute (luks/estimate.py); None for
    shorter ones and for the encrypted VHD (no KDF)."""
    from lukspack.luks.estimate import long_kdf_note

    r = for_format(opts, fmt)
    if r.output_format == "vhd":
        return None
    assert r.kdf is not None and r.key_bytes is not None
    k = r.kdf
    pbkdf = k.pbkdf or ("argon2id" if r.luks_type == "luks2" else "pbkdf2")
    return long_kdf_note(pbkdf, k.hash, r.key_bytes, iter_time_ms=k.iter_time_ms,
                         force_iterations=k.force_iterations, memory_kb=k.memory_kb,
                         parallel=k.parallel)


HASHES = ("sha1", "sha256", "sha512")


def check_hash(name: str) -> None:
    """A usage error for a --hash hashlib does not know."""
    import hashlib

    try:
        hashlib.new(name)
    except (ValueError, TypeError):
        raise UsageError(f"--hash {name} is not a known hash (use one of "
                         f"{', '.join(HASHES)})") from None


# what a resumed upload must find unchanged: each key of fingerprint() and its option
def fingerprint(opts: EncryptOptions, fmt: str) -> dict[str, Any]:
    """Every option that shapes the output of format fmt, defaults filled in: the format, and for
    LUKS outputs the LUKS type, cipher, key size, sector size, hash, PBKDF and its cost, UUID,
    label, subsystem and key slot. The encrypted VHD takes none of them (its key is the key
    file)."""
    r = for_format(opts, fmt)
    d: dict[str, Any] = {"format": r.output_format}
    if r.output_format == "vhd":
        return d
    assert r.kdf is not None and r.fields is not None and r.key_bytes is not None
    kdf, f = r.kdf, r.fields
    d.update(luks_type=r.luks_type, cipher=r.cipher, key_bits=r.key_bytes * 8,
             sector_size=r.sector_size, hash=kdf.hash,
             pbkdf=kdf.pbkdf or ("argon2id" if r.luks_type == "luks2" else "pbkdf2"),
             iter_time_ms=kdf.iter_time_ms, force_iterations=kdf.force_iterations,
             memory_kb=kdf.memory_kb, parallel=kdf.parallel, uuid=f.uuid, label=f.label,
             subsystem=f.subsystem, key_slot=f.key_slot)
    return d


__all__ = [
    "EncryptOptions", "StreamOptions", "for_format", "fingerprint", "fingerprint_change",
    "kdf_note",
    "format_name", "luks_type_name", "output_format", "kdf_options", "header_fields", "check_hash"]


def check_kdf_usage(luks_type: str, hash_: str | None, pbkdf: str | None) -> None:
    """--hash and --pbkdf combinations that cannot work are usage errors (exit 2), before any
    I/O: check_hash, and luks.format.KdfOptions.check for Argon2 with LUKS1."""
    from lukspack.luks.format import KdfOptions

    if hash_ is not None:
        check_hash(hash_)
    if pbkdf is not None:
        KdfOptions(hash_ or KdfOptions.hash, pbkdf=pbkdf, force_iterations=1000).check(luks_type)
