"""A plain-HTTP Range server for bench/remote_bench.py, run as its own process (so that it does
not share a GIL with the client it serves): the files of one directory on 127.0.0.1, Range GETs
answered 206 with Content-Range (os.sendfile), an ETag per file version, If-Match (412), 416 past
the end, HEAD, Accept-Ranges. It counts the GETs and the body bytes it sends: `GET /_stats` gives
them as JSON and resets them.

    python bench/range_server.py DIR     # prints the port on stdout, serves until killed
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    root = Path(".")
    gets = 0
    bytes_sent = 0
    lock = threading.Lock()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that closed its connection early


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/_stats":
            with self.server.lock:
                body = json.dumps({"gets": self.server.gets, "bytes": self.server.bytes_sent})
                self.server.gets = self.server.bytes_sent = 0
            self._headers(200, {"Content-Type": "application/json"}, len(body))
            self.wfile.write(body.encode())
            return
        self._answer(head=False)

    def _headers(self, status: int, headers: dict[str, str], length: int) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _answer(self, *, head: bool) -> None:
        name = self.path.split("?")[0].lstrip("/")
        path = self.server.root / name
        if "/" in name or not name or not path.is_file():
            self._headers(404, {}, 0)
            return
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            headers = {"ETag": f'"{size:x}-{st.st_mtime_ns:x}"', "Accept-Ranges": "bytes",
                       "Last-Modified": formatdate(st.st_mtime, usegmt=True)}
            match = self.headers.get("If-Match")
            if match is not None and match != headers["ETag"]:
                self._headers(412, headers, 0)
                return
            first, last, status = 0, size - 1, 200
            m = _RANGE.match(self.headers.get("Range", ""))
            if m:
                first = int(m.group(1))
                last = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
                if first >= size:
                    self._headers(416, {**headers, "Content-Range": f"bytes */{size}"}, 0)
                    return
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
                status = 206
            n = last - first + 1
            self._headers(status, headers, n)
            if head:
                return
            sent = 0
            try:
                while sent < n:
                    k = os.sendfile(self.connection.fileno(), f.fileno(), first + sent, n - sent)
                    if k == 0:
                        break
                    sent += k
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            with self.server.lock:
                self.server.gets += 1
                self.server.bytes_sent += sent


def main() -> None:
    server = _Server(("127.0.0.1", 0), Handler)
    server.root = Path(sys.argv[1])
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
