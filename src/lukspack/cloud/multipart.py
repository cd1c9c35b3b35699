"""Parallel S3 multipart uploads, called directly (create, upload-part, complete, abort), with
a resume journal.

Parts are numbered by their place in the object, not by when they are sent: part n holds bytes
[(n-1) * part_size, n * part_size). That is what lets a streamed image hold part 1 (its header)
until the end, and what `upload_fileobj` cannot do (it numbers parts in stream order).

Limits (https://cloud.ibm.com/docs/cloud-object-storage?topic=cloud-object-storage-large-objects):
parts of 5 MiB to 5 GiB, the last one smaller, at most 10,000 parts. Each part carries its
Content-MD5, so the server refuses a part damaged on the way (BadDigest); such a part is sent
again, up to PART_ATTEMPTS times.

The journal (state file, mode 0600) is JSON lines, appended as the upload goes:
    {"upload": {...}}                 first: upload id, location, endpoint, part size, source
    {"part": N, "size", "etag", "md5", "sha256"}   one line per part the server accepted
    {"key_material": BASE64}          a streamed image's LUKS header area (an encrypted VHD's
                                      footer); public in the image
A torn last line (the process killed while writing it) is ignored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lukspack.cloud.errors import CloudError, RemoteError
from lukspack.cloud.location import CosLocation
from lukspack.cloud.s3 import cloud_error, error_code, is_transient

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_CONCURRENCY = 4
PART_ATTEMPTS = 4
SHA256_METADATA = "sha256"  # x-amz-meta-sha256: the whole object's SHA-256, hex
JOURNAL_VERSION = 1

ProgressFn = Callable[[str, int, int], None]


def choose_part_size(total: int, requested: int = DEFAULT_PART_SIZE) -> int:
    """The requested part size, at least 5 MiB, grown in whole MiB so that total fits in 10,000
    parts."""
    size = max(requested, MIN_PART_SIZE)
    if total > size * MAX_PARTS:
        size = -(-total // MAX_PARTS)
        size = -(-size // MiB) * MiB
    if size > MAX_PART_SIZE:
        raise CloudError(f"{total} bytes do not fit in {MAX_PARTS} parts of at most 5 GiB")
    return size


def part_count(total: int, part_size: int) -> int:
    return max(1, -(-total // part_size))


def part_range(n: int, part_size: int, total: int) -> tuple[int, int]:
    """(offset, size) of part n (1-based) in an object of total bytes."""
    start = (n - 1) * part_size
    return start, min(part_size, total - start)


@dataclass
class PartRecord:
    size: int
    etag: str
    md5: str  # hex
    sha256: str  # hex


@dataclass
class Journal:
    """The state of one multipart upload, as saved in its state file."""

    path: str
    upload: dict[str, Any]
    parts: dict[int, PartRecord] = field(default_factory=dict)
    key_material: bytes | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, path: str, upload: dict[str, Any]) -> Journal:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (json.dumps({"upload": upload}) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return cls(path, upload)

    @classmethod
    def load(cls, path: str) -> Journal | None:
        try:
            with open(path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CloudError(f"{path}: cannot read upload state: {e.strerror}") from None
        records = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if i >= len(lines) - 2:  # torn last line
                    break
                raise CloudError(f"{path}: upload state line {i + 1} is not JSON") from None
        if not records or "upload" not in records[0] or \
                records[0]["upload"].get("version") != JOURNAL_VERSION:
            raise CloudError(f"{path}: not a lukspack upload state (version {JOURNAL_VERSION})")
        j = cls(path, records[0]["upload"])
        for r in records[1:]:
            if "part" in r:
                j.parts[int(r["part"])] = PartRecord(int(r["size"]), r["etag"], r["md5"],
                                                     r["sha256"])
            elif "key_material" in r:
                j.key_material = base64.b64decode(r["key_material"])
        return j

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def add_part(self, n: int, rec: PartRecord) -> None:
        self.parts[n] = rec
        self._append({"part": n, "size": rec.size, "etag": rec.etag, "md5": rec.md5,
                      "sha256": rec.sha256})

    def set_key_material(self, data: bytes) -> None:
        self.key_material = bytes(data)
        self._append({"key_material": base64.b64encode(data).decode()})
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def list_server_parts(client: Any, loc: CosLocation, upload_id: str) -> dict[int, tuple[int, str]]:
    """{part number: (size, etag)} of the parts the server holds for the upload."""
    out: dict[int, tuple[int, str]] = {}
    marker = 0
    while True:
        try:
            r = client.list_parts(Bucket=loc.bucket, Key=loc.key, UploadId=upload_id,
                                  PartNumberMarker=marker, MaxParts=1000)
        except Exception as e:
            raise cloud_error(e, f"{loc}: list parts") from None
        for p in r.get("Parts", []):
            out[int(p["PartNumber"])] = (int(p["Size"]), p["ETag"].strip('"'))
        if not r.get("IsTruncated"):
            return out
        marker = int(r["NextPartNumberMarker"])


def upload_exists(client: Any, loc: CosLocation, upload_id: str) -> bool:
    try:
        client.list_parts(Bucket=loc.bucket, Key=loc.key, UploadId=upload_id, MaxParts=1)
    except Exception as e:
        if error_code(e) in ("NoSuchUpload", "404"):
            return False
        raise cloud_error(e, f"{loc}: list parts") from None
    return True


class BufferPool:
    """Part buffers, reused: after the first few parts no allocation happens, so the heap does
    not fragment (fresh 16 MiB objects per part grew the RSS to several times what was live)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            return self._free.pop() if self._free else bytearray(self.size)

    def give(self, buf: bytes | bytearray | memoryview) -> None:
        if isinstance(buf, bytearray) and len(buf) == self.size:
            with self._lock:
                self._free.append(buf)


