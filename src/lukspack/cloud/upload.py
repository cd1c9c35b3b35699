"""`lukspack upload FILE cos://...`: a local file into object storage, resumable.

A file up to one part goes up in one PUT; larger ones as a parallel multipart upload. Either way
every body carries its Content-MD5 (the server refuses a damaged one) and the object gets the
SHA-256 of the whole file as metadata (x-amz-meta-sha256), hashed before the upload is created
(S3 sets metadata at creation). On a failure that may pass (network, 5xx, an interrupt) the
multipart upload is kept with its state file and the message says how to resume; on any other
failure it is aborted, so nothing is left billed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lukspack.cloud.credentials import load_credentials
from lukspack.cloud.errors import CloudError, RemoteError
from lukspack.cloud.location import ENDPOINT_TYPES, CosLocation, endpoint_url, parse_cos
from lukspack.cloud.multipart import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    PART_ATTEMPTS,
    SHA256_METADATA,
    BufferPool,
    Journal,
    MiB,
    PartSender,
    ProgressFn,
    abort_upload,
    complete_upload,
    identity_change,
    part_count,
    part_range,
    source_identity,
    state_path,
    upload_exists,
)
from lukspack.cloud.resume import Multipart, plan_part_size
from lukspack.cloud.s3 import cloud_error, is_transient, make_client
from lukspack.errors import Interrupted, LukspackError

HASH_CHUNK = 8 * MiB


@dataclass
class CosOptions:
    """Where and how to reach object storage, shared by upload, the object sink and publish."""

    endpoint_url: str | None = None
    endpoint_type: str = "public"
    credentials_file: str | None = None
    iam_url: str | None = None
    part_size: int = DEFAULT_PART_SIZE
    concurrency: int = DEFAULT_CONCURRENCY
    resume: bool = False
    resumable: bool = True  # keep a failed upload for --resume when the failure may pass
    state_dir: str | None = None
    verify_remote: bool = False

    def __post_init__(self) -> None:
        if self.endpoint_type not in ENDPOINT_TYPES:
            raise CloudError(f"endpoint type {self.endpoint_type!r} must be one of "
                             f"{', '.join(ENDPOINT_TYPES)}")
        if not 1 <= self.concurrency <= 64:
            raise CloudError(f"concurrency {self.concurrency} must be 1 to 64")


def connect(location: str, opts: CosOptions, *, need_key: bool = True
            ) -> tuple[CosLocation, str, Any]:
    """(parsed location, endpoint, S3 client)."""
    loc = parse_cos(location, need_key=need_key)
    ep = endpoint_url(loc.region, opts.endpoint_type, opts.endpoint_url)
    creds = load_credentials(opts.credentials_file, iam_url=opts.iam_url)
    return loc, ep, make_client(ep, creds, loc.region, opts.concurrency)


def resumable_failure(e: BaseException) -> bool:
    if isinstance(e, (Interrupted, KeyboardInterrupt, RemoteError)):
        return True
    return not isinstance(e, LukspackError) and is_transient(e)


def sha256_file(path: str, size: int, progress: ProgressFn | None) -> str:
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress("sha256", done, size)
    if done != size:
        raise CloudError(f"{path}: changed size while being read ({size} -> {done} bytes)")
    return h.hexdigest()


def put_small(client: Any, loc: CosLocation, data: bytes, sha256: str) -> str:
    """One PUT with Content-MD5 and the SHA-256 metadata, sent again if refused in transit."""
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    for attempt in range(1, PART_ATTEMPTS + 1):
        try:
            r = client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, ContentMD5=md5,
                                  ContentType="application/octet-stream",
                                  Metadata={SHA256_METADATA: sha256})
            return str(r.get("ETag", "")).strip('"')
        except Exception as e:
            if not is_transient(e) or attempt == PART_ATTEMPTS:
                raise cloud_error(e, f"{loc}: put object") from None
            time.sleep(0.2 * 2 ** attempt)
    raise AssertionError("unreachable")


def _ranges(total: int, part_size: int) -> Iterator[tuple[int, int, int]]:
    for n in range(1, part_count(total, part_size) + 1):
        off, ln = part_range(n, part_size, total)
        yield n, off, ln


def read_back_sha256(client: Any, loc: CosLocation, total: int, part_size: int, concurrency: int,
                     expected: dict[int, str] | None = None,
                     progress: ProgressFn | None = None) -> str:
    """The SHA-256 of the stored object, read with parallel ranged GETs (one per part, at most
    `concurrency` in memory); each part checked against `expected` (part -> SHA-256) if given."""

    def get(off: int, ln: int) -> bytes:
        try:
            r = client.get_object(Bucket=loc.bucket, Key=loc.key, Range=f"bytes={off}-{off + ln - 1}")
            data: bytes = r["Body"].read()
        except Exception as e:
            raise cloud_error(e, f"{loc}: read back bytes {off}+{ln}") from None
        if len(data) != ln:
            raise CloudError(f"{loc}: read back {len(data)} bytes at {off}, expected {ln}")
        return data

    whole = hashlib.sha256()
    window: list[tuple[int, Future[bytes]]] = []
    done = 0
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cos-get") as pool:
        it = _ranges(total, part_size)
        for n, off, ln in it:
            window.append((n, pool.submit(get, off, ln)))
            if len(window) < concurrency:
                continue
            done += _consume(window.pop(0), whole, expected, loc)
            if progress:
                progress("read back", done, total)
        while window:
            done += _consume(window.pop(0), whole, expected, loc)
            if progress:
                progress("read back", done, total)
    return whole.hexdigest()


def _consume(item: tuple[int, Future[bytes]], whole: Any, expected: dict[int, str] | None,
             loc: CosLocation) -> int:
    n, fut = item
    data = fut.result()
    if expected is not None and expected.get(n) and hashlib.sha256(data).hexdigest() != expected[n]:
        raise CloudError(f"{loc}: part {n} read back differs from what was uploaded")
    whole.update(data)
    return len(data)


def upload_file(path: str, location: str, opts: CosOptions | None = None,
                progress: ProgressFn | None = None) -> dict[str, Any]:
    """Upload path to cos://REGION/BUCKET/OBJECT; returns a summary."""
    opts = opts or CosOptions()
    t0 = time.monotonic()
    loc, ep, client = connect(location, opts)
    ident = source_identity(path)
    size = ident["size"]
    spath = state_path(loc, path, opts.state_dir)
    journal = _kept_journal(client, loc, location, path, spath, ident, opts)
    part_size = journal.upload["part_size"] if journal else plan_part_size(size, opts.part_size)
    summary: dict[str, Any] = {"location": str(loc), "endpoint": ep, "bytes": size,
                               "part_size": part_size, "resumed": journal is not None}
    if journal is None and size <= part_size:
        summary.update(_put_whole(client, loc, path, size, progress))
    else:
        if journal is None:
            sha = sha256_file(path, size, progress)
            mp = Multipart.start(client, loc, spath, {
                "version": 1, "kind": "upload", "location": str(loc), "endpoint": ep,
                "total_size": size, "sha256": sha, "source": ident}, part_size,
                metadata={SHA256_METADATA: sha})
        else:
            mp = Multipart.resume(client, loc, journal)
        summary.update(_send_multipart(client, loc, path, size, part_size, mp, spath, opts,
                                       progress))
    return _finish(summary, client, loc, size, part_size, opts, progress, t0)


