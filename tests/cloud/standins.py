"""Local stand-ins for the IBM Cloud services the tests cannot reach: IAM, Key Protect, VPC and
SoftLayer, each an HTTP server on 127.0.0.1 that implements the documented endpoint and REFUSES
any request that departs from the documentation (path, method, query, headers, body fields and
types, extra fields). Each check names the page it follows. Key Protect really wraps (AES-GCM
under a key of its own) and unwraps; VPC and SoftLayer read the object from the real S3 server
and report its real SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

IAM_DOC = "https://cloud.ibm.com/docs/account?topic=account-iamtoken_from_apikey"
KP_WRAP_DOC = "https://cloud.ibm.com/docs/key-protect?topic=key-protect-wrap-keys"
KP_UNWRAP_DOC = "https://cloud.ibm.com/docs/key-protect?topic=key-protect-unwrap-keys"
KP_ERR_DOC = "https://cloud.ibm.com/docs/key-protect?topic=key-protect-error-messages"
VPC_DOC = "https://cloud.ibm.com/apidocs/vpc/latest#create-image"
SL_DOC = ("https://sldn.softlayer.com/reference/services/"
          "SoftLayer_Virtual_Guest_Block_Device_Template_Group/createFromIcos")
# the template group's properties (transactionId: "will only be set when there is a transaction
# being performed on the block device template group"; transaction; status) and its status type
# ("For a provision, the image template will need to have a status of 'Active'")
SL_GROUP_DOC = "https://sldn.softlayer.com/reference/datatypes/SoftLayer_Virtual_Guest_Block_Device_Template_Group"
SL_STATUS_DOC = ("https://sldn.softlayer.com/reference/datatypes/"
                 "SoftLayer_Virtual_Guest_Block_Device_Template_Group_Status")
SL_GET_DOC = ("https://sldn.softlayer.com/reference/services/"
              "SoftLayer_Virtual_Guest_Block_Device_Template_Group/getObject")
KEY_ACTION = "application/vnd.ibm.kms.key_action+json"


class Refused(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body)
        self.status, self.body = status, body


class StandIn:
    """One HTTP service; subclasses define handle(method, path, query, headers, body)."""

    name = "service"

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []  # what was received, for the tests to inspect
        self.refusals: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                u = urlsplit(self.path)
                query = parse_qs(u.query, keep_blank_values=True)
                headers = {k.lower(): v for k, v in self.headers.items()}
                stand_in.requests.append({"method": self.command, "path": u.path,
                                          "query": query, "headers": headers, "body": body})
                try:
                    status, out = stand_in.handle(self.command, u.path, query, headers, body)
                except Refused as r:
                    stand_in.refusals.append(json.dumps(r.body))
                    status, out = r.status, r.body
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError


def _json_object(body: bytes, headers: dict[str, str], content_type: str, doc: str,
                 error: Any) -> dict[str, Any]:
    if headers.get("content-type", "").split(";")[0].strip() != content_type:
        raise error(415, f"content-type must be {content_type} ({doc})")
    try:
        out = json.loads(body)
    except ValueError:
        raise error(400, f"body is not JSON ({doc})") from None
    if not isinstance(out, dict):
        raise error(400, f"body must be a JSON object ({doc})")
    return out


# -- IAM ---------------------------------------------------------------------------------------

class IamStandIn(StandIn):
    """POST /identity/token, form grant_type=urn:ibm:params:oauth:grant-type:apikey&apikey=KEY
    (IAM_DOC); tokens valid `ttl` seconds."""

    name = "IAM"

    def __init__(self, api_keys: set[str], ttl: int = 3600) -> None:
        self.api_keys, self.ttl = api_keys, ttl
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (api key, expiry)
        super().__init__()

    def _err(self, status: int, msg: str) -> Refused:
        return Refused(status, {"errorCode": "BXNIM0109E", "errorMessage": msg})

    def handle(self, method, path, query, headers, body):
        if (method, path) != ("POST", "/identity/token") or query:
            raise self._err(404, f"only POST /identity/token ({IAM_DOC})")
        if headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
            raise self._err(400, f"form content type required ({IAM_DOC})")
        form = parse_qs(body.decode(), keep_blank_values=True)
        if set(form) != {"grant_type", "apikey"} or any(len(v) != 1 for v in form.values()):
            raise self._err(400, f"exactly grant_type and apikey ({IAM_DOC})")
        if form["grant_type"][0] != "urn:ibm:params:oauth:grant-type:apikey":
            raise self._err(400, f"unsupported grant_type ({IAM_DOC})")
        key = form["apikey"][0]
        if key not in self.api_keys:
            raise Refused(400, {"errorCode": "BXNIM0415E",
                                "errorMessage": "Provided API key could not be found."})
        token = "tok-" + secrets.token_hex(16)
        self.tokens[token] = (key, time.time() + self.ttl)
        return 200, {"access_token": token, "refresh_token": "not-used", "token_type": "Bearer",
                     "expires_in": self.ttl, "expiration": int(time.time()) + self.ttl}

    def bearer_ok(self, headers: dict[str, str]) -> bool:
        m = re.match(r"^Bearer (\S+)$", headers.get("authorization", ""))
        entry = self.tokens.get(m.group(1)) if m else None
        return entry is not None and entry[1] > time.time()


# -- Key Protect ---------------------------------------------------------------------------------

class KeyProtectStandIn(StandIn):
    """POST /api/v2/keys/ID/actions/wrap|unwrap (KP_WRAP_DOC, KP_UNWRAP_DOC), errors as
    KP_ERR_DOC shows them; wraps with AES-256-GCM under a key of its own per root key."""

    name = "Key Protect"

    def __init__(self, iam: IamStandIn, instance_id: str, root_keys: list[str],
                 standard_keys: list[str]) -> None:
        self.iam, self.instance_id = iam, instance_id
        self.root = {k: AESGCM.generate_key(256) for k in root_keys}
        self.standard = set(standard_keys)
        super().__init__()

    @staticmethod
    def _err(status: int, code: str, msg: str) -> Refused:
        return Refused(status, {"metadata": {"collectionType": "application/vnd.ibm.kms.error+json",
                                             "collectionTotal": 1},
                                "resources": [{"errorMsg": msg, "reasons": [
                                    {"code": code, "message": msg, "status": status,
                                     "moreInfo": KP_ERR_DOC}]}]})

    def handle(self, method, path, query, headers, body):
        m = re.match(r"^/api/v2/keys/([^/]+)/actions/(wrap|unwrap)$", path)
        if method != "POST" or not m or query:
            raise self._err(404, "NOT_FOUND_ERR", f"no such endpoint ({KP_WRAP_DOC})")
        key_id, action = m.groups()
        doc = KP_WRAP_DOC if action == "wrap" else KP_UNWRAP_DOC
        if not self.iam.bearer_ok(headers):
            raise self._err(401, "UNAUTHORIZED_ERR", f"authorization: Bearer TOKEN ({doc})")
        if headers.get("bluemix-instance") != self.instance_id:
            raise self._err(401, "UNAUTHORIZED_ERR",
                            f"bluemix-instance is not an instance this token can use ({doc})")

        def bad_body(status: int, msg: str) -> Refused:
            return self._err(status, "BAD_BODY_ERR", msg)

        req = _json_object(body, headers, KEY_ACTION, doc, bad_body)
        field = "plaintext" if action == "wrap" else "ciphertext"
        if set(req) - {field, "aad"}:
            raise bad_body(400, f"unknown fields {sorted(set(req) - {field, 'aad'})} ({doc})")
        if not isinstance(req.get(field), str):
            raise bad_body(400, f"{field} must be a string ({doc})")
        if "aad" in req and not (isinstance(req["aad"], list) and
                                 all(isinstance(a, str) for a in req["aad"])):
            raise bad_body(400, f"aad must be a list of strings ({doc})")
        if key_id in self.standard:
            raise self._err(400, "KEY_ROOT_REQ_ERR",
                            "Requested action can only be completed with a root key")
        if key_id not in self.root:
            raise self._err(404, "KEY_NOT_FOUND_ERR", "Key does not exist")
        aad = "\0".join(req.get("aad", [])).encode()
        aes = AESGCM(self.root[key_id])
        if action == "wrap":
            try:
                base64.b64decode(req["plaintext"], validate=True)
            except (binascii.Error, ValueError):
                raise bad_body(400, f"plaintext must be base64 encoded ({doc})") from None
            nonce = secrets.token_bytes(12)
            ct = nonce + aes.encrypt(nonce, req["plaintext"].encode(), aad)
            return 200, {"ciphertext": base64.b64encode(ct).decode(),
                         "keyVersion": {"id": key_id}}
        try:
            raw = base64.b64decode(req["ciphertext"], validate=True)
            plain = aes.decrypt(raw[:12], raw[12:], aad).decode()
        except Exception:
            raise self._err(422, "UNPROCESSABLE_ENTITY_ERR",
                            "The ciphertext is invalid or was not wrapped by this key") from None
        return 200, {"plaintext": plain, "keyVersion": {"id": key_id}}

    def unwrap_local(self, key_id: str, wdek: str) -> str | None:
        try:
            raw = base64.b64decode(wdek, validate=True)
            return AESGCM(self.root[key_id]).decrypt(raw[:12], raw[12:], b"").decode()
        except Exception:
            return None


def _s3_sha256(s3_client: Any, bucket: str, href: str) -> tuple[str, int] | None:
    m = re.match(r"^cos://([a-z0-9-]+)/([^/]+)/(.+)$", href)
    if not m or m.group(2) != bucket:
        return None
    try:
        body = s3_client.get_object(Bucket=m.group(2), Key=m.group(3))["Body"]
    except Exception:
        return None
    h, n = hashlib.sha256(), 0
    while chunk := body.read(1 << 20):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


# -- VPC -----------------------------------------------------------------------------------------

class VpcStandIn(StandIn):
    """POST /v1/images?version&generation=2 and GET /v1/images/ID (VPC_DOC); the import reads the
    object from the S3 server: pending on the first GET, then available (with the object's real
    file.checksums.sha256) or failed (status_reasons)."""

    name = "VPC"
    FIELDS = {"name", "file", "operating_system", "encryption_key", "encrypted_data_key",
              "resource_group"}

    def __init__(self, iam: IamStandIn, kp: KeyProtectStandIn, s3_client: Any, bucket: str,
                 account: str = "0123456789abcdef") -> None:
        self.iam, self.kp, self.s3, self.bucket, self.account = iam, kp, s3_client, bucket, account
        self.images: dict[str, dict[str, Any]] = {}
        self.polls: dict[str, int] = {}
        super().__init__()

    @staticmethod
    def _err(status: int, code: str, msg: str) -> Refused:
        return Refused(status, {"errors": [{"code": code, "message": msg, "more_info": VPC_DOC}],
                                "trace": uuid.uuid4().hex})

    def _query(self, query: dict[str, list[str]]) -> None:
        if set(query) != {"version", "generation"}:
            raise self._err(400, "bad_request", f"query must be version and generation ({VPC_DOC})")
        v = query["version"][0]
        try:
            ok = bool(re.match(r"^\d{4}-\d{2}-\d{2}$", v)) and \
                date(2019, 1, 1) <= date.fromisoformat(v) <= date.today()
        except ValueError:
            ok = False
        if not ok:
            raise self._err(400, "bad_version", f"version {v!r} must be a date ({VPC_DOC})")
        if query["generation"] != ["2"]:
            raise self._err(400, "bad_request", f"generation must be 2 ({VPC_DOC})")

    def handle(self, method, path, query, headers, body):
        if not self.iam.bearer_ok(headers):
            raise self._err(401, "not_authorized", f"authorization: Bearer TOKEN ({VPC_DOC})")
        self._query(query)
        if method == "POST" and path == "/v1/images":
            return 201, self._create(body, headers)
        m = re.match(r"^/v1/images/([0-9a-z-]+)$", path)
        if method == "GET" and m and m.group(1) in self.images:
            return 200, self._poll(m.group(1))
        raise self._err(404, "not_found", f"{method} {path} ({VPC_DOC})")

    def _create(self, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        req = _json_object(body, headers, "application/json", VPC_DOC,
                           lambda s, m: self._err(s, "bad_request", m))
        if set(req) - self.FIELDS:
            raise self._err(400, "bad_field", f"unknown fields {sorted(set(req) - self.FIELDS)}")
        name = req.get("name")
        if not isinstance(name, str) or not re.match(r"^[a-z]([a-z0-9-]*[a-z0-9])?$", name) or \
                name.startswith("ibm-") or len(name) > 63:
            raise self._err(400, "bad_name", f"name {name!r} ({VPC_DOC})")
        for k, sub in (("file", "href"), ("operating_system", "name"), ("encryption_key", "crn"),
                       ("resource_group", "id")):
            if k in req and (not isinstance(req[k], dict) or set(req[k]) != {sub} or
                             not isinstance(req[k][sub], str)):
                raise self._err(400, "bad_field", f"{k} must be {{{sub!r}: string}} ({VPC_DOC})")
        if "file" not in req or "operating_system" not in req:
            raise self._err(400, "missing_field", f"file and operating_system ({VPC_DOC})")
        if ("encryption_key" in req) != ("encrypted_data_key" in req) or \
                not isinstance(req.get("encrypted_data_key", ""), str):
            raise self._err(400, "bad_field", "encryption_key and encrypted_data_key go together")
        if any(i["name"] == name for i in self.images.values()):
            raise self._err(409, "image_name_duplicate", f"image name {name} exists")
        image_id = "r006-" + str(uuid.uuid4())
        image = {"id": image_id, "name": name, "status": "pending", "status_reasons": [],
                 "crn": f"crn:v1:bluemix:public:is:us-south:a/{self.account}::image:{image_id}",
                 "href": f"{self.url}/v1/images/{image_id}", "file": {"href": req["file"]["href"]},
                 "operating_system": {"name": req["operating_system"]["name"]},
                 "encryption": "user_managed" if "encryption_key" in req else "none",
                 "_req": req}
        if "encryption_key" in req:
            image["encryption_key"] = {"crn": req["encryption_key"]["crn"]}
        self.images[image_id] = image
        return self._public(image)

    def _poll(self, image_id: str) -> dict[str, Any]:
        image = self.images[image_id]
        self.polls[image_id] = self.polls.get(image_id, 0) + 1
        if image["status"] == "pending" and self.polls[image_id] >= 2:
            self._import(image)
        return self._public(image)

    def _import(self, image: dict[str, Any]) -> None:
        req = image["_req"]
        reasons = []
        got = _s3_sha256(self.s3, self.bucket, req["file"]["href"])
        if got is None:
            reasons.append({"code": "image_file_not_found", "message": "cannot read file.href"})
        if "encryption_key" in req:
            key_id = req["encryption_key"]["crn"].rsplit(":", 1)[-1]
            if key_id not in self.kp.root or \
                    self.kp.unwrap_local(key_id, req["encrypted_data_key"]) is None:
                reasons.append({"code": "encrypted_data_key_invalid",
                                "message": "the encrypted data key does not unwrap"})
        if reasons:
            image.update(status="failed", status_reasons=reasons)
            return
        assert got is not None
        image["file"].update(checksums={"sha256": got[0]}, size=max(1, -(-got[1] // 10**9)))
        image["status"] = "available"

    @staticmethod
    def _public(image: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in image.items() if not k.startswith("_")}


# -- SoftLayer -----------------------------------------------------------------------------------

class SoftLayerStandIn(StandIn):
    """POST /rest/v3.1/SoftLayer_Virtual_Guest_Block_Device_Template_Group/createFromIcos.json,
    {"parameters": [config]} with the SDK's field names and types (SL_DOC)."""

    name = "SoftLayer"
    STRINGS = ("name", "note", "operatingSystemReferenceCode", "uri", "ibmApiKey", "crkCrn",
               "wrappedDek")
    BOOLS = ("cloudInit", "byol", "isEncrypted")
    PATH = "/rest/v3.1/SoftLayer_Virtual_Guest_Block_Device_Template_Group/createFromIcos.json"

    GET = re.compile(r"^/rest/v3\.1/SoftLayer_Virtual_Guest_Block_Device_Template_Group/"
                     r"(\d+)/getObject\.json$")
    IMPORT_POLLS = 2  # polls that still see the import transaction

    def __init__(self, iam: IamStandIn, kp: KeyProtectStandIn, s3_client: Any, bucket: str) -> None:
        self.iam, self.kp, self.s3, self.bucket = iam, kp, s3_client, bucket
        self.created: list[dict[str, Any]] = []
        self.polls: dict[int, int] = {}
        self.removed: set[int] = set()  # templates whose import failed: SoftLayer removes them
        self.stuck: set[int] = set()  # templates whose transaction never ends
        super().__init__()

    def _get(self, image_id: int, query: dict[str, list[str]]) -> dict[str, Any]:
        """getObject with an object mask (SL_GET_DOC): the import's transaction for the first
        IMPORT_POLLS polls (transactionId and transaction.transactionStatus, SL_GROUP_DOC), then
        none and status Active (SL_STATUS_DOC)."""
        if set(query) != {"objectMask"} or not re.match(r"^mask\[.*\]$", query["objectMask"][0]):
            raise self._err(400, f"query must be objectMask=mask[...] ({SL_GET_DOC})")
        mask = query["objectMask"][0]
        for want in ("transactionId", "transaction[", "status["):
            if want not in mask:
                raise self._err(400, f"the object mask does not ask for {want.rstrip('[')}")
        image = next((c for c in self.created if c["id"] == image_id), None)
        if image is None or image_id in self.removed:
            raise Refused(404, {"error": f"Unable to find object with id of '{image_id}'.",
                                "code": "SoftLayer_Exception_ObjectNotFound"})
        n = self.polls[image_id] = self.polls.get(image_id, 0) + 1
        out = {k: image[k] for k in ("id", "name", "globalIdentifier")}
        out["status"] = {"keyName": "ACTIVE", "name": "Active"}
        if n <= self.IMPORT_POLLS or image_id in self.stuck:
            out["transactionId"] = 77000000 + image_id % 1000
            out["transaction"] = {"transactionStatus": {"name": "CLOUD_IMAGE_IMPORT",
                                                        "friendlyName": "Importing image"}}
        else:
            out["transactionId"] = None
        return out

    @staticmethod
    def _err(status: int, msg: str) -> Refused:
        return Refused(status, {"error": msg, "code": "SoftLayer_Exception_Public"})

    def handle(self, method, path, query, headers, body):
        m = self.GET.match(path)
        if method == "GET" and m:
            if not self.iam.bearer_ok(headers):
                raise self._err(401, "Invalid bearer token")
            return 200, self._get(int(m.group(1)), query)
        if (method, path) != ("POST", self.PATH) or query:
            raise self._err(404, f"{method} {path} ({SL_DOC})")
        if not self.iam.bearer_ok(headers):
            raise self._err(401, "Invalid bearer token")
        req = _json_object(body, headers, "application/json", SL_DOC, self._err)
        if set(req) != {"parameters"} or not isinstance(req["parameters"], list) or \
                len(req["parameters"]) != 1 or not isinstance(req["parameters"][0], dict):
            raise self._err(400, f'body must be {{"parameters": [config]}} ({SL_DOC})')
        cfg = req["parameters"][0]
        allowed = set(self.STRINGS) | set(self.BOOLS)
        if set(cfg) != allowed:
            raise self._err(400, f"config fields must be {sorted(allowed)}, got {sorted(cfg)}")
        for k in self.STRINGS:
            if not isinstance(cfg[k], str):
                raise self._err(400, f"{k} must be a string")
        for k in self.BOOLS:
            if not isinstance(cfg[k], bool):
                raise self._err(400, f"{k} must be a boolean")
        if cfg["ibmApiKey"] not in self.iam.api_keys:
            raise self._err(400, "ibmApiKey is not a valid API key")
        if _s3_sha256(self.s3, self.bucket, cfg["uri"]) is None:
            raise self._err(400, f"cannot read {cfg['uri']}")
        key_id = cfg["crkCrn"].rsplit(":", 1)[-1]
        if cfg["isEncrypted"] and (key_id not in self.kp.root or
                                   self.kp.unwrap_local(key_id, cfg["wrappedDek"]) is None):
            raise self._err(400, "wrappedDek does not unwrap with crkCrn")
        image = {"id": 4000000 + len(self.created), "globalIdentifier": str(uuid.uuid4()),
                 "name": cfg["name"], "note": cfg["note"]}
        self.created.append({**image, "_cfg": cfg})
        return 200, image
