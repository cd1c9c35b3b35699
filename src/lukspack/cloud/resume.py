"""The one multipart planner and resumer, for `upload` (cloud/upload.py) and the object sink
(sinks/object.py): how a multipart upload starts (part size, create, the journal, abort when
the journal cannot be written) and which parts a resumed one need not send again.

A part is held by the server, and not sent again, when the server lists part n with the part's
size and an ETag that is the part's MD5 (S3), or the ETag the journal recorded for it when the
journal's MD5 is the part's (a server whose ETags are not MD5s). Idempotent: running it again
after any failure sends only what the server does not hold intact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from lukspack.cloud.errors import CloudError
from lukspack.cloud.location import CosLocation
from lukspack.cloud.multipart import (
    Journal,
    PartRecord,
    abort_upload,
    choose_part_size,
    list_server_parts,
)
from lukspack.cloud.s3 import cloud_error


def plan_part_size(total: int, requested: int) -> int:
    """The requested part size, grown until the object takes at most 10,000 parts."""
    return choose_part_size(total, requested)


@dataclass
class Multipart:
    """One multipart upload with its journal: new (start) or kept (resume)."""

    journal: Journal
    part_size: int
    server: dict[int, tuple[int, str]] = field(default_factory=dict)  # n -> (size, ETag)
    kept: int = 0  # parts the server held, not sent again

    @property
    def upload_id(self) -> str:
        return str(self.journal.upload["upload_id"])

    @classmethod
    def start(cls, client: Any, loc: CosLocation, state_file: str, upload: dict[str, Any],
              part_size: int, metadata: dict[str, str] | None = None) -> Multipart:
        """Create the upload and its journal; `upload` holds what the journal keeps besides
        the upload id and part size (plan_part_size gives that)."""
        extra: dict[str, Any] = {"Metadata": metadata} if metadata else {}
        try:
            r = client.create_multipart_upload(Bucket=loc.bucket, Key=loc.key,
                                               ContentType="application/octet-stream", **extra)
        except Exception as e:
            raise cloud_error(e, f"{loc}: create multipart upload") from None
        upload_id = r["UploadId"]
        try:
            journal = Journal.create(state_file, {**upload, "upload_id": upload_id,
                                                  "part_size": part_size})
        except OSError as e:
            abort_upload(client, loc, upload_id)
            raise CloudError(f"{state_file}: cannot write upload state: {e.strerror}") from None
        return cls(journal, part_size)

    @classmethod
    def resume(cls, client: Any, loc: CosLocation, journal: Journal) -> Multipart:
        """A kept upload: its part size, and the parts the server lists now."""
        return cls(journal, int(journal.upload["part_size"]),
                   list_server_parts(client, loc, journal.upload["upload_id"]))

    def held(self, n: int, data: bytes | bytearray, *, sha256: bool = True) -> PartRecord | None:
        """The record of part n when the server already holds it intact (counted in `kept`);
        None: send it. sha256: record the part's SHA-256 (a read-back compares it)."""
        on_server = self.server.get(n)
        if on_server is None or on_server[0] != len(data):
            return None
        size, etag = on_server
        md5 = hashlib.md5(data).hexdigest()
        rec = self.journal.parts.get(n)
        if md5 != etag and not (rec is not None and rec.etag == etag and rec.md5 == md5):
            return None
        self.kept += 1
        return PartRecord(size, etag, md5, hashlib.sha256(data).hexdigest() if sha256 else "")
