"""Custom-image import: VPC (`POST /v1/images`) and classic (SoftLayer `createFromIcos`).

VPC (https://cloud.ibm.com/apidocs/vpc/latest#create-image and
https://cloud.ibm.com/docs/vpc?topic=vpc-create-encrypted-custom-image): `POST
https://REGION.iaas.cloud.ibm.com/v1/images?version=DATE&generation=2`, body `name`, `file.href`
(the cos:// location), `operating_system.name`, `encryption_key.crn` (the root key),
`encrypted_data_key` (the WDEK), optional `resource_group.id`; then `GET /v1/images/ID` until
`status` is `available` or `failed` (`status_reasons`); the image reports
`file.checksums.sha256`. Names: lowercase letters, digits and hyphens, starting with a letter,
at most 63; the `ibm-` prefix is reserved.

Classic (https://cloud.ibm.com/docs/image-templates?topic=image-templates-import-encrypted-image-api
and https://sldn.softlayer.com/reference/services/SoftLayer_Virtual_Guest_Block_Device_Template_Group/createFromIcos):
`POST https://api.softlayer.com/rest/v3.1/SoftLayer_Virtual_Guest_Block_Device_Template_Group/
createFromIcos.json` with `{"parameters": [{name, note, operatingSystemReferenceCode, uri,
ibmApiKey, crkCrn, wrappedDek, cloudInit, byol, isEncrypted}]}`, the field names the SoftLayer
Python SDK sends (SoftLayer/managers/image.py, import_image_from_icos), IAM bearer auth. The
bucket must be regional (like us-south) and a VHD's object named like NAME.vhd-0.vhd.
Waiting (`import classic --wait`): `GET .../SoftLayer_Virtual_Guest_Block_Device_Template_Group/
ID/getObject.json?objectMask=mask[...]` (https://sldn.softlayer.com/reference/datatypes/
SoftLayer_Virtual_Guest_Block_Device_Template_Group): `transactionId` "will only be set when
there is a transaction being performed on the block device template group", `transaction`
(SoftLayer_Provisioning_Version1_Transaction, its `transactionStatus.name`) says which, and
`status` (SoftLayer_Virtual_Guest_Block_Device_Template_Group_Status) must be Active (keyName
ACTIVE) for a provision; the import is done when no transaction is left and the status is Active.

--dry-run prints `describe(request)`: the exact request, secrets (token, API key) redacted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lukspack.cloud.errors import CloudError, CredentialsError, RemoteError
from lukspack.cloud.iam import HTTP_TIMEOUT_S, TokenSource
from lukspack.cloud.kms import parse_key_crn
from lukspack.cloud.location import parse_cos

VPC_API_VERSION = "2025-06-10"
SOFTLAYER_URL = "https://api.softlayer.com/rest/v3.1"
TEMPLATE_GROUP = "/SoftLayer_Virtual_Guest_Block_Device_Template_Group"
CREATE_FROM_ICOS = TEMPLATE_GROUP + "/createFromIcos.json"
CLASSIC_MASK = ("mask[id,name,globalIdentifier,status[keyName,name],transactionId,"
                "transaction[transactionStatus[name,friendlyName]]]")
REDACTED = "<redacted>"
_VPC_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_REGIONAL = re.compile(r"^[a-z]{2}-[a-z]+$")
_CLASSIC_VHD = re.compile(r"^(.+/)?[^/]+\.vhd-0\.vhd$")


@dataclass
class ApiRequest:
    method: str
    url: str
    params: dict[str, str]
    body: dict[str, Any]
    secret_fields: tuple[str, ...] = ()  # body fields (at any depth) that are secrets
    headers: dict[str, str] = field(default_factory=dict)


def _redact(value: Any, secret_fields: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if k in secret_fields and v else _redact(v, secret_fields)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, secret_fields) for v in value]
    return value


def describe(req: ApiRequest) -> dict[str, Any]:
    """The request as JSON, exactly as it would be sent, with its secrets redacted."""
    return {"method": req.method, "url": req.url, "params": req.params,
            "headers": {"authorization": f"Bearer {REDACTED}", "accept": "application/json",
                        "content-type": "application/json", **req.headers},
            "json": _redact(req.body, req.secret_fields)}


def send(req: ApiRequest, tokens: TokenSource, what: str) -> dict[str, Any]:
    import requests

    headers = {"authorization": f"Bearer {tokens.token()}", "accept": "application/json",
               **req.headers}
    try:
        r = requests.request(req.method, req.url, params=req.params or None,
                             json=req.body if req.method != "GET" else None, headers=headers,
                             timeout=HTTP_TIMEOUT_S)
    except requests.RequestException as e:
        raise RemoteError(f"{what}: {type(e).__name__}") from None
    try:
        out = r.json()
    except ValueError:
        out = None
    if r.status_code in (200, 201, 202) and isinstance(out, dict):
        return out
    detail = _api_errors(out)
    if r.status_code in (401, 403):
        raise CredentialsError(f"{what}: not authorized (HTTP {r.status_code}){detail}")
    cls = RemoteError if r.status_code >= 500 or r.status_code == 429 else CloudError
    raise cls(f"{what}: HTTP {r.status_code}{detail}")


def _api_errors(out: Any) -> str:
    if not isinstance(out, dict):
        return ""
    if isinstance(out.get("errors"), list):  # VPC
        parts = [f"{e.get('code')}: {e.get('message')}" for e in out["errors"] if isinstance(e, dict)]
        return f" ({'; '.join(parts)})" if parts else ""
    if "error" in out:  # SoftLayer
        return f" ({out.get('code', '')}: {out['error']})"
    return ""


# -- VPC -------------------------------------------------------------------------------------

def check_vpc_name(name: str) -> None:
    if name.startswith("ibm-"):
        raise CloudError(f"image name {name!r}: the ibm- prefix is reserved for IBM's images")
    if not _VPC_NAME.match(name) or "--" in name:
        raise CloudError(f"image name {name!r} must be 1 to 63 lowercase letters, digits and "
                         "single hyphens, starting with a letter and not ending with a hyphen")


def vpc_url(region: str, override: str | None = None) -> str:
    return (override or f"https://{region}.iaas.cloud.ibm.com").rstrip("/")


def vpc_image_request(*, name: str, file: str, os_name: str, root_key_crn: str, wdek: str,
                      resource_group: str | None = None, api_url: str | None = None
                      ) -> ApiRequest:
    check_vpc_name(name)
    loc = parse_cos(file)
    parse_key_crn(root_key_crn)
    if not re.match(r"^[a-z0-9][a-z0-9-]*$", os_name):
        raise CloudError(f"operating system name {os_name!r} must be like debian-12-amd64 "
                         "(`ibmcloud is images` lists them)")
    if not wdek.strip():
        raise CloudError("the WDEK file is empty")
    body: dict[str, Any] = {"name": name, "file": {"href": str(loc)},
                            "operating_system": {"name": os_name},
                            "encryption_key": {"crn": root_key_crn},
                            "encrypted_data_key": wdek.strip()}
    if resource_group:
        body["resource_group"] = {"id": resource_group}
    return ApiRequest("POST", f"{vpc_url(loc.region, api_url)}/v1/images",
                      {"version": VPC_API_VERSION, "generation": "2"}, body)


def vpc_image_get(region: str, image_id: str, api_url: str | None = None) -> ApiRequest:
    if not re.match(r"^[A-Za-z0-9_-]+$", image_id):
        raise CloudError(f"image ID {image_id!r} is not an ID")
    return ApiRequest("GET", f"{vpc_url(region, api_url)}/v1/images/{image_id}",
                      {"version": VPC_API_VERSION, "generation": "2"}, {})


def wait_vpc_image(region: str, image_id: str, tokens: TokenSource, *, api_url: str | None = None,
                   timeout_s: float = 4 * 3600, interval_s: float = 15.0,
                   on_status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Poll until the image is available (returned) or failed (CloudError with its reasons)."""
    req = vpc_image_get(region, image_id, api_url)
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        image = send(req, tokens, f"VPC image {image_id}")
        status = str(image.get("status"))
        if status != last and on_status is not None:
            on_status(status)
        last = status
        if status == "available":
            return image
        if status == "failed":
            reasons = "; ".join(f"{r.get('code')}: {r.get('message')}"
                                for r in image.get("status_reasons") or [] if isinstance(r, dict))
            raise CloudError(f"VPC image {image_id} failed to import"
                             + (f": {reasons}" if reasons else ""))
        if status not in ("pending", ""):
            raise CloudError(f"VPC image {image_id} is {status}, not pending or available")
        if time.monotonic() > deadline:
            raise RemoteError(f"VPC image {image_id} still {status} after {timeout_s:.0f} s")
        time.sleep(interval_s)


