"""A local HTTP object server for the remote-source tests, on 127.0.0.1 in a thread.

Range GETs as S3 and web servers answer them: 206 with Content-Range, an ETag per object version,
If-Match (412 when it does not match), 416 past the end, HEAD. It counts requests and bytes, can
ask for basic auth, and injects faults into the GETs of one object: a 500, a reset (the socket
closed mid-body), a short body (a smaller Content-Length than the range), the object replaced by
another version (new ETag) after N GETs, and a mode that ignores Range (200 and the whole body).
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Obj:
    data: bytes
    version: int = 1
    faults: list[str] = field(default_factory=list)  # applied to the next GETs, one each
    change_after: int | None = None  # GETs answered before the object is replaced
    replacement: bytes | None = None
    ignore_range: bool = False
    gets: int = 0
    etag: str = ""

    def __post_init__(self) -> None:
        self.etag = f'"{hashlib.md5(self.data).hexdigest()}-{self.version}"'

    def replace(self, data: bytes) -> None:
        """A new version (the server's lock held): data and ETag change together."""
        self.data, self.version = data, self.version + 1
        self.__post_init__()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that closed its connection (lukspack refusing a 200, a pool reset)


class ObjectServer:
    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.bytes_sent = 0
        self.auth: tuple[str, str] | None = None
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                server.handle(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                server.handle(self, head=False)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def put(self, name: str, data: bytes) -> Obj:
        obj = self.objects[name] = Obj(data)
        return obj

    def gets(self, name: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == "GET" and p.split("?")[0] == f"/{name}")

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- one request -----------------------------------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = h.path.split("?")[0].lstrip("/")
        with self.lock:
            self.requests.append(("HEAD" if head else "GET", h.path, h.headers.get("Range")))
        if self.auth is not None:
            want = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
            if h.headers.get("Authorization") != want:
                self._send(h, 401, b"", {"WWW-Authenticate": 'Basic realm="t"'})
                return
        obj = self.objects.get(path)
        if obj is None:
            self._send(h, 404, b"no such object")
            return
        fault = None
        with self.lock:
            if not head:
                obj.gets += 1
                if obj.change_after is not None and obj.gets > obj.change_after:
                    obj.replace(obj.replacement if obj.replacement is not None else
                                bytes(len(obj.data)))
                    obj.change_after = None
                if obj.faults:
                    fault = obj.faults.pop(0)
            data, etag = obj.data, obj.etag  # one version for the whole answer
        if fault == "500":
            self._send(h, 500, b"injected")
            return
        headers = {"ETag": etag, "Accept-Ranges": "bytes",
                   "Last-Modified": "Wed, 02 Dec 2026 10:00:00 GMT"}
        match = h.headers.get("If-Match")
        if match is not None and match != etag:
            self._send(h, 412, b"", headers)
            return
        status = 200
        m = _RANGE.match(h.headers.get("Range", ""))
        if m and not obj.ignore_range:
            first = int(m.group(1))
            last = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if first >= len(data):
                self._send(h, 416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
                return
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            data, status = data[first : last + 1], 206
        if fault == "short":
            data = data[: len(data) // 2]
        if fault == "reset":
            h.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(data))}.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data[: len(data) // 3])
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
            return
        self._send(h, status, b"" if head else data, headers, length=len(data))

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes,
              headers: dict[str, str] | None = None, length: int | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        try:
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client closed early (refused 200)
            h.close_connection = True
            return
        with self.lock:
            self.bytes_sent += len(body)
