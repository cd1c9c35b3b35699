"""The `encrypt` job: a source disk image into LUKS RAW, qcow2+LUKS or the encrypted VHD, in a
file, on a block device or streamed into a cos:// object.

`EncryptRequest` holds what the command line says; `encrypt` checks every rule (which options go
with which output, what applies to a cos:// output only, the key's rules for the target; the
format rules are options.for_format's) before anything is read, and returns an `EncryptResult`
whose `to_dict()` is what `lukspack encrypt --json` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lukspack.api.common import KeySource, Result
from lukspack.errors import UsageError
from lukspack.luks.format import HeaderFields, KdfOptions

if TYPE_CHECKING:
    from lukspack.options import EncryptOptions
    from lukspack.remote import RemoteOptions
    from lukspack.sinks.base import Sink

MiB = 1 << 20
OBJECT_SCHEME = "cos://"
ProgressFn = Callable[[str, int, int], None]  # engine.ProgressFn: (phase, done, total)

__all__ = ["EncryptCheck", "EncryptRequest", "EncryptResult", "ObjectUpload", "encrypt",
           "json_digests"]


@dataclass(frozen=True)
class ObjectUpload:
    """How a cos:// OUTPUT is uploaded (multipart), each None or False when not asked for:
    the part size in MiB [16], parts in flight [4], continue a kept upload, where the state
    file goes, read the object back part by part. Any of them with an OUTPUT that is not
    cos:// is a usage error."""

    resume: bool = False
    part_size_mib: int | None = None
    concurrency: int | None = None
    state_dir: str | None = None
    verify_remote: bool = False

    def given(self) -> list[str]:
        """The options asked for, as the command line spells them."""
        return [flag for flag, on in (
            ("--resume", self.resume), ("--part-size", self.part_size_mib is not None),
            ("--concurrency", self.concurrency is not None),
            ("--state-dir", self.state_dir is not None),
            ("--verify-remote", self.verify_remote)) if on]


@dataclass(frozen=True)
class EncryptRequest:
    """What to encrypt, into what, with which key and options. None: not asked for (the output
    format's default; an option the format does not take is a usage error naming it).
    key_size is in bits (256 or 512), as cryptsetup's --key-size. digests: compute the SHA-256
    of the source, of the disk and of the output (what --json shows; 0.7 s per GiB). remote:
    the endpoint and credentials of a cos:// or http(s):// SOURCE and of a cos:// OUTPUT;
    upload: how a cos:// OUTPUT is sent."""

    source: str
    output: str
    key: KeySource
    output_format: str | None = None  # raw | qcow2 | vhd (qemu-img's luks, vpc); None: the name's
    luks_type: str | None = None  # luks1 | luks2 | luks
    cipher: str | None = None
    key_size: int | None = None
    kdf: KdfOptions | None = None
    sector_size: int | None = None
    header: HeaderFields | None = None  # --uuid, --label, --subsystem, --key-slot
    verify: bool = True
    force: bool = False
    digests: bool = False
    input_format: str | None = None
    disk: int | None = None
    target: str | None = None  # vpc | classic: check the source first, pick the format
    skip_check: bool = False
    remote: RemoteOptions | None = None
    upload: ObjectUpload | None = None


@dataclass(frozen=True)
class EncryptCheck(Result):
    """What `--target`'s check found: its target and the count of each status."""

    target: str
    passed: int = field(metadata={"json": "PASS"})
    warned: int = field(metadata={"json": "WARN"})
    failed: int = field(metadata={"json": "FAIL"})


@dataclass(frozen=True)
class EncryptResult(Result):
    """`lukspack encrypt --json`. None: the field does not apply to this output (qcow2's
    clusters, the VHD's blocks, digests not asked for, a local source's reads, no --target)."""

    ALWAYS = ("verification",)

    source: str
    source_format: str
    output: str
    output_format: str
    kind: str = field(metadata={"json": "type"})  # luks1 | luks2 | vhd
    cipher: str
    key_bits: int
    sector_size: int
    virtual_size: int
    source_bytes_read: int
    disk_bytes: int
    total_bytes: int
    cluster_size: int | None = None
    data_clusters: int | None = None
    luks_header_offset: int | None = None
    luks_header_bytes: int | None = None
    header_bytes: int = 0
    payload_offset: int | None = None
    payload_bytes: int = 0
    block_size: int | None = None
    blocks: int | None = None
    allocated_blocks: int | None = None
    virtual_size_rounded: int | None = None
    nonce: str | None = None
    key_hash: str | None = None
    creator: str | None = None
    source_sha256: str | None = None
    disk_sha256: str | None = None
    digests: str | None = None
    output_sha256: str | None = None
    # where the engine puts the source's warnings; the key rule's and the check's come here too
    warnings: tuple[str, ...] | None = None
    direct_io: bool = False
    verified: bool = False
    verification: str | None = None  # tee | read back | read back after upload; None: not
    seconds: float = 0.0
    source_reads: dict[str, int] | None = None
    check: EncryptCheck | None = None


