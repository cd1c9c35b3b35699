"""The jobs that open an image: `verify` (the key opens it, its whole disk decrypts, it matches
a source), `decrypt` (its disk as RAW) and `check` (is it a Linux IBM Cloud can boot). Each
takes a frozen request and returns a result whose `to_dict()` is what the command's `--json`
prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lukspack.api.common import KeySource, Result
from lukspack.api.disk import ProgressFn, remote_or_default
from lukspack.errors import UsageError

if TYPE_CHECKING:
    from lukspack.check import CheckReport
    from lukspack.remote import RemoteOptions

__all__ = ["CheckFinding", "CheckRequest", "CheckResult", "DecryptRequest", "DecryptResult",
           "VerifyRequest", "VerifyResult", "check", "decrypt", "verify"]


@dataclass(frozen=True)
class VerifyRequest:
    """Open image with key and decrypt its whole disk; with source, compare it byte for byte
    (input_format and disk describe the source). image and source may be local files,
    cos:// objects or http(s):// URLs, read with `remote`. key_only: only test that the key
    opens the image, decrypting nothing (cryptsetup open --test-passphrase)."""

    image: str
    key: KeySource
    source: str | None = None
    input_format: str | None = None
    disk: int | None = None
    remote: RemoteOptions | None = None
    key_only: bool = False


@dataclass(frozen=True)
class VerifyResult(Result):
    """`lukspack verify --json` (and `--key-only --json`: key_opens, no disk fields)."""

    ALWAYS = ("matches_source",)

    image: str
    format: str
    kind: str = field(metadata={"json": "type"})
    cipher: str
    key_opens: bool | None = None
    disk_bytes: int | None = None
    disk_sha256: str | None = None
    source_sha256: str | None = None
    source: str | None = None
    source_bytes: int | None = None
    source_reads: dict[str, int] | None = None
    matches_source: bool | None = None  # None: no source given
    image_reads: dict[str, int] | None = None  # GETs and bytes of a remote image
    notes: tuple[str, ...] | None = None
    quirk_sectors: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.key_opens is not None:  # --key-only decrypts nothing: no comparison to report
            del d["matches_source"]
        return d


def verify(req: VerifyRequest, progress: ProgressFn | None = None) -> VerifyResult:
    """Unlock req.image and decrypt its disk (or, key_only, only unlock it). WrongKeyError when
    the key does not open it, VerifyError when it does not match the source."""
    from lukspack import plaintext
    from lukspack.options import StreamOptions

    if req.key_only:
        if req.source is not None:
            raise UsageError("--key-only decrypts nothing: it cannot compare with --source")
        with req.key.open(dek_rules=False) as key:
            return VerifyResult.from_summary(plaintext.test_key(
                req.image, key, remote=remote_or_default(req.remote)))
    if req.source is None and (req.input_format is not None or req.disk is not None):
        raise UsageError("--input-format and --disk describe --source: give --source "
                         "(IMAGE's format is read from its content)")
    with req.key.open(dek_rules=False) as key:
        r = plaintext.verify(req.image, key, req.source,
                             StreamOptions(verify=True, plaintext_digest=False,
                                           output_digest=False), progress,
                             input_format=req.input_format, disk=req.disk,
                             remote=remote_or_default(req.remote))
    return VerifyResult.from_summary(r)


@dataclass(frozen=True)
class DecryptRequest:
    """Write the decrypted disk of image to output as a sparse RAW file, mode 0600."""

    image: str
    output: str
    key: KeySource
    force: bool = False


@dataclass(frozen=True)
class DecryptResult(Result):
    """`lukspack decrypt --json`."""

    image: str
    format: str
    kind: str = field(metadata={"json": "type"})
    cipher: str
    output: str
    bytes: int
    disk_bytes: int
    disk_sha256: str
    notes: tuple[str, ...] | None = None
    quirk_sectors: int | None = None


def decrypt(req: DecryptRequest, progress: ProgressFn | None = None) -> DecryptResult:
    """Decrypt req.image into req.output (never the image or the key file itself)."""
    from lukspack import plaintext

    protected = (("key file", req.key.path),) if req.key.path is not None else ()
    with req.key.open(dek_rules=False) as key:
        r = plaintext.decrypt(req.image, req.output, key, force=req.force, progress=progress,
                              protected=protected)
    return DecryptResult.from_summary(r)


@dataclass(frozen=True)
class CheckRequest:
    """Check that source is a bootable Linux with cloud-init fit for IBM Cloud target (vpc or
    classic), reading only the blocks the rules need; key: for an encrypted source."""

    source: str
    target: str = "vpc"
    key: KeySource | None = None
    input_format: str | None = None
    remote: RemoteOptions | None = None


@dataclass(frozen=True)
class CheckFinding(Result):
    status: str  # PASS | WARN | FAIL
    area: str
    check: str
    evidence: str


@dataclass(frozen=True)
class CheckResult(Result):
    """`lukspack check --json`. A FAIL is a result, not an error: raise_on_fail() raises
    CheckFailed (exit 1), as the command does after printing the report."""

    image: str
    target: str
    result: str  # PASS | FAIL
    counts: dict[str, int]
    virtual_size: int
    os: dict[str, str]
    findings: tuple[CheckFinding, ...]
    volumes: tuple[str, ...]
    bytes_read: int
    reads: int
    seconds: float
    cpu_seconds: float
    source_reads: dict[str, int] | None = None

    @property
    def failed(self) -> bool:
        return self.result == "FAIL"

    def report(self) -> CheckReport:
        """The check's report, from which its text lines and its error come."""
        from lukspack.check import CheckReport
        from lukspack.check.report import Finding

        return CheckReport(self.image, self.target, self.virtual_size,
                           [Finding(f.status, f.area, f.check, f.evidence) for f in self.findings],
                           list(self.volumes), self.bytes_read, self.reads, self.seconds,
                           self.cpu_seconds, dict(self.os))

    def lines(self) -> list[str]:
        return self.report().lines()

    def raise_on_fail(self, name: str | None = None) -> None:
        """CheckFailed naming the image (or name) and the number of failures and the first, on
        any FAIL."""
        from lukspack.check import raise_on_fail

        raise_on_fail(self.report(), self.image if name is None else name)


def check(req: CheckRequest) -> CheckResult:
    """Run the IBM Cloud check on req.source, decrypted by lukspack's reader when it is
    encrypted (req.key). The result says PASS or FAIL; it raises only when it cannot read."""
    from lukspack.check import run_check
    from lukspack.disks import unlocked_disk
    from lukspack.remote import source_reads

    remote = remote_or_default(req.remote)
    if req.key is None:
        with unlocked_disk(req.source, None, req.input_format, remote=remote) as image:
            report, reads = run_check(image, req.target), source_reads(image)
    else:
        with req.key.open(dek_rules=False) as key, \
                unlocked_disk(req.source, key, req.input_format, remote=remote) as image:
            report, reads = run_check(image, req.target), source_reads(image)
    d = report.to_dict()
    findings = tuple(CheckFinding(**f) for f in d["findings"])
    return CheckResult.from_summary(d, findings=findings, source_reads=reads)
