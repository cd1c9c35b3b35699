"""The cloud jobs: upload a file to object storage, wrap a key with a Key Protect root key and
check a WDEK (`lukspack upload`, `wrap-key`, `unwrap-key`).

The IBM Cloud API key comes from the environment ($IBMCLOUD_API_KEY) or a credentials file,
never from a request (cloud.credentials); no request field holds a secret."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lukspack.api.common import KeySource, Result
from lukspack.cloud.upload import CosOptions
from lukspack.errors import UsageError

if TYPE_CHECKING:
    from lukspack.cloud.errors import CloudError
    from lukspack.cloud.kms import KeyProtect

__all__ = ["AbortUploadResult", "KmsTarget", "UnwrapKeyRequest", "UnwrapKeyResult",
           "UploadRequest", "UploadResult", "WrapKeyRequest", "WrapKeyResult", "abort_upload",
           "unwrap_key", "unwrap_mismatch", "upload", "wrap_key"]


@dataclass(frozen=True)
class UploadRequest:
    """A file to cos://REGION/BUCKET/OBJECT; cos_options: endpoint, credentials file, part
    size (bytes), concurrency, resume, state directory, verify_remote."""

    file: str
    location: str
    cos_options: CosOptions = field(default_factory=CosOptions)


@dataclass(frozen=True)
class UploadResult(Result):
    """What `upload --json` prints."""

    ALWAYS = ("state_file",)

    location: str
    endpoint: str
    bytes: int
    part_size: int
    resumed: bool
    parts: int
    sha256: str
    etag: str
    sent_parts: int
    kept_parts: int
    retries: int
    state_file: str | None
    verified_remote: bool
    seconds: float


@dataclass(frozen=True)
class AbortUploadResult(Result):
    """What `upload --abort --json` prints: the upload discarded."""

    location: str
    aborted: str


def upload(request: UploadRequest, *, progress: Any = None) -> UploadResult:
    """Parallel multipart upload, each part checked by the server, the SHA-256 stored as the
    object's metadata; interrupted, it is kept for a resume (cos_options.resume)."""
    from lukspack.cloud.upload import upload_file

    s = upload_file(request.file, request.location, request.cos_options, progress)
    return UploadResult.from_summary(s)


def abort_upload(request: UploadRequest) -> AbortUploadResult:
    """Discard the kept (interrupted) upload of the file to the location."""
    from lukspack.cloud.upload import abort_kept

    opts = request.cos_options
    if opts.resume or opts.verify_remote:
        raise UsageError("--abort discards the kept upload: it cannot go with "
                         + ("--resume" if opts.resume else "--verify-remote"))
    return AbortUploadResult.from_summary(abort_kept(request.file, request.location, opts))


@dataclass(frozen=True)
class KmsTarget:
    """A Key Protect (or Hyper Protect Crypto Services) instance and root key."""

    region: str
    instance_id: str
    root_key_id: str
    kms_url: str | None = None
    private: bool = False  # private.REGION.kms.cloud.ibm.com
    credentials_file: str | None = None  # 'apikey'; else $IBMCLOUD_API_KEY
    iam_url: str | None = None


@dataclass(frozen=True)
class WrapKeyRequest:
    key: KeySource  # what the image was encrypted with
    target: str  # vpc | classic | luks-raw
    kms: KmsTarget
    output: str | None = None  # the WDEK written here (mode 0600, never over a file)
    check: bool = True  # unwrap once and compare


@dataclass(frozen=True)
class WrapKeyResult(Result):
    """What `wrap-key --json` prints."""

    wdek: str
    target: str
    root_key_id: str
    instance_id: str
    checked: bool
    warnings: tuple[str, ...] | None = None
    output: str | None = None


@dataclass(frozen=True)
class UnwrapKeyRequest:
    wdek_file: str
    kms: KmsTarget
    key: KeySource | None = None  # say whether the WDEK holds this key
    target: str = "vpc"


@dataclass(frozen=True)
class UnwrapKeyResult(Result):
    """What `unwrap-key --json` prints (the unwrapped key never)."""

    root_key_id: str
    unwrapped_bytes: int
    matches_key_file: bool | None = None


def key_protect(kms: KmsTarget) -> KeyProtect:
    """The Key Protect client, with an IAM token from the API key (environment or file)."""
    from lukspack.cloud.credentials import NoCredentials, load_credentials
    from lukspack.cloud.errors import CredentialsError
    from lukspack.cloud.kms import KeyProtect, kms_url

    try:
        creds = load_credentials(kms.credentials_file, iam_url=kms.iam_url)
    except NoCredentials:  # others (a bad --iam-url, a broken file) say what is wrong
        raise CredentialsError("no IBM Cloud API key: set IBMCLOUD_API_KEY or put 'apikey' in "
                               "the credentials file") from None
    return KeyProtect(kms_url(kms.region, kms.private, kms.kms_url), kms.instance_id,
                      creds.tokens())


def wrap_key(request: WrapKeyRequest) -> WrapKeyResult:
    """Wrap the key with the root key as the target's image service needs it back."""
    from lukspack.cloud.kms import wrap_key as do_wrap
    from lukspack.keys import check_new_key_path, write_key_file

    if request.output is not None:  # before Key Protect is asked: never overwritten
        check_new_key_path(request.output, "the WDEK")
    kp = key_protect(request.kms)
    with request.key.open(dek_rules=False) as key:
        r = do_wrap(kp, request.kms.root_key_id, key, request.target, check=request.check,
                    name=request.key.name)
    if request.output:
        write_key_file(request.output, r["wdek"].encode())  # mode 0600
        r["output"] = request.output
    return WrapKeyResult.from_summary(r)


def read_text(path: str, what: str) -> str:
    """A small ASCII file's content (a WDEK), stripped."""
    from lukspack.cloud.errors import CloudError

    try:
        with open(path, encoding="ascii") as f:
            return f.read(1 << 16).strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CloudError(f"{path}: cannot read the {what}: "
                         f"{getattr(e, 'strerror', None) or 'not ASCII text'}") from None


def unwrap_key(request: UnwrapKeyRequest) -> UnwrapKeyResult:
    """Unwrap the WDEK (its content never shown) and, with a key, compare."""
    from lukspack.cloud.kms import unwrap_matches

    kp = key_protect(request.kms)
    wdek = read_text(request.wdek_file, "WDEK")
    root = request.kms.root_key_id
    if request.key is None:
        return UnwrapKeyResult.from_summary(unwrap_matches(kp, root, wdek, None, request.target))
    with request.key.open(dek_rules=False) as key:
        return UnwrapKeyResult.from_summary(unwrap_matches(kp, root, wdek, key, request.target))


def unwrap_mismatch(request: UnwrapKeyRequest, result: UnwrapKeyResult) -> CloudError | None:
    """The error (exit 1) when the WDEK does not hold the request's key, after the result is
    shown; None when it does or no key was given."""
    from lukspack.cloud.errors import CloudError

    if request.key is None or result.matches_key_file:
        return None
    return CloudError(f"{request.wdek_file}: does not hold {request.key.name} as "
                      f"{request.target} needs it")