def image_sha256(image: dict[str, Any]) -> str | None:
    sha = ((image.get("file") or {}).get("checksums") or {}).get("sha256")
    return sha if isinstance(sha, str) else None


def compare_checksum(image: dict[str, Any], expected: str | None) -> bool | None:
    """True when the image's file.checksums.sha256 is expected, None when either is unknown;
    CloudError when they differ."""
    got = image_sha256(image)
    if got is None or expected is None:
        return None
    if got.lower() != expected.lower():
        raise CloudError(f"VPC image {image.get('id')}: file.checksums.sha256 is {got}, but the "
                         f"object lukspack uploaded has SHA-256 {expected}")
    return True


# -- classic ---------------------------------------------------------------------------------

def classic_image_request(*, name: str, uri: str, os_code: str, root_key_crn: str, wdek: str,
                          api_key: str, note: str = "", cloud_init: bool = True,
                          byol: bool = False, image_format: str = "vhd",
                          api_url: str | None = None) -> ApiRequest:
    if not name.strip() or len(name) > 100:
        raise CloudError(f"image name {name!r} must be 1 to 100 characters")
    loc = parse_cos(uri)
    if not _REGIONAL.match(loc.region):
        raise CloudError(f"{uri}: classic imports only from regional buckets (like us-south), "
                         f"not {loc.region!r} (cross-region or single-site)")
    if image_format == "vhd" and not _CLASSIC_VHD.match(loc.key):
        raise CloudError(f"{uri}: classic wants a VHD object named like NAME.vhd-0.vhd, not "
                         f"{loc.key!r}")
    parse_key_crn(root_key_crn)
    if not re.match(r"^[A-Z0-9_]+$", os_code):
        raise CloudError(f"operating system reference code {os_code!r} must be like "
                         "UBUNTU_22_64 (`ibmcloud sl image import` lists them)")
    if not wdek.strip():
        raise CloudError("the WDEK file is empty")
    params = {"name": name, "note": note, "operatingSystemReferenceCode": os_code,
              "uri": str(loc), "ibmApiKey": api_key, "crkCrn": root_key_crn,
              "wrappedDek": wdek.strip(), "cloudInit": cloud_init, "byol": byol,
              "isEncrypted": True}
    base = (api_url or SOFTLAYER_URL).rstrip("/")
    return ApiRequest("POST", base + CREATE_FROM_ICOS, {}, {"parameters": [params]},
                      secret_fields=("ibmApiKey",))