def json_digests(as_json: bool, no_digest: bool) -> bool:
    """The command line's digests: with --json unless --no-digest, which alone says nothing."""
    if no_digest and not as_json:
        raise UsageError("--no-digest skips the SHA-256 of --json: give --json, or drop "
                         "--no-digest")
    return as_json and not no_digest


def _options(req: EncryptRequest) -> EncryptOptions:
    from lukspack.options import EncryptOptions, StreamOptions

    return EncryptOptions(
        luks_type=req.luks_type, kdf=req.kdf, sector_size=req.sector_size,
        key_bytes=req.key_size // 8 if req.key_size is not None else None, fields=req.header,
        cipher=req.cipher, output_format=req.output_format, input_format=req.input_format,
        disk=req.disk, force=req.force,
        stream=StreamOptions(verify=req.verify, plaintext_digest=req.digests,
                             output_digest=req.digests),
        target=req.target, skip_check=req.skip_check, source_options=remote_or_default(req.remote))


def remote_or_default(remote: RemoteOptions | None) -> RemoteOptions:
    """The remote options, the default endpoint (public, from the environment) when none."""
    from lukspack.cloud.upload import CosOptions
    from lukspack.remote import RemoteOptions

    return remote if remote is not None else RemoteOptions(cos=CosOptions())


def _object_sink(req: EncryptRequest, fingerprint: dict[str, Any]) -> Callable[[], Sink]:
    """The factory of the ObjectSink of a cos:// OUTPUT (made once the options are checked)."""
    from lukspack.cloud.multipart import DEFAULT_CONCURRENCY, DEFAULT_PART_SIZE
    from lukspack.cloud.upload import CosOptions
    from lukspack.sinks.object import ObjectSinkOptions, open_streamed

    remote = remote_or_default(req.remote)
    cos = remote.cos if isinstance(remote.cos, CosOptions) else CosOptions()
    up = req.upload or ObjectUpload()
    opts = ObjectSinkOptions(
        endpoint_url=cos.endpoint_url, endpoint_type=cos.endpoint_type,
        credentials_file=cos.credentials_file, iam_url=cos.iam_url,
        part_size=DEFAULT_PART_SIZE if up.part_size_mib is None else up.part_size_mib * MiB,
        concurrency=DEFAULT_CONCURRENCY if up.concurrency is None else up.concurrency,
        resume=up.resume, state_dir=up.state_dir, verify_remote=up.verify_remote)

    def make() -> Sink:
        return open_streamed(req.output, req.source, opts, fingerprint, remote)

    return make


def _check(req: EncryptRequest) -> str:
    """Every rule of the request, before the key is read: usage errors (exit 2) naming the
    option. Returns the output format (raw, qcow2, vhd)."""
    from lukspack.options import for_format, output_format

    opts = _options(req)
    if not req.output.startswith(OBJECT_SCHEME) and req.upload is not None:
        given = req.upload.given()
        if given:
            raise UsageError(f"{', '.join(given)} apply to a cos:// OUTPUT (a multipart "
                             f"upload), not {req.output}")
    if req.key_size is not None and req.key_size % 8:
        raise UsageError(f"--key-size {req.key_size} is not a whole number of bytes")
    fmt = output_format(req.output, req.output_format, req.target)
    for_format(opts, fmt)  # the format's rules (options.py), --skip-check without --target
    return fmt


def encrypt(req: EncryptRequest, progress: ProgressFn | None = None) -> EncryptResult:
    """Encrypt req.source into req.output; progress(phase, done, total) while it runs.
    UsageError (exit 2) for a request that cannot work, before anything is read; another
    LukspackError (exit 1) for what fails while it runs (nothing is left behind)."""
    from lukspack.encrypt import encrypt as run
    from lukspack.options import fingerprint

    fmt = _check(req)  # usage errors before the key is read
    opts = _options(req)
    sink = None
    if req.output.startswith(OBJECT_SCHEME):  # streamed into a multipart upload: no local copy
        sink = _object_sink(req, fingerprint(opts, fmt))
    protected = (("key file", req.key.path),) if req.key.path is not None else ()
    # what the key means for the output's target is keys.key_for_target's, in run()
    with req.key.open(dek_rules=False) as key:
        s = run(req.source, req.output, key, opts, progress, sink=sink, protected=protected)
    check = s.pop("check", None)
    return EncryptResult.from_summary(
        s, check=None if check is None else EncryptCheck(
            check["target"], check["PASS"], check["WARN"], check["FAIL"]))
