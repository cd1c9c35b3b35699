"""A cos://REGION/BUCKET/OBJECT source: S3 GetObject with Range and IfMatch.

The endpoint, credentials (HMAC keys or an IAM API key, from the environment or the credentials
file) and region are resolved by cloud.upload.connect, exactly as `upload` resolves them, from
RemoteOptions.cos (a CosOptions). A HEAD learns the size and the ETag; every GET carries
IfMatch=ETag, and a 412 (PreconditionFailed) or an answer with another ETag is SourceChanged.
5xx, throttling, network errors and short bodies are Transient (cache.RemoteFile tries again);
botocore's own retries (3, standard mode) come first.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from lukspack.remote import RemoteOptions, RemoteSourceError, SourceChanged
from lukspack.remote.cache import Opened, Transient

CHANGED_CODES = frozenset({"PreconditionFailed", "412"})
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3Fetcher:
    def __init__(self, url: str, opts: RemoteOptions) -> None:
        from lukspack.cloud.upload import CosOptions, connect

        cos = opts.cos if opts.cos is not None else CosOptions()
        self.loc, self.endpoint, self.client = connect(url, replace(cos, concurrency=opts.workers))
        self.name = str(self.loc)
        self.opts = opts
        self.etag: str | None = None
        self.size = 0
        self.gets = self.bytes = 0
        self._count = threading.Lock()

    def open(self) -> Opened:
        try:
            r = self.client.head_object(Bucket=self.loc.bucket, Key=self.loc.key)
        except Exception as e:
            raise self._error(e, "head object") from None
        self.etag = r.get("ETag")
        self.size = int(r.get("ContentLength", 0))
        return Opened(self.size, self.etag)

    def get(self, offset: int, n: int) -> bytes:
        from botocore.exceptions import BotoCoreError

        args: dict[str, Any] = {"Bucket": self.loc.bucket, "Key": self.loc.key,
                                "Range": f"bytes={offset}-{offset + n - 1}"}
        if self.etag:
            args["IfMatch"] = self.etag
        with self._count:
            self.gets += 1
        try:
            r = self.client.get_object(**args)
            etag = r.get("ETag")
            if self.etag and etag and etag != self.etag:
                r["Body"].close()
                raise self._changed(etag)
            if not r.get("ContentRange") and int(r.get("ContentLength", 0)) != n and \
                    self.size > self.opts.whole_limit:
                r["Body"].close()
                raise RemoteSourceError(f"{self.name}: the server ignores Range (it answered "
                                        "with the whole object)")
            body: bytes = r["Body"].read()
        except (SourceChanged, RemoteSourceError):
            raise
        except (BotoCoreError, OSError) as e:
            raise Transient(f"{type(e).__name__}") from None
        except Exception as e:
            raise self._error(e, f"get bytes {offset}-{offset + n - 1}") from None
        if not r.get("ContentRange"):  # a whole-object answer of a small object
            body = body[offset : offset + n]
        with self._count:
            self.bytes += len(body)
        return body

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()

    def _changed(self, new: str | None) -> SourceChanged:
        return SourceChanged(f"{self.name}: the object changed while it was read (ETag "
                             f"{self.etag} -> {new or 'another version'})")

    def _error(self, e: BaseException, what: str) -> BaseException:
        from lukspack.cloud.s3 import cloud_error, error_code, is_transient

        code = error_code(e)
        if code in CHANGED_CODES:
            return self._changed(None)
        if code in MISSING_CODES:
            return RemoteSourceError(f"{self.name}: no such object")
        if is_transient(e):
            return Transient(code or type(e).__name__)
        return cloud_error(e, f"{self.name}: {what}")
