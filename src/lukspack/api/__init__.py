"""lukspack's Python API: one function per job, each taking a frozen request and returning a
frozen result whose `to_dict()` is what the command's `--json` prints. The CLI parses options,
builds the request, calls the job and renders the result; `fleet` and users' scripts call the
same functions and get the same typed errors (`lukspack.errors`; `exit_code` maps one to the
CLI's exit code). docs/api.md has worked examples.

The disk jobs (`encrypt`, `verify`, `decrypt`, `check`) and the cloud jobs (`upload`,
`abort_upload`, `wrap_key`, `unwrap_key`, `import_image`, `publish`) are here; the fleet, key
and key-slot jobs are in `lukspack.api.fleet`, `lukspack.api.keys` and `lukspack.api.keyslots`."""

from __future__ import annotations

from lukspack.api.cloud import (
    AbortUploadResult,
    KmsTarget,
    UnwrapKeyRequest,
    UnwrapKeyResult,
    UploadRequest,
    UploadResult,
    WrapKeyRequest,
    WrapKeyResult,
    abort_upload,
    unwrap_key,
    unwrap_mismatch,
    upload,
    wrap_key,
)
from lukspack.api.common import KeySource, Result, exit_code
from lukspack.api.disk import (
    EncryptCheck,
    EncryptRequest,
    EncryptResult,
    ObjectUpload,
    encrypt,
    json_digests,
)
from lukspack.api.imports import ImportRequest, ImportResult, import_image
from lukspack.api.opened import (
    CheckFinding,
    CheckRequest,
    CheckResult,
    DecryptRequest,
    DecryptResult,
    VerifyRequest,
    VerifyResult,
    check,
    decrypt,
    verify,
)
from lukspack.api.publish import PublishRequest, PublishResult, publish

__all__ = [
    "KeySource", "Result", "exit_code",
    "EncryptCheck", "EncryptRequest", "EncryptResult", "ObjectUpload", "encrypt", "json_digests",
    "CheckFinding", "CheckRequest", "CheckResult", "DecryptRequest", "DecryptResult",
    "VerifyRequest", "VerifyResult", "check", "decrypt", "verify",
    "PublishRequest", "PublishResult", "publish", "ImportRequest", "ImportResult", "import_image",
    "AbortUploadResult", "KmsTarget", "UnwrapKeyRequest", "UnwrapKeyResult", "UploadRequest",
    "UploadResult", "WrapKeyRequest", "WrapKeyResult", "abort_upload", "unwrap_key",
    "unwrap_mismatch", "upload", "wrap_key",
]
