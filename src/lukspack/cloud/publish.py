"""`lukspack publish`: encrypt straight into the bucket, wrap the key, import, wait, compare.

Before any byte is uploaded it checks what it can: the key (keys.key_for_target: what the key
file means for the target, so wrapping cannot refuse it after the upload), the names and
locations (the import's own rules), the image (`lukspack check --target vpc|classic`: a FAIL
stops here, naming the failures, unless skip_check), the credentials (an IAM token), the bucket
(HEAD at the region's endpoint), the root key (wrap and unwrap a random test value), and it
lists the service authorizations the import
needs (https://cloud.ibm.com/docs/vpc?topic=vpc-create-encrypted-custom-image: Cloud Block
Storage -> Key Protect, Reader; VPC Image Service -> Cloud Object Storage, Reader); a new key
is written (mode 0600) before the upload starts. Then: the engine encrypts into an ObjectSink
(VPC: qcow2+LUKS; classic: the encrypted VHD, or the 2018 LUKS RAW), the key is wrapped as the
target needs it, the image is imported and (VPC) waited for, and its file.checksums.sha256
compared with the SHA-256 of the object as read back.

When a step after the upload is refused for a reason a retry cannot change (Key Protect or the
image service refuses the key or the request: a CloudError that is neither a RemoteError nor a
CredentialsError), the uploaded object is deleted and the publish state removed; a transient
failure (network, HTTP 5xx/429) or an authorization problem keeps both for `--resume`.

Interrupted, `publish --resume` continues: the object sink resumes its multipart upload, and a
small publish state (in the user's cache directory) remembers a finished upload and a created
image, so neither is done twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lukspack.cloud import imports
from lukspack.cloud.credentials import Credentials, load_credentials
from lukspack.cloud.errors import CloudError, CredentialsError, RemoteError
from lukspack.cloud.iam import TokenSource
from lukspack.cloud.kms import KeyProtect, kms_url, parse_key_crn, wrap_key
from lukspack.cloud.location import CosLocation, parse_cos
from lukspack.cloud.multipart import SHA256_METADATA, cache_dir, source_identity, state_name
from lukspack.cloud.s3 import cloud_error
from lukspack.cloud.upload import CosOptions, connect

if TYPE_CHECKING:
    from lukspack.options import EncryptOptions

AUTHORIZATIONS = {
    "vpc": ["Cloud Block Storage -> Key Protect (or Hyper Protect Crypto Services): Reader",
            "VPC Infrastructure Services, Image Service for VPC -> Cloud Object Storage: Reader"],
    "classic": ["the API key's identity: Reader on the bucket (Cloud Object Storage) and on the "
                "Key Protect instance (classic imports with the ibmApiKey it is given)"],
}
Say = Callable[[str], None]


@dataclass
class PublishPlan:
    target: str  # vpc | classic
    cos: str  # cos://REGION/BUCKET[/OBJECT]
    root_key_crn: str
    kms_instance: str
    name: str
    os_name: str
    output_format: str | None = None  # classic: vhd (default) or raw
    resource_group: str | None = None
    note: str = ""
    cloud_init: bool = True
    byol: bool = False
    kms_url: str | None = None
    private_kms: bool = False
    api_url: str | None = None  # VPC or SoftLayer endpoint
    wait: bool = True
    resume: bool = False
    skip_check: bool = False  # do not run `lukspack check` on the source first
    cos_options: CosOptions = field(default_factory=CosOptions)

    @property
    def format(self) -> str:
        if self.target == "vpc":
            return "qcow2"
        return self.output_format or "vhd"

    @property
    def wrap_target(self) -> str:
        return "vpc" if self.target == "vpc" else ("classic" if self.format == "vhd" else "luks-raw")


def object_location(plan: PublishPlan) -> CosLocation:
    loc = parse_cos(plan.cos, need_key=False)
    if loc.key:
        return loc
    suffix = {"qcow2": ".qcow2", "vhd": ".vhd-0.vhd", "raw": ".raw"}[plan.format]
    return loc.with_key(plan.name + suffix)


def import_request(plan: PublishPlan, loc: CosLocation, wdek: str, api_key: str
                   ) -> imports.ApiRequest:
    if plan.target == "vpc":
        return imports.vpc_image_request(name=plan.name, file=str(loc), os_name=plan.os_name,
                                         root_key_crn=plan.root_key_crn, wdek=wdek,
                                         resource_group=plan.resource_group, api_url=plan.api_url)
    return imports.classic_image_request(name=plan.name, uri=str(loc), os_code=plan.os_name,
                                         root_key_crn=plan.root_key_crn, wdek=wdek,
                                         api_key=api_key, note=plan.note,
                                         cloud_init=plan.cloud_init, byol=plan.byol,
                                         image_format=plan.format, api_url=plan.api_url)


@dataclass
class Checked:
    """What preflight() found: where the object goes, the credentials, the Key Protect instance
    and the check's counts ({"target", "PASS", "WARN", "FAIL"}, or {"skipped": True})."""

    loc: CosLocation
    creds: Credentials
    kp: KeyProtect
    check: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def check_source(source: str, plan: PublishPlan, encrypt_options: EncryptOptions, say: Say
                 ) -> tuple[dict[str, Any], list[str]]:
    """`lukspack check --target` on the source (CheckFailed names the failures); the counts and
    the WARN lines. With plan.skip_check, nothing is read and the summary says it was skipped."""
    if plan.skip_check:
        say(f"check for IBM Cloud {plan.target} skipped (--skip-check)")
        return {"target": plan.target, "skipped": True}, []
    from lukspack.check import ensure_fit
    from lukspack.images import open_image

    with open_image(source, encrypt_options.input_format, encrypt_options.disk,
                    remote=encrypt_options.source_options) as image:
        report = ensure_fit(image, plan.target)
    counts = report.to_dict()["counts"]
    say(f"checked: {source} for IBM Cloud {plan.target}: {counts['PASS']} passed, "
        f"{counts['WARN']} warnings, {counts['FAIL']} failed")
    return ({"target": plan.target, "skipped": False, **counts},
            [f"check: {f.strip()}" for f in report.lines() if f.lstrip().startswith("WARN")])


