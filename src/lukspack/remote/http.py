"""An http(s):// source: HTTP Range GETs with requests, the object pinned by its validator.

The first GET (bytes of the first block, no condition) learns the size (Content-Range) and the
version: the ETag, else Last-Modified. Every later GET carries If-Match (a strong ETag) or
If-Unmodified-Since (Last-Modified only; a weak ETag is compared on each answer instead), and a
412, or an answer with another ETag or total size, is SourceChanged (a server that gives neither
ETag nor Last-Modified: only the total size is checked). A 200 answer to a Range
request means the server ignores Range: an object up to RemoteOptions.whole_limit is taken whole,
a larger one is refused without reading its body. 5xx, 429, resets and bodies shorter than asked
are Transient (tried again by cache.RemoteFile).

Credentials: never in the URL (user:password@ is refused). LUKSPACK_HTTP_USER and
LUKSPACK_HTTP_PASSWORD give basic auth; without them requests takes the host's entry of ~/.netrc
($NETRC) by itself. A presigned URL carries its signature in the query string: messages show the
URL without it (remote.redact).
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any
from urllib.parse import urlsplit

from lukspack.remote import RemoteOptions, RemoteSourceError, SourceChanged, redact
from lukspack.remote.cache import Opened, Transient

USER_ENV, PASSWORD_ENV = "LUKSPACK_HTTP_USER", "LUKSPACK_HTTP_PASSWORD"
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 30, 120
_CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")
_AUTH_HINT = (f"give credentials in ~/.netrc or in {USER_ENV} and {PASSWORD_ENV}, or a "
              "presigned URL")


def _auth_from_env(name: str) -> tuple[str, str] | None:
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if user is None and password is None:
        return None
    if user is None or password is None:
        raise RemoteSourceError(f"{name}: set both {USER_ENV} and {PASSWORD_ENV} (one is set)")
    return user, password


class HttpFetcher:
    def __init__(self, url: str, opts: RemoteOptions) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self.name = redact(url)
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            raise RemoteSourceError(f"{self.name}: credentials in the URL are not accepted; "
                                    f"{_AUTH_HINT}")
        if not parts.hostname:
            raise RemoteSourceError(f"{self.name}: the URL names no host")
        self.url, self.opts = url, opts
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=opts.workers + 2, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.auth = _auth_from_env(self.name)  # None: requests reads ~/.netrc
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.size = 0
        self.gets = self.bytes = 0
        self._count = threading.Lock()

    # -- the fetcher interface ---------------------------------------------------------------------
    def open(self) -> Opened:
        n = self.opts.block_size
        r = self._send(0, n, conditional=False)
        try:
            if r.status_code == 416:  # an empty object has no byte 0
                total = _content_range(r.headers.get("Content-Range", ""))[2]
                if total == 0:
                    self._pin(r)
                    return Opened(0, self._version())
            self._check_status(r)
            self._pin(r)
            if r.status_code == 200:
                body = self._whole(r)
                self.size = len(body)
                return Opened(self.size, self._version(), (0, body))
            start, _, total = _content_range(r.headers.get("Content-Range", ""))
            if start != 0 or total is None:
                raise RemoteSourceError(f"{self.name}: the answer to a range request has a bad "
                                        f"Content-Range ({r.headers.get('Content-Range')!r})")
            self.size = total
            return Opened(total, self._version(), (0, self._body(r)))
        finally:
            r.close()

    def get(self, offset: int, n: int) -> bytes:
        r = self._send(offset, n, conditional=True)
        try:
            if r.status_code == 412:
                raise self._changed(r.headers.get("ETag") or r.headers.get("Last-Modified"))
            self._check_status(r)
            self._check_same(r)
            if r.status_code == 200:
                return self._whole(r)[offset : offset + n]
            start, _, total = _content_range(r.headers.get("Content-Range", ""))
            if total is not None and total != self.size:
                raise SourceChanged(f"{self.name}: the object changed while it was read (size "
                                    f"{self.size} -> {total})")
            if start != offset:
                raise Transient(f"answer for offset {start}, asked {offset}")
            return self._body(r)
        finally:
            r.close()

    def close(self) -> None:
        self.session.close()

    # -- helpers ---------------------------------------------------------------------------------
    def _send(self, offset: int, n: int, *, conditional: bool) -> Any:
        import requests

        headers = {"Range": f"bytes={offset}-{offset + n - 1}", "Accept-Encoding": "identity"}
        if conditional:
            if self.etag and not self.etag.startswith("W/"):
                headers["If-Match"] = self.etag
            elif self.last_modified:
                headers["If-Unmodified-Since"] = self.last_modified
        with self._count:
            self.gets += 1
        try:
            return self.session.get(self.url, headers=headers, stream=True,
                                    timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        except requests.exceptions.InvalidURL:
            raise RemoteSourceError(f"{self.name}: not a valid URL") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise Transient(f"{type(e).__name__}") from None
        except requests.exceptions.RequestException as e:
            raise RemoteSourceError(f"{self.name}: {type(e).__name__}") from None

    def _body(self, r: Any) -> bytes:
        import requests

        try:
            data: bytes = r.content
        except (requests.exceptions.RequestException, OSError) as e:
            raise Transient(f"connection broken while reading ({type(e).__name__})") from None
        with self._count:
            self.bytes += len(data)
        return data

    def _whole(self, r: Any) -> bytes:
        """The body of a 200 answer to a range request: the whole object, if small enough."""
        length = r.headers.get("Content-Length")
        limit = self.opts.whole_limit
        if length is None or not length.isdigit() or int(length) > limit:
            what = f"{length}-byte object" if length and length.isdigit() else "object"
            raise RemoteSourceError(f"{self.name}: the server ignores Range (it answered 200 "
                                    f"with the whole {what}); lukspack reads objects over "
                                    f"{limit >> 20} MiB only from servers that answer ranges")
        body = self._body(r)
        if len(body) != int(length):
            raise Transient(f"short read: {len(body)} of {length} bytes")
        if self.size and len(body) != self.size:
            raise SourceChanged(f"{self.name}: the object changed while it was read (size "
                                f"{self.size} -> {len(body)})")
        return body

    def _check_status(self, r: Any) -> None:
        code = r.status_code
        if code in (200, 206):
            return
        if code >= 500 or code == 429:
            raise Transient(f"HTTP {code} {r.reason or ''}".rstrip())
        text = f"{self.name}: HTTP {code} {r.reason or ''}".rstrip()
        if code in (401, 403):
            raise RemoteSourceError(f"{text}: {_AUTH_HINT}")
        raise RemoteSourceError(text)

    def _pin(self, r: Any) -> None:
        self.etag = r.headers.get("ETag")
        self.last_modified = r.headers.get("Last-Modified")

    def _version(self) -> str | None:
        return self.etag or self.last_modified

    def _check_same(self, r: Any) -> None:
        etag, modified = r.headers.get("ETag"), r.headers.get("Last-Modified")
        if self.etag is not None and etag is not None and etag != self.etag:
            raise self._changed(etag)
        if self.etag is None and self.last_modified and modified and modified != self.last_modified:
            raise self._changed(modified)

    def _changed(self, new: str | None) -> SourceChanged:
        what = "ETag" if self.etag else "Last-Modified"
        return SourceChanged(f"{self.name}: the object changed while it was read ({what} "
                             f"{self._version()} -> {new or 'another version'})")


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """(first, last, total) of a Content-Range header; None for what it does not give."""
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        return None, None, None
    first, last, total = m.groups()
    return (int(first) if first else None, int(last) if last else None,
            int(total) if total and total != "*" else None)