def classic_image_get(image_id: int | str, api_url: str | None = None) -> ApiRequest:
    base = (api_url or SOFTLAYER_URL).rstrip("/")
    return ApiRequest("GET", f"{base}{TEMPLATE_GROUP}/{int(image_id)}/getObject.json",
                      {"objectMask": CLASSIC_MASK}, {})


def classic_state(image: dict[str, Any]) -> tuple[str, bool]:
    """(what to show, done) for a template group: done when no transaction is left and the
    status is Active."""
    status = image.get("status") or {}
    key = str(status.get("keyName") or status.get("name") or "").upper()
    tx = image.get("transaction") or {}
    tx_name = str((tx.get("transactionStatus") or {}).get("name") or "")
    busy = bool(image.get("transactionId")) or bool(tx)
    if busy:
        return (f"transaction {tx_name or image.get('transactionId')}", False)
    return (key or "no status", key == "ACTIVE")


def wait_classic_image(image_id: int | str, tokens: TokenSource, *, api_url: str | None = None,
                       timeout_s: float = 4 * 3600, interval_s: float = 15.0,
                       on_status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Poll the image template until its import is done (returned); RemoteError at timeout,
    CloudError when it is gone (SoftLayer removes a template whose import failed) or has a
    status other than Active with no transaction running."""
    req = classic_image_get(image_id, api_url)
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        image = send(req, tokens, f"SoftLayer image template {image_id}")
        shown, done = classic_state(image)
        if shown != last and on_status is not None:
            on_status(shown)
        last = shown
        if done:
            return image
        if not shown.startswith("transaction") and shown != "no status":
            raise CloudError(f"SoftLayer image template {image_id} is {shown} with no "
                             "transaction running, not ACTIVE")
        if time.monotonic() > deadline:
            raise RemoteError(f"SoftLayer image template {image_id} still {shown} after "
                              f"{timeout_s:.0f} s (--timeout)")
        time.sleep(interval_s)
