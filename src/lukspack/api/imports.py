"""The import job: `import_image` creates a VPC custom image (POST /v1/images) or a classic
image template (SoftLayer createFromIcos) from an encrypted image already in COS, with its
wrapped DEK, and with `wait` follows it until it is available (VPC: the image's SHA-256 compared
with the object's).

Its rules live here: --wait and --dry-run exclude each other, --expect-sha256 (VPC) and
--timeout (classic) are read by --wait only, the options of one target are refused for the
other; the API key comes from the credentials file or $IBMCLOUD_API_KEY, never the request."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lukspack.api.common import Result
from lukspack.errors import UsageError

Say = Callable[[str], None]
CLASSIC_TIMEOUT_S = 4 * 3600

__all__ = ["ImportRequest", "ImportResult", "import_image", "CLASSIC_TIMEOUT_S"]


@dataclass(frozen=True)
class ImportRequest:
    """target vpc (`os`: the operating system name, `resource_group`, `expect_sha256`) or
    classic (`os`: the operatingSystemReferenceCode, `note`, `cloud_init`, `byol`,
    `image_format` vhd or raw, `timeout_s`); `file` is cos://REGION/BUCKET/OBJECT, `wdek_file`
    the wrapped DEK. dry_run: describe the request (secrets redacted), send nothing."""

    target: str
    name: str
    file: str
    os: str
    root_key_crn: str
    wdek_file: str
    resource_group: str | None = None
    expect_sha256: str | None = None
    note: str = ""
    cloud_init: bool = True
    byol: bool = False
    image_format: str = "vhd"
    wait: bool = False
    timeout_s: int | None = None  # None: CLASSIC_TIMEOUT_S
    dry_run: bool = False
    api_url: str | None = None
    credentials_file: str | None = None
    iam_url: str | None = None

    def __post_init__(self) -> None:
        if self.target not in ("vpc", "classic"):
            raise UsageError(f"import to {self.target!r}: give vpc or classic")
        if self.wait and self.dry_run:
            raise UsageError("--dry-run sends nothing: there is nothing to --wait for")
        flag, read_by_wait = (("--expect-sha256", self.expect_sha256) if self.target == "vpc"
                              else ("--timeout", self.timeout_s))
        if not self.wait and read_by_wait is not None:
            raise UsageError(f"{flag} is read by --wait: give --wait, or drop {flag}")
        if self.target == "classic" and (self.resource_group or self.expect_sha256):
            raise UsageError("--resource-group and --expect-sha256 are for VPC imports")
        if self.target == "vpc" and (self.note or self.byol or not self.cloud_init
                                     or self.image_format != "vhd" or self.timeout_s):
            raise UsageError("--note, --byol, --no-cloud-init, --output-format and --timeout "
                             "are for classic imports")
        if self.image_format not in ("vhd", "raw"):
            raise UsageError(f"--output-format {self.image_format}: give vhd or raw")


@dataclass(frozen=True)
class ImportResult(Result):
    """The service's record of the image, as it answered (VPC: the image, with sha256 and
    checksum_match after --wait; classic: the SoftLayer template, status and waited after
    --wait), or with dry_run the request that would be sent (`request`, secrets redacted).
    to_dict() is what `import vpc|classic --json` prints: the record itself."""

    image: Mapping[str, Any] | None = None
    request: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.request if self.image is None and self.request is not None
                    else self.image or {})


def import_image(req: ImportRequest, on_status: Say | None = None) -> ImportResult:
    """Create the image; with req.wait, follow it (on_status(status) on each change)."""
    from lukspack.api.cloud import read_text
    from lukspack.cloud import imports

    wdek = read_text(req.wdek_file, "WDEK")
    if req.target == "vpc":
        api_req = imports.vpc_image_request(name=req.name, file=req.file, os_name=req.os,
                                            root_key_crn=req.root_key_crn, wdek=wdek,
                                            resource_group=req.resource_group,
                                            api_url=req.api_url)
        if req.dry_run:
            return ImportResult(request=imports.describe(api_req))
        return ImportResult(image=_vpc(req, api_req, on_status))
    creds = None if req.dry_run else _credentials(req)
    api_key = creds.api_key if creds is not None and creds.api_key else \
        os.environ.get("IBMCLOUD_API_KEY", "")
    api_req = imports.classic_image_request(
        name=req.name, uri=req.file, os_code=req.os, root_key_crn=req.root_key_crn, wdek=wdek,
        api_key=api_key or "<IBMCLOUD_API_KEY>", note=req.note, cloud_init=req.cloud_init,
        byol=req.byol, image_format=req.image_format, api_url=req.api_url)
    if creds is None:
        return ImportResult(request=imports.describe(api_req))
    r = imports.send(api_req, creds.tokens(), "SoftLayer createFromIcos")
    if req.wait:
        done = imports.wait_classic_image(
            r["id"], creds.tokens(), api_url=req.api_url,
            timeout_s=req.timeout_s or CLASSIC_TIMEOUT_S,
            interval_s=float(os.environ.get("LUKSPACK_POLL_S", "15")), on_status=on_status)
        r = {**r, "status": (done.get("status") or {}).get("keyName"), "waited": True}
    return ImportResult(image=r)


def _credentials(req: ImportRequest) -> Any:
    from lukspack.cloud.credentials import load_credentials

    return load_credentials(req.credentials_file, iam_url=req.iam_url)


def _vpc(req: ImportRequest, api_req: Any, on_status: Say | None) -> dict[str, Any]:
    from lukspack.cloud.publish import object_sha256_metadata, vpc_import_and_wait
    from lukspack.cloud.upload import CosOptions

    creds = _credentials(req)
    expected = req.expect_sha256 or (object_sha256_metadata(
        req.file, CosOptions(credentials_file=req.credentials_file, iam_url=req.iam_url))
        if req.wait else None)
    return vpc_import_and_wait(api_req, creds.tokens(), wait=req.wait, expected_sha256=expected,
                               api_url=req.api_url, on_status=on_status)