def _kept_journal(client: Any, loc: CosLocation, location: str, path: str, spath: str,
                  ident: dict[str, Any], opts: CosOptions) -> Journal | None:
    """The kept upload's journal to resume (with --resume, the source unchanged), or None."""
    journal = Journal.load(spath)
    if journal is not None and not opts.resume:
        raise CloudError(f"{location}: an interrupted upload of {path} is kept ({spath}); "
                         "continue it with --resume or discard it with --abort")
    if journal is not None:
        change = identity_change(journal.upload.get("source"), ident)
        if change:
            raise CloudError(f"{path}: changed since the kept upload started ({change}); "
                             "discard it with --abort and upload again")
        if not upload_exists(client, loc, journal.upload["upload_id"]):
            journal.remove()
            journal = None
    return journal


def _put_whole(client: Any, loc: CosLocation, path: str, size: int,
               progress: ProgressFn | None) -> dict[str, Any]:
    """A file of one part: one PUT."""
    with open(path, "rb") as f:
        data = f.read(size + 1)
    if len(data) != size:
        raise CloudError(f"{path}: changed size while being read")
    sha = hashlib.sha256(data).hexdigest()
    etag = put_small(client, loc, data, sha)
    if progress:
        progress("upload", size, size)
    return dict(parts=1, sha256=sha, etag=etag, sent_parts=1, kept_parts=0, retries=0,
                state_file=None)


