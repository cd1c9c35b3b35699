"""A man in the middle between the client and the S3 server, for failure tests: it can flip a
byte in a request body (a part damaged in flight) and slow requests down, and forwards
everything else unchanged (the signature still covers what it forwards)."""

from __future__ import annotations

import http.client
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade"}
Rule = Callable[[str, dict[str, list[str]]], bool]  # (method, query) -> flip a byte?


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client killed with -9 resets its connections: expected here


class S3Proxy:
    def __init__(self, upstream: str, corrupt: Rule | None = None, delay_s: float = 0.0,
                 hold: Callable[[str, str, dict[str, list[str]]], bool] | None = None,
                 hold_s: float = 30.0) -> None:
        """hold(method, path, query): requests it picks wait hold_s before they are forwarded
        (a kill -9 test then knows the upload is still open when it strikes). release() (and
        stop()) ends the holding: a request held then is dropped, never forwarded (its client
        was killed; a part landing late on the kept upload would race the rerun), and no later
        request is held (a rerun or a Ray retry through the proxy runs at once)."""
        self.upstream = urlsplit(upstream)
        self.corrupt, self.delay_s = corrupt, delay_s
        self.hold, self.hold_s = hold, hold_s
        self.released = threading.Event()
        self.dropped = 0
        self.flipped = 0
        self.statuses: list[tuple[str, int]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = bytearray(self.rfile.read(n)) if n else bytearray()
                query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
                if body and proxy.corrupt is not None and proxy.corrupt(self.command, query):
                    body[len(body) // 2] ^= 0x01
                    proxy.flipped += 1
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                held = proxy.hold is not None and not proxy.released.is_set() and \
                    proxy.hold(self.command, urlsplit(self.path).path, query)
                if held and proxy.released.wait(proxy.hold_s):
                    proxy.dropped += 1  # held when the kill came: never forwarded
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                  timeout=120)
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in HOP:
                        conn.putheader(k, v)
                conn.endheaders(bytes(body) if body else None)
                resp = conn.getresponse()
                data = resp.read()
                proxy.statuses.append((self.command, resp.status))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                # a HEAD has no body: its content-length is the object's, as upstream said
                self.send_header("content-length", resp.getheader("content-length", "0")
                                 if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        """After a kill: drop the held requests, hold no more."""
        self.released.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def hold_parts_from(key_part: str, first: int) -> Callable[[str, str, dict[str, list[str]]], bool]:
    """Hold the upload-part requests of the object whose path holds key_part, from part `first`
    on: the parts before it land, the upload stays open."""
    def rule(method: str, path: str, query: dict[str, list[str]]) -> bool:
        n = query.get("partNumber")
        return method == "PUT" and key_part in path and n is not None and int(n[0]) >= first

    return rule


def part_rule(part: int, times: int | None) -> Rule:
    """Flip a byte in the body of upload-part `part`, the first `times` sends (None: always)."""
    seen = [0]

    def rule(method: str, query: dict[str, list[str]]) -> bool:
        if method != "PUT" or query.get("partNumber") != [str(part)]:
            return False
        seen[0] += 1
        return times is None or seen[0] <= times

    return rule


def kill_9_part_way(cmd: list[str], env: dict[str, str], upstream: str, states: Callable[[], list],
                    parts: int = 3, need: bytes = b"", delay_s: float = 0.25) -> Path:
    """Run cmd through a slow proxy to upstream; kill -9 it once its upload state file (the first
    path `states()` finds) records `parts` parts (and holds `need`); return that state file."""
    proxy = S3Proxy(upstream, delay_s=delay_s)
    env = {**env, "COS_ENDPOINT": proxy.url}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    found: list[Path] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            found = states()
            if found:
                data = found[0].read_bytes()
                if data.count(b'"part"') >= parts and need in data:
                    break
            time.sleep(0.05)
        assert found and p.poll() is None, p.stderr.read() if p.stderr else "did not start"
    finally:
        kill_9_and_stop(p, proxy)
    return found[0]


def kill_9_and_stop(p: subprocess.Popen, proxy: S3Proxy) -> None:
    """kill -9 the process (if still running), wait for it, and stop the proxy (held requests
    dropped, never forwarded)."""
    try:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
    finally:
        proxy.stop()