def preflight(plan: PublishPlan, say: Say, source: str | None = None,
              encrypt_options: EncryptOptions | None = None, key: bytes | bytearray | None = None,
              key_name: str = "key file") -> Checked:
    """Every check that needs no upload; raises at the first failure. key: the key file's content
    (None when a new key will be made, which passes by construction); source: the image the
    check reads (None: not checked, the caller did)."""
    from lukspack.errors import UsageError  # options that conflict: exit 2
    from lukspack.keys import key_for_target

    if plan.target not in ("vpc", "classic"):
        raise UsageError(f"--to {plan.target!r} must be vpc or classic")
    if plan.target == "vpc" and plan.output_format not in (None, "qcow2"):
        raise UsageError("VPC imports qcow2+LUKS: --output-format must be qcow2")
    if plan.target == "classic" and plan.format not in ("vhd", "raw"):
        raise UsageError("classic imports the encrypted VHD or the 2018 LUKS RAW: "
                         "--output-format vhd or raw")
    notes: list[str] = []
    if key is not None:  # the rule wrap_key applies after the upload, applied before it
        notes += key_for_target(plan.wrap_target, key, key_name).warnings
        say(f"checked: {key_name} serves {plan.wrap_target}")
    loc = object_location(plan)
    crn = parse_key_crn(plan.root_key_crn)
    if crn.instance_id != plan.kms_instance:
        raise CloudError(f"--kms-instance {plan.kms_instance} is not the instance of the root key "
                         f"CRN ({crn.instance_id})")
    import_request(plan, loc, "placeholder-wdek", "placeholder-key")  # names, URIs, codes
    say(f"checked: name {plan.name!r}, object {loc}, root key {crn.key_id}")
    check: dict[str, Any] = {"target": plan.target, "skipped": True}
    if source is not None:
        from lukspack.options import EncryptOptions

        check, warned = check_source(source, plan, encrypt_options or EncryptOptions(), say)
        notes += warned
    creds = load_credentials(plan.cos_options.credentials_file, iam_url=plan.cos_options.iam_url)
    creds.tokens().token()
    say("checked: IAM token from the API key")
    _, _, client = connect(str(loc), plan.cos_options)
    try:
        client.head_bucket(Bucket=loc.bucket)
    except Exception as e:
        raise cloud_error(e, f"cos://{loc.region}/{loc.bucket}: bucket check") from None
    say(f"checked: bucket {loc.bucket} answers at the {loc.region} endpoint")
    kp = KeyProtect(kms_url(crn.region, plan.private_kms, plan.kms_url), plan.kms_instance,
                    creds.tokens())
    test_value = base64.b64encode(secrets.token_bytes(32))
    wrap_key(kp, crn.key_id, test_value, "luks-raw", check=True, name="test value")
    say(f"checked: root key {crn.key_id} wraps and unwraps a test value")
    for line in AUTHORIZATIONS[plan.target]:
        say(f"needs service authorization: {line}")
    return Checked(loc, creds, kp, check, notes)


def delete_object(loc: CosLocation, opts: CosOptions) -> None:
    """Remove an uploaded object (a publish that cannot be imported leaves nothing behind)."""
    _, _, client = connect(str(loc), opts)
    try:
        client.delete_object(Bucket=loc.bucket, Key=loc.key)
    except Exception as e:
        raise cloud_error(e, f"{loc}: delete") from None


