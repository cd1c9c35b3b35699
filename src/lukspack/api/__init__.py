"""lukspack's Python API: one function per job, each taking a frozen request and returning a
frozen result whose `to_dict()` is what the command's `--json` prints. The CLI parses options,
builds the request, calls the job and renders the result; `fleet` and users' scripts call the
same functions and get the same typed errors (`lukspack.errors`; `exit_code` maps one to the
CLI's exit code). docs/api.md has worked examples."""

from __future__ import annotations

from lukspack.api.common import KeySource, Result, exit_code
from lukspack.api.publish import PublishRequest, PublishResult, publish

__all__ = ["KeySource", "Result", "exit_code"]
__all__ += ["PublishRequest", "PublishResult", "publish"]

from lukspack.api.cloud import (  # noqa: E402
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

__all__ += ["AbortUploadResult", "KmsTarget", "UnwrapKeyRequest", "UnwrapKeyResult",
            "UploadRequest", "UploadResult", "WrapKeyRequest", "WrapKeyResult", "abort_upload",
            "unwrap_key", "unwrap_mismatch", "upload", "wrap_key"]