class PartSender:
    """Sends numbered parts of one multipart upload from a pool of threads; submit() blocks while
    `concurrency` parts are in flight, so memory stays at part size times concurrency."""

    def __init__(self, client: Any, loc: CosLocation, upload_id: str, journal: Journal | None,
                 concurrency: int, progress: ProgressFn | None = None, total: int = 0,
                 phase: str = "upload", part_sha256: bool = True) -> None:
        self.client, self.loc, self.upload_id, self.journal = client, loc, upload_id, journal
        self.part_sha256 = part_sha256  # the object sink checks its read-back per part
        self.records: dict[int, PartRecord] = {}
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cos-part")
        self._slots = threading.BoundedSemaphore(concurrency)
        self._futures: list[Future[None]] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._progress, self._total, self._phase = progress, total, phase
        self.sent_bytes = 0
        self.retries = 0  # parts sent again after a refusal or a network error

    def done(self, n: int, rec: PartRecord, sent: bool = False) -> None:
        with self._lock:
            self.records[n] = rec
            self.sent_bytes += rec.size
            done_bytes = self.sent_bytes
        if sent and self.journal is not None:
            self.journal.add_part(n, rec)
        if self._progress is not None:
            self._progress(self._phase, done_bytes, self._total)

    def submit(self, n: int, data: bytes | bytearray, release: BufferPool | None = None) -> None:
        """Send part n; `release` gets the buffer back once it is sent (or failed)."""
        self.raise_error()
        self._slots.acquire()
        try:
            fut = self._pool.submit(self._send, n, data, release)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda _f: self._slots.release())
        self._futures.append(fut)

    def _send(self, n: int, data: bytes | bytearray, release: BufferPool | None) -> None:
        try:
            if self._error is not None:
                return
            md5 = hashlib.md5(data)
            sha = hashlib.sha256(data).hexdigest() if self.part_sha256 else ""
            etag = self.send_part(n, data, md5.digest())
            self.done(n, PartRecord(len(data), etag, md5.hexdigest(), sha), sent=True)
        except BaseException as e:  # reported by wait()/raise_error() in the caller's thread
            with self._lock:
                if self._error is None:
                    self._error = e
        finally:
            if release is not None:
                release.give(data)

    def send_part(self, n: int, data: bytes | bytearray, md5: bytes) -> str:
        """One part, Content-MD5 checked by the server; sent again when refused in transit."""
        content_md5 = base64.b64encode(md5).decode()
        body = data
        for attempt in range(1, PART_ATTEMPTS + 1):
            try:
                r = self.client.upload_part(Bucket=self.loc.bucket, Key=self.loc.key,
                                            UploadId=self.upload_id, PartNumber=n, Body=body,
                                            ContentMD5=content_md5)
                return str(r["ETag"]).strip('"')
            except Exception as e:
                if not is_transient(e) or attempt == PART_ATTEMPTS:
                    code = error_code(e)
                    if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"):
                        raise CloudError(f"{self.loc}: part {n} refused {attempt} times "
                                         f"({code}: its bytes changed on the way)") from None
                    raise cloud_error(e, f"{self.loc}: part {n}") from None
                with self._lock:
                    self.retries += 1
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
        raise AssertionError("unreachable")

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def wait(self) -> None:
        for f in self._futures:
            f.result()
        self._futures.clear()
        self.raise_error()

    def close(self) -> None:
        """Stop: running parts finish, queued ones are dropped."""
        with self._lock:
            if self._error is None:
                self._error = CloudError(f"{self.loc}: upload stopped")
        self._pool.shutdown(wait=True, cancel_futures=True)


