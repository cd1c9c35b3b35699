"""Object locations as IBM writes them, `cos://REGION/BUCKET/OBJECT`, and their S3 endpoints.

Endpoints follow https://cloud.ibm.com/docs/cloud-object-storage?topic=cloud-object-storage-endpoints:
`https://s3.REGION.cloud-object-storage.appdomain.cloud`, `s3.private.REGION...` and
`s3.direct.REGION...`. `--endpoint-url` or the COS_ENDPOINT variable override them (a local
S3 server, a dedicated endpoint).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from lukspack.cloud.errors import CloudError

SCHEME = "cos://"
ENDPOINT_TYPES = ("public", "private", "direct")
_ENDPOINT_HOST = {
    "public": "s3.{region}.cloud-object-storage.appdomain.cloud",
    "private": "s3.private.{region}.cloud-object-storage.appdomain.cloud",
    "direct": "s3.direct.{region}.cloud-object-storage.appdomain.cloud",
}
# regions (us-south, eu-de), cross-region (us, eu, ap) and single data centres (ams03)
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)?[0-9]{0,2}$")
# https://cloud.ibm.com/docs/cloud-object-storage?topic=cloud-object-storage-compatibility-api-bucket-operations
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class CosLocation:
    region: str
    bucket: str
    key: str  # "" when the location names only the bucket

    def __str__(self) -> str:
        return f"{SCHEME}{self.region}/{self.bucket}" + (f"/{self.key}" if self.key else "")

    def with_key(self, key: str) -> CosLocation:
        return CosLocation(self.region, self.bucket, key)


def is_cos(location: str) -> bool:
    return location.startswith(SCHEME)


def parse_cos(location: str, *, need_key: bool = True) -> CosLocation:
    """Parse `cos://REGION/BUCKET/OBJECT` (OBJECT may hold slashes); CloudError names the part."""
    if not is_cos(location):
        raise CloudError(f"{location}: not an object storage location (cos://REGION/BUCKET/OBJECT)")
    rest = location[len(SCHEME):]
    region, _, rest = rest.partition("/")
    bucket, _, key = rest.partition("/")
    if not _REGION.match(region):
        raise CloudError(f"{location}: region {region!r} is not an IBM Cloud region "
                         "(like us-south, eu-de, jp-tok)")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise CloudError(f"{location}: bucket {bucket!r} is not a valid bucket name (3 to 63 "
                         "lowercase letters, digits, dots and hyphens)")
    if need_key and not key:
        raise CloudError(f"{location}: no object name after the bucket")
    if key and (key.endswith("/") or len(key.encode()) > 1024):
        raise CloudError(f"{location}: object name {key!r} must not end in '/' and must be at "
                         "most 1024 bytes")
    return CosLocation(region, bucket, key)


def endpoint_url(region: str, endpoint_type: str = "public", override: str | None = None,
                 env: Mapping[str, str] | None = None) -> str:
    """The S3 endpoint: --endpoint-url, else COS_ENDPOINT, else IBM's for the region and type."""
    env = os.environ if env is None else env
    url = override or env.get("COS_ENDPOINT") or ""
    if url:
        if not re.match(r"^https?://[^/\s]+/?$", url):
            raise CloudError(f"endpoint URL {url!r} must be http(s)://HOST[:PORT]")
        return url.rstrip("/")
    if endpoint_type not in ENDPOINT_TYPES:
        raise CloudError(f"endpoint type {endpoint_type!r} must be one of "
                         f"{', '.join(ENDPOINT_TYPES)}")
    return "https://" + _ENDPOINT_HOST[endpoint_type].format(region=region)