class PublishState:
    """What a publish finished (upload, image), for --resume; in the user's cache directory."""

    def __init__(self, loc: CosLocation) -> None:
        self.path = os.path.join(cache_dir(), f"{state_name(loc)}.publish.json")
        self.data: dict[str, Any] = {}

    def load(self) -> None:
        try:
            with open(self.path) as f:
                self.data = json.load(f)
        except FileNotFoundError:
            self.data = {}
        except (OSError, ValueError):
            raise CloudError(f"{self.path}: publish state is unreadable; remove it") from None

    def save(self, **kv: Any) -> None:
        self.data.update(kv)
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def object_sha256_metadata(location: str, opts: CosOptions | None = None) -> str | None:
    """The sha256 metadata `lukspack upload` stored on the object, or None."""
    try:
        loc, _, client = connect(location, opts or CosOptions())
        meta = client.head_object(Bucket=loc.bucket, Key=loc.key).get("Metadata") or {}
    except Exception:
        return None
    sha = meta.get(SHA256_METADATA)
    return sha if isinstance(sha, str) and len(sha) == 64 else None


def vpc_import_and_wait(req: imports.ApiRequest, tokens: TokenSource, *, wait: bool,
                        expected_sha256: str | None, api_url: str | None = None,
                        on_status: Say | None = None, created: dict[str, Any] | None = None
                        ) -> dict[str, Any]:
    image = created or imports.send(req, tokens, "VPC image create")
    if created is None and on_status is not None:
        on_status(str(image.get("status")))
    out = {k: image.get(k) for k in ("id", "crn", "name", "status")}
    if not wait:
        return out
    region = parse_cos(req.body["file"]["href"]).region
    image = imports.wait_vpc_image(region, str(image["id"]), tokens, api_url=api_url,
                                   interval_s=float(os.environ.get("LUKSPACK_POLL_S", "15")),
                                   on_status=on_status)
    out.update({k: image.get(k) for k in ("id", "crn", "name", "status")})
    out["sha256"] = imports.image_sha256(image)
    match = imports.compare_checksum(image, expected_sha256)
    out["checksum_match"] = match
    if match is None:
        out["checksum_note"] = ("checksum not compared: " +
                                ("the image reports none" if out["sha256"] is None else
                                 "the object's SHA-256 is not known (upload with lukspack, or "
                                 "--expect-sha256)"))
    return out


def new_key(path: str, target: str, nbytes: int | None = None) -> bytearray:
    """A new key for the target (keys.new_key: VPC a 44-character passphrase, the encrypted VHD
    64 random bytes as base64 (AES-256-XTS; nbytes 32: AES-128-XTS), the LUKS RAW a 32-byte
    DEK), written (mode 0600) before anything is uploaded."""
    from lukspack.keys import new_key as make_key
    from lukspack.keys import wipe, write_key_file

    key, _ = make_key(target, nbytes)
    try:
        write_key_file(path, key)
    except BaseException:
        wipe(key)
        raise
    return key


def _final(e: BaseException) -> bool:
    """A refusal a retry cannot change (the key, the request): not transient, not credentials."""
    from lukspack.errors import KeyFileError

    return isinstance(e, KeyFileError) or (
        isinstance(e, CloudError) and not isinstance(e, (RemoteError, CredentialsError)))


def publish(source: str, plan: PublishPlan, key: bytearray, encrypt_options: EncryptOptions,
            progress: Any = None, say: Say = lambda _m: None, checked: Checked | None = None,
            key_name: str = "key file") -> dict[str, Any]:
    """Run a publish; key is the key file's content (already written when new); checked is
    what preflight() returned when the caller ran it already (with the source)."""
    checked = checked or preflight(plan, say, source, encrypt_options, key, key_name)
    state = _open_state(plan, checked.loc)
    ident = _resumed_source(source, encrypt_options, state)
    summary: dict[str, Any] = {"target": plan.target, "object": str(checked.loc),
                               "format": plan.format, "check": checked.check}
    if "uploaded" not in state.data:
        summary.update(_encrypt_upload(source, plan, checked.loc, key, encrypt_options, ident,
                                       state, progress, say))
    summary["sha256"] = state.data["uploaded"]["sha256"]
    summary["image"] = _import_or_withdraw(plan, checked, key, key_name, state, summary, say)
    state.remove()
    summary["authorizations"] = AUTHORIZATIONS[plan.target]
    if checked.warnings:
        summary["warnings"] = list(checked.warnings)
    return summary


def _open_state(plan: PublishPlan, loc: CosLocation) -> PublishState:
    """The publish state: what a resumed publish finished; a new publish starts without one."""
    state = PublishState(loc)
    if plan.resume:
        state.load()
    else:
        state.remove()
    return state