def complete_upload(client: Any, loc: CosLocation, upload_id: str,
                    records: dict[int, PartRecord]) -> str:
    parts = [{"PartNumber": n, "ETag": f'"{records[n].etag}"'} for n in sorted(records)]
    try:
        r = client.complete_multipart_upload(Bucket=loc.bucket, Key=loc.key, UploadId=upload_id,
                                             MultipartUpload={"Parts": parts})
    except Exception as e:
        raise cloud_error(e, f"{loc}: complete the upload") from None
    return str(r.get("ETag", "")).strip('"')


def abort_upload(client: Any, loc: CosLocation, upload_id: str) -> None:
    """Abort, so that nothing is left billed; a second failure is reported, not hidden."""
    try:
        client.abort_multipart_upload(Bucket=loc.bucket, Key=loc.key, UploadId=upload_id)
    except Exception as e:
        if error_code(e) not in ("NoSuchUpload", "404"):
            raise RemoteError(f"{loc}: could not abort multipart upload {upload_id} "
                              f"({error_code(e) or type(e).__name__}); abort it with "
                              "`lukspack upload --abort`") from None


def state_name(loc: CosLocation) -> str:
    """The state file's name: the object's (not the endpoint's: public, private and direct
    endpoints reach the same upload)."""
    return hashlib.sha256(f"{loc.region}\0{loc.bucket}\0{loc.key}".encode()).hexdigest()[:16]


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lukspack", "uploads")


def state_path(loc: CosLocation, local_file: str | None = None,
               state_dir: str | None = None) -> str:
    """The state file: in state_dir when given; beside the local file when its folder is
    writable; else in the user's cache directory ($XDG_CACHE_HOME/lukspack/uploads)."""
    name = state_name(loc)
    if state_dir:
        return os.path.join(state_dir, f"{name}.lukspack-upload")
    if local_file:
        folder = os.path.dirname(os.path.abspath(local_file))
        if os.access(folder, os.W_OK):
            return os.path.join(folder, f".{os.path.basename(local_file)}.{name}.lukspack-upload")
    return os.path.join(cache_dir(), f"{name}.lukspack-upload")


def source_identity(path: str) -> dict[str, Any]:
    """What tells a source apart cheaply: size, mtime and the SHA-256 of its first and last MiB
    (a remote source's: remote.remote_identity)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            size = os.lseek(f.fileno(), 0, os.SEEK_END) if not st.st_size else st.st_size
            head = os.pread(f.fileno(), MiB, 0)
            tail = os.pread(f.fileno(), MiB, max(0, size - MiB))
    except OSError as e:
        raise CloudError(f"{path}: cannot read: {e.strerror}") from None
    return {"path": os.path.abspath(path), "size": size, "mtime_ns": st.st_mtime_ns,
            "head_sha256": hashlib.sha256(head).hexdigest(),
            "tail_sha256": hashlib.sha256(tail).hexdigest()}


def identity_change(saved: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """Which field of the source identity changed, or None."""
    if not saved:
        return None
    for k in ("size", "mtime_ns", "head_sha256", "tail_sha256", "etag"):
        if saved.get(k) != now.get(k):
            return f"{k} was {saved.get(k)}, is {now.get(k)}"
    return None
