"""The S3 client for IBM Cloud Object Storage, and what its errors mean.

boto3 (not IBM's fork ibm-cos-sdk: see docs/cloud.md) with HMAC signatures (SigV4), or, with
only an IAM API key, unsigned requests that carry `Authorization: Bearer TOKEN`, as COS accepts
(https://cloud.ibm.com/docs/cloud-object-storage?topic=cloud-object-storage-curl), the token
refreshed before it expires. botocore's newer default CRC checksums (aws-chunked trailers) are
turned off: every body carries Content-MD5 instead, which COS and every S3 server check.
"""

from __future__ import annotations

from typing import Any

from lukspack.cloud.credentials import Credentials
from lukspack.cloud.errors import CloudError, CredentialsError, RemoteError

# S3 error codes that may pass on a retry (the rest are permanent)
TRANSIENT_CODES = frozenset({
    "BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "RequestTimeout", "SlowDown",
    "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed", "IncompleteBody",
    "Throttling", "503", "500", "502", "504",
})
CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                              "ExpiredToken", "InvalidToken", "403"})
CONNECT_TIMEOUT_S = 30
READ_TIMEOUT_S = 300


def make_client(endpoint: str, creds: Credentials, region: str, pool_size: int = 10) -> Any:
    import boto3
    import botocore
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=max(10, pool_size + 2),
        connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        signature_version="s3v4" if creds.hmac else botocore.UNSIGNED,
    )
    session = boto3.session.Session()
    if creds.hmac:
        return session.client("s3", endpoint_url=endpoint, region_name=region, config=config,
                              aws_access_key_id=creds.hmac.access_key_id,
                              aws_secret_access_key=creds.hmac.secret_access_key)
    tokens = creds.tokens()
    client = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)

    def add_bearer(request: Any, **_: Any) -> None:
        request.headers["Authorization"] = f"Bearer {tokens.token()}"

    client.meta.events.register("before-send.s3.*", add_bearer)
    return client


def error_code(e: BaseException) -> str:
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        code = resp.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return ""


def is_transient(e: BaseException) -> bool:
    """A network failure or a server answer that may pass on a retry."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(e, ClientError):
        return error_code(e) in TRANSIENT_CODES
    return isinstance(e, (BotoCoreError, OSError))


def cloud_error(e: BaseException, what: str) -> CloudError:
    """One line for a failed S3 call: `what` names the location and the operation."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(e, CloudError):
        return e
    if isinstance(e, NoCredentialsError):
        return CredentialsError(f"{what}: no credentials")
    if isinstance(e, ClientError):
        code = error_code(e)
        msg = e.response.get("Error", {}).get("Message") or ""
        text = f"{what}: {code}" + (f" ({msg})" if msg and msg != code else "")
        if code in CREDENTIAL_CODES:
            return CredentialsError(text + ": check the HMAC keys or API key and the bucket's "
                                    "access policy")
        if code in ("NoSuchBucket", "404"):
            return CloudError(f"{what}: no such bucket at this endpoint (is the region right?)")
        return RemoteError(text) if code in TRANSIENT_CODES else CloudError(text)
    return RemoteError(f"{what}: {type(e).__name__}: {e}")