def _resumed_source(source: str, encrypt_options: EncryptOptions, state: PublishState
                    ) -> dict[str, Any]:
    """The source's identity; a resumed publish must find the source it started from."""
    from lukspack.remote import is_remote, remote_identity

    if is_remote(source):
        ident = remote_identity(source, encrypt_options.source_options)
    else:
        ident = source_identity(source)
    if state.data and state.data.get("source") != _identity_kept(ident):
        raise CloudError(f"{source}: not the source of the publish being resumed")
    return ident


def _identity_kept(ident: dict[str, Any]) -> dict[str, Any]:
    return {k: ident[k] for k in ("size", "mtime_ns", "head_sha256")}


def _encrypt_upload(source: str, plan: PublishPlan, loc: CosLocation, key: bytearray,
                    encrypt_options: EncryptOptions, ident: dict[str, Any], state: PublishState,
                    progress: Any, say: Say) -> dict[str, Any]:
    """Encrypt the source into the object (the sink resumes a kept upload), read back; the
    state remembers the upload. Returns the summary's resumed_parts and encrypt."""
    import dataclasses

    from lukspack.encrypt import encrypt
    from lukspack.options import fingerprint
    from lukspack.sinks.object import ObjectSinkOptions, open_object_sink

    sink_opts = ObjectSinkOptions.from_cos(plan.cos_options, resume=plan.resume,
                                           verify_remote=True, source_identity=ident,
                                           fingerprint=fingerprint(encrypt_options, plan.format))
    sink = open_object_sink(str(loc), sink_opts)
    # the check ran in preflight, before the key was written and anything was created: no
    # target here, so encrypt does not run it again
    opts = dataclasses.replace(encrypt_options, output_format=plan.format,
                               sink_options=sink_opts, target=None, skip_check=False)
    s = encrypt(source, str(loc), key, opts, progress, sink=lambda: sink,
                key_material=sink.saved_key_material)
    sha = sink.output_sha256()
    state.save(source=_identity_kept(ident),
               uploaded={"sha256": sha, "bytes": s.get("total_bytes")})
    say(f"uploaded {loc}: {s.get('total_bytes')} bytes, sha256 {sha}")
    return {"resumed_parts": sink.kept_parts, "encrypt": s}


def _import_or_withdraw(plan: PublishPlan, checked: Checked, key: bytearray, key_name: str,
                        state: PublishState, summary: dict[str, Any], say: Say
                        ) -> dict[str, Any]:
    """Wrap the key and import; refused for a reason a retry cannot change (before an image
    exists), the object is deleted and the state removed, and the error says so."""
    loc = checked.loc
    try:
        return _wrap_and_import(plan, loc, checked.creds, checked.kp, key, key_name, state,
                                summary, say)
    except Exception as e:
        if "image" in state.data or not _final(e):
            raise
        delete_object(loc, plan.cos_options)
        state.remove()
        raise type(e)(f"{e}; deleted {loc}, which could not be imported (fix this and publish "
                      "again)") from None


def _wrap_and_import(plan: PublishPlan, loc: CosLocation, creds: Credentials, kp: KeyProtect,
                     key: bytearray, key_name: str, state: PublishState, summary: dict[str, Any],
                     say: Say) -> dict[str, Any]:
    crn = parse_key_crn(plan.root_key_crn)
    wrapped = wrap_key(kp, crn.key_id, key, plan.wrap_target, check=True, name=key_name)
    summary["wdek_sha256"] = hashlib.sha256(wrapped["wdek"].encode()).hexdigest()
    say(f"wrapped the key for {plan.wrap_target}, unwrapped once and compared")
    req = import_request(plan, loc, wrapped["wdek"] if "image" not in state.data
                         else "unused", creds.api_key or "")
    if plan.target == "classic":
        image = state.data.get("image") or imports.send(req, creds.tokens(),
                                                        "SoftLayer createFromIcos")
        state.save(image=image)
        out = {k: image.get(k) for k in ("id", "globalIdentifier", "name")}
        if plan.wait:
            done = imports.wait_classic_image(
                image["id"], creds.tokens(), api_url=plan.api_url,
                interval_s=float(os.environ.get("LUKSPACK_POLL_S", "15")),
                on_status=lambda st: say(f"image template status: {st}"))
            out["status"] = (done.get("status") or {}).get("keyName")
        return out
    created = state.data.get("image")
    if created is None:
        created = imports.send(req, creds.tokens(), "VPC image create")
        state.save(image=created)
        say(f"image {created.get('id')} created, status {created.get('status')}")
    return vpc_import_and_wait(
        req, creds.tokens(), wait=plan.wait, expected_sha256=summary["sha256"],
        api_url=plan.api_url, on_status=lambda st: say(f"image status: {st}"), created=created)
