"""Remote sources: `cos://REGION/BUCKET/OBJECT` and `http(s)://...` read in place, as ByteSources.

`open_remote(url, options)` gives a RemoteFile (cache.py) over a fetcher that makes one ranged GET
at a time: s3.py (S3 GetObject with Range and IfMatch, credentials and endpoint resolved as
`upload` resolves them) or http.py (HTTP Range GETs with If-Match; basic auth from
LUKSPACK_HTTP_USER / LUKSPACK_HTTP_PASSWORD or ~/.netrc, never from the URL). The format readers
run over it unchanged (images/source.py). A URL's query string (a presigned URL's signature) is
never shown: `redact()` is the only form of a URL in messages and reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lukspack.errors import LukspackError
from lukspack.errors import SourceChanged as SourceChangedError

if TYPE_CHECKING:
    from lukspack.images.base import DiskImage

HTTP_SCHEMES = ("http://", "https://")
COS_SCHEME = "cos://"
MiB = 1 << 20


class RemoteSourceError(LukspackError):
    """A remote source cannot be read: refused, unreachable, or failing after retries."""


class SourceChanged(RemoteSourceError, SourceChangedError):
    """The remote object is not the one opened (new ETag, or a precondition failed); a local
    file that changes is errors.SourceChanged, this class's other base."""


def is_remote(path: str) -> bool:
    return path.startswith((COS_SCHEME, *HTTP_SCHEMES))


def redact(url: str) -> str:
    """The URL as messages show it: no user info, and the query string (a presigned URL's
    credentials) replaced by '?...'."""
    if not url.startswith(HTTP_SCHEMES):
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" + ("?..." if parts.query else "")


@dataclass(frozen=True)
class RemoteOptions:
    """How remote sources are read. cos: a cloud.upload.CosOptions (endpoint, credentials file,
    IAM URL), the ones `upload` takes; None: from the environment, as `upload` without options."""

    cos: Any = None
    block_size: int = 1 * MiB  # aligned unit of every GET and of the cache
    cache_bytes: int = 64 * MiB  # the block cache's bound (read-ahead included)
    readahead: int = 4  # blocks fetched ahead of a sequential run
    workers: int = 4  # GETs in flight at once
    attempts: int = 5  # per block: 5xx, resets and short reads are tried again
    # first wait between attempts, doubled each time ($LUKSPACK_REMOTE_BACKOFF_S: tests)
    backoff_s: float = field(default_factory=lambda: float(
        os.environ.get("LUKSPACK_REMOTE_BACKOFF_S", "0.2")))
    whole_limit: int = 8 * MiB  # a server that ignores Range: objects up to this are taken whole

    def __post_init__(self) -> None:
        if self.block_size < 4096 or self.block_size & (self.block_size - 1):
            raise LukspackError(f"remote block size {self.block_size} must be a power of two of "
                                "at least 4096")
        if self.cache_bytes < 2 * self.block_size:
            raise LukspackError(f"remote cache ({self.cache_bytes} bytes) must hold at least two "
                                f"blocks of {self.block_size}")


def open_remote(url: str, options: RemoteOptions | None = None) -> Any:
    """A RemoteFile (a ByteSource) of the object, pinned to its version at open."""
    from lukspack.remote.cache import RemoteFile

    opts = options or RemoteOptions()
    if url.startswith(COS_SCHEME):
        from lukspack.remote.s3 import S3Fetcher

        fetcher: Any = S3Fetcher(url, opts)
    else:
        from lukspack.remote.http import HttpFetcher

        fetcher = HttpFetcher(url, opts)
    return RemoteFile(fetcher, opts)


def remote_identity(url: str, options: RemoteOptions | None = None) -> dict[str, Any]:
    """What tells a remote source apart (a resumed upload checks it): its size and version, in
    the fields of cloud.multipart.source_identity."""
    src = open_remote(url, options)
    try:
        return {"path": src.name, "size": src.size, "mtime_ns": None, "etag": src.version,
                "head_sha256": None, "tail_sha256": None}
    finally:
        src.close()


def source_reads(image: DiskImage) -> dict[str, Any] | None:
    """{"gets": N, "bytes": M} of the image's remote source, None for a local one."""
    return image.source.stats()