def _send_multipart(client: Any, loc: CosLocation, path: str, size: int, part_size: int,
                    mp: Multipart, spath: str, opts: CosOptions,
                    progress: ProgressFn | None) -> dict[str, Any]:
    """Send the parts not yet sent and complete; on a failure that may pass the upload is kept
    (the error gets the --resume hint), else aborted."""
    journal = mp.journal
    upload_id, sha = journal.upload["upload_id"], journal.upload["sha256"]
    sender = PartSender(client, loc, upload_id, journal, opts.concurrency, progress, size,
                        part_sha256=False)
    try:
        kept = _send_parts(path, size, part_size, sender, mp)
        sender.wait()
        etag = complete_upload(client, loc, upload_id, sender.records)
    except BaseException as e:
        sender.close()
        if opts.resumable and resumable_failure(e):
            if isinstance(e, LukspackError):
                e.add_hint(f"the upload is kept: run the same command with --resume to send "
                           f"the rest, or with --abort to discard it (state {spath})")
        else:
            abort_upload(client, loc, upload_id)
            journal.remove()
        raise
    sender.close()
    journal.remove()
    return dict(parts=part_count(size, part_size), sha256=sha, etag=etag,
                sent_parts=part_count(size, part_size) - kept, kept_parts=kept,
                retries=sender.retries, state_file=None)


def _send_parts(path: str, size: int, part_size: int, sender: PartSender, mp: Multipart) -> int:
    """Submit every part the server does not already hold intact; returns how many it held."""
    buffers = BufferPool(part_size)
    with open(path, "rb") as f:
        fd = f.fileno()
        for n, off, ln in _ranges(size, part_size):
            data = buffers.take() if ln == part_size else bytearray(ln)
            if os.preadv(fd, [data], off) != ln:
                raise CloudError(f"{path}: changed size while being uploaded")
            held = mp.held(n, data, sha256=False)
            if held is not None:
                sender.done(n, held)
                buffers.give(data)
                continue
            sender.submit(n, data, buffers)
    return mp.kept


def _finish(summary: dict[str, Any], client: Any, loc: CosLocation, size: int, part_size: int,
            opts: CosOptions, progress: ProgressFn | None, t0: float) -> dict[str, Any]:
    if opts.verify_remote:
        got = read_back_sha256(client, loc, size, part_size, opts.concurrency, None, progress)
        if got != summary["sha256"]:
            raise CloudError(f"{loc}: object reads back with SHA-256 {got}, uploaded "
                             f"{summary['sha256']}")
    summary["verified_remote"] = opts.verify_remote
    summary["seconds"] = round(time.monotonic() - t0, 3)
    return summary


def abort_kept(path: str, location: str, opts: CosOptions | None = None) -> dict[str, Any]:
    """Discard the kept upload of path to location (`upload --abort`)."""
    opts = opts or CosOptions()
    loc, ep, client = connect(location, opts)
    spath = state_path(loc, path, opts.state_dir)
    journal = Journal.load(spath)
    if journal is None:
        raise CloudError(f"{location}: no kept upload of {path} (no state file {spath})")
    abort_upload(client, loc, journal.upload["upload_id"])
    journal.remove()
    return {"location": str(loc), "aborted": journal.upload["upload_id"]}

