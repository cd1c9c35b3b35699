"""The publish job: a disk image to an imported, encrypted custom image (`lukspack publish`,
`fleet`'s rows). The rules of the command live here: one key, existing or new; what a new key
may be; which KDF options the format takes; the new key written only after every check.

The IBM Cloud API key comes from the environment ($IBMCLOUD_API_KEY) or the credentials file
(`cos_options.credentials_file`), never from the request (cloud.credentials)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from lukspack.api.common import KeySource, Result
from lukspack.cloud.upload import CosOptions
from lukspack.errors import UsageError

if TYPE_CHECKING:
    from lukspack.cloud.publish import PublishPlan
    from lukspack.options import EncryptOptions

__all__ = ["PublishRequest", "PublishResult", "publish"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class PublishRequest:
    """What to publish where. One of `key` (the key the image is encrypted with) and
    `new_key_file` (a new key written there, mode 0600, once every check passed)."""

    source: str  # a disk image: a path, cos:// or http(s)://
    target: str  # vpc | classic
    cos: str  # cos://REGION/BUCKET[/OBJECT]
    root_key_crn: str
    kms_instance: str  # the Key Protect instance GUID (the root key's)
    name: str  # the image's
    os_name: str  # VPC: operating system name; classic: operatingSystemReferenceCode
    key: KeySource | None = None
    new_key_file: str | None = None
    new_key_bytes: int | None = None  # classic: random bytes of a new key (32 or 64)
    output_format: str | None = None  # vpc: qcow2; classic: vhd (default) or raw
    resource_group: str | None = None  # VPC resource group ID
    note: str = ""  # classic: the image template's note
    cloud_init: bool = True
    byol: bool = False
    kms_url: str | None = None  # Key Protect Dedicated or Hyper Protect Crypto Services
    private_kms: bool = False
    api_url: str | None = None  # VPC or SoftLayer API endpoint
    wait: bool = True
    resume: bool = False
    skip_check: bool = False
    pbkdf_force_iterations: int | None = None
    input_format: str | None = None  # the source's format [default: detected]
    cos_options: CosOptions = field(default_factory=CosOptions)  # part_size in bytes


@dataclass(frozen=True)
class PublishResult(Result):
    """What `publish --json` prints."""

    target: str
    object: str
    format: str
    check: dict[str, Any]  # {"target", "skipped", "PASS", "WARN", "FAIL"}
    resumed_parts: int | None = None  # None: the upload was done by the publish resumed
    encrypt: dict[str, Any] | None = None  # the engine's summary (None: see resumed_parts)
    sha256: str | None = None  # of the object, as read back
    wdek_sha256: str | None = None
    image: dict[str, Any] | None = None  # id, crn, name, status, sha256, checksum_match...
    authorizations: tuple[str, ...] = ()
    warnings: tuple[str, ...] | None = None


def publish(request: PublishRequest, *, progress: Any = None,
            say: Say | None = None) -> PublishResult:
    """Check, encrypt the source straight into the bucket, wrap the key, import, wait and
    compare (cloud.publish). say gets each step's line; progress the engine's progress."""
    from lukspack.cloud import publish as pub
    from lukspack.keys import wipe

    tell: Say = say if say is not None else _quiet
    _check_key_choice(request)
    plan = publish_plan(request)
    enc = encrypt_options(request, plan)
    key_name = request.new_key_file or (request.key.name if request.key else "key file")
    if request.key is not None:
        with request.key.open(dek_rules=False) as key:
            r = pub.publish(request.source, plan, key, enc, progress, tell, key_name=key_name)
        return PublishResult.from_summary(r)
    assert request.new_key_file is not None
    # every check (the image's too) before the key is written: nothing to clean up
    checked = pub.preflight(plan, tell, request.source, enc)
    key = pub.new_key(request.new_key_file, plan.wrap_target, request.new_key_bytes)
    tell(f"wrote a new key to {request.new_key_file} (mode 0600)")
    try:
        r = pub.publish(request.source, plan, key, enc, progress, tell, checked, key_name)
    finally:
        wipe(key)
    return PublishResult.from_summary(r)


def _quiet(_line: str) -> None:
    pass


def _check_key_choice(request: PublishRequest) -> None:
    """One key, existing or new; --new-key-bytes only for a new classic key; a new key's file
    must be one that can be written (before any check runs)."""
    if (request.key is None) == (request.new_key_file is None):
        raise UsageError("give one of --key-file and --new-key-file")
    if request.new_key_bytes is not None and (request.new_key_file is None
                                              or request.target == "vpc"):
        raise UsageError("--new-key-bytes goes with --new-key-file for --to classic (a new "
                         "VPC key is a 44-character passphrase)")
    if request.new_key_bytes not in (None, 32, 64):
        raise UsageError(f"--new-key-bytes {request.new_key_bytes}: 32 or 64")
    if request.new_key_file is not None:
        from lukspack.keys import check_new_key_path

        check_new_key_path(request.new_key_file)


def publish_plan(request: PublishRequest) -> PublishPlan:
    """cloud.publish's PublishPlan of a request (its resume also the object sink's)."""
    from lukspack.cloud.publish import PublishPlan

    return PublishPlan(request.target, request.cos, request.root_key_crn, request.kms_instance,
                       request.name, request.os_name, output_format=request.output_format,
                       resource_group=request.resource_group, note=request.note,
                       cloud_init=request.cloud_init, byol=request.byol,
                       kms_url=request.kms_url, private_kms=request.private_kms,
                       api_url=request.api_url, wait=request.wait, resume=request.resume,
                       skip_check=request.skip_check,
                       cos_options=replace(request.cos_options, resume=request.resume))


def encrypt_options(request: PublishRequest, plan: PublishPlan) -> EncryptOptions:
    """The engine's options; a KDF option the format does not take (the encrypted VHD has no
    key slots) is a usage error, now, before anything is checked or uploaded."""
    from lukspack.options import EncryptOptions, for_format, kdf_options
    from lukspack.remote import RemoteOptions

    enc = EncryptOptions(kdf=kdf_options(force_iterations=request.pbkdf_force_iterations),
                         input_format=request.input_format,
                         source_options=RemoteOptions(cos=plan.cos_options))
    for_format(enc, plan.format)
    return enc
