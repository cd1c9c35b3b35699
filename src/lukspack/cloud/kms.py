"""Key Protect (and Hyper Protect Crypto Services) key wrapping for image import.

API (https://cloud.ibm.com/docs/key-protect?topic=key-protect-wrap-keys and
...?topic=key-protect-unwrap-keys): `POST {KMS}/api/v2/keys/{ROOT_KEY_ID}/actions/wrap` (or
`/actions/unwrap`) with headers `authorization: Bearer TOKEN`, `bluemix-instance: INSTANCE_ID`,
`content-type: application/vnd.ibm.kms.key_action+json`, body `{"plaintext": BASE64}` (unwrap:
`{"ciphertext": WDEK}`); no `aad`: the image services unwrap without one. Endpoints
(https://cloud.ibm.com/docs/key-protect?topic=key-protect-regions): `https://REGION.kms.cloud.ibm.com`,
`https://private.REGION.kms.cloud.ibm.com`; `--kms-url` for Key Protect Dedicated and Hyper
Protect Crypto Services (same API at its own URL). Errors carry reason codes
(https://cloud.ibm.com/docs/key-protect?topic=key-protect-error-messages): KEY_ROOT_REQ_ERR when
the key is a standard key, not a root key.

What is wrapped must be exactly what the hypervisor needs back, and differs by target:
- vpc (qcow2+LUKS): the base64 of the passphrase bytes. IBM's example
  (https://cloud.ibm.com/docs/vpc?topic=vpc-create-encrypted-custom-image): passphrase `abc123`,
  `echo -n abc123 | base64` gives `YWJjMTIz`, which is wrapped; a trailing newline in the
  passphrase would be wrapped too and the image would never unlock, so it is refused.
- classic (vhd-util encrypted VHD): the base64 DEK, whose decoded 32 or 64 bytes are the XTS key
  (https://cloud.ibm.com/docs/image-templates?topic=image-templates-using-end-to-end-encryption);
  a key file holding the raw 32 or 64 bytes (vhd-util's form) is wrapped as their base64.
- luks-raw (IBM's 2018 LUKS RAW procedure, same page): the DEK text exactly as in the key file,
  which is the LUKS passphrase.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from lukspack.cloud.errors import CloudError, CredentialsError, RemoteError
from lukspack.cloud.iam import HTTP_TIMEOUT_S, TokenSource
from lukspack.keys import key_for_target

TARGETS = ("vpc", "classic", "luks-raw")
KEY_ACTION_TYPE = "application/vnd.ibm.kms.key_action+json"
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,89}$")
_INSTANCE_ID = re.compile(r"^[0-9a-fA-F-]{8,64}$")
# crn:v1:bluemix:public:kms:us-south:a/ACCOUNT:INSTANCE:key:KEY_ID
_KEY_CRN = re.compile(r"^crn:v1:[a-z]+:[a-z]+:(kms|hs-crypto):([a-z0-9-]+):a/[0-9a-f]+:"
                      r"([0-9a-fA-F-]+):key:([A-Za-z0-9_-]+)$")


@dataclass(frozen=True)
class KeyCrn:
    crn: str
    service: str  # kms (Key Protect) or hs-crypto (Hyper Protect Crypto Services)
    region: str
    instance_id: str
    key_id: str


def parse_key_crn(crn: str) -> KeyCrn:
    m = _KEY_CRN.match(crn)
    if not m:
        raise CloudError(f"root key CRN {crn!r} is not crn:v1:bluemix:public:kms:REGION:"
                         "a/ACCOUNT:INSTANCE_ID:key:KEY_ID")
    return KeyCrn(crn, m.group(1), m.group(2), m.group(3), m.group(4))


def kms_url(region: str, private: bool = False, override: str | None = None) -> str:
    if override:
        if not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", override):
            raise CloudError(f"--kms-url {override!r} must be an http(s) URL")
        return override.rstrip("/")
    if not re.match(r"^[a-z]{2}-[a-z]+$", region):
        raise CloudError(f"Key Protect region {region!r} must be like us-south or eu-de")
    return f"https://{'private.' if private else ''}{region}.kms.cloud.ibm.com"


def check_ids(root_key_id: str, instance_id: str) -> None:
    if not _KEY_ID.match(root_key_id):
        raise CloudError(f"root key ID {root_key_id!r} must be a key ID or alias")
    if not _INSTANCE_ID.match(instance_id):
        raise CloudError(f"instance ID {instance_id!r} must be the instance's GUID")


def wrap_plaintext(key: bytes | bytearray, target: str, name: str = "key file") -> str:
    """The `plaintext` to wrap for the target: what keys.key_for_target says the key file means
    for it (see the module's docstring); a KeyFileError naming the file when it cannot serve."""
    if target not in TARGETS:
        raise CloudError(f"target {target!r} must be one of {', '.join(TARGETS)}")
    return key_for_target(target, key, name).wrap_plaintext


class KeyProtect:
    """Wrap and unwrap with one root key service instance."""

    def __init__(self, url: str, instance_id: str, tokens: TokenSource) -> None:
        self.url, self.instance_id, self._tokens = url.rstrip("/"), instance_id, tokens

    def _action(self, key_id: str, action: str, body: dict[str, str]) -> dict[str, Any]:
        import requests

        check_ids(key_id, self.instance_id)
        url = f"{self.url}/api/v2/keys/{key_id}/actions/{action}"
        headers = {"authorization": f"Bearer {self._tokens.token()}",
                   "bluemix-instance": self.instance_id,
                   "content-type": KEY_ACTION_TYPE, "accept": KEY_ACTION_TYPE}
        try:
            r = requests.post(url, json=body, headers=headers, timeout=HTTP_TIMEOUT_S)
        except requests.RequestException as e:
            raise RemoteError(f"Key Protect {self.url}: {action} failed: {type(e).__name__}") \
                from None
        if r.status_code == 200:
            try:
                out = r.json()
            except ValueError:
                out = None
            if isinstance(out, dict):
                return out
            raise RemoteError(f"Key Protect {self.url}: {action}: answer is not a JSON object")
        raise self._error(r, key_id, action)

    def _error(self, r: Any, key_id: str, action: str) -> CloudError:
        codes, msgs = [], []
        try:
            for res in r.json().get("resources", []):
                for reason in res.get("reasons", []):
                    codes.append(str(reason.get("code")))
                    msgs.append(str(reason.get("message")))
        except (ValueError, AttributeError, TypeError):
            pass
        where = f"Key Protect {self.url}: {action} with key {key_id}"
        detail = f" ({'; '.join(f'{c}: {m}' for c, m in zip(codes, msgs, strict=True))})" \
            if codes else ""
        if "KEY_ROOT_REQ_ERR" in codes:
            return CloudError(f"{where}: {key_id} is not a root key; only root keys wrap "
                              "(create or import a root key, not a standard key)")
        if r.status_code in (401, 403):
            return CredentialsError(f"{where}: not authorized on instance {self.instance_id} "
                                    f"(HTTP {r.status_code}): is the instance ID right, and does "
                                    f"the API key have a Key Protect role on it?{detail}")
        if r.status_code == 404:
            return CloudError(f"{where}: no such key in instance {self.instance_id} (wrong key ID "
                              f"or wrong instance){detail}")
        if r.status_code == 422 and action == "unwrap":
            return CloudError(f"{where}: the WDEK was not wrapped by this root key, or is "
                              f"damaged{detail}")
        if r.status_code >= 500 or r.status_code == 429:
            return RemoteError(f"{where}: HTTP {r.status_code}{detail}")
        return CloudError(f"{where}: HTTP {r.status_code}{detail}")

    def wrap(self, root_key_id: str, plaintext_b64: str) -> str:
        out = self._action(root_key_id, "wrap", {"plaintext": plaintext_b64})
        wdek = out.get("ciphertext")
        if not isinstance(wdek, str) or not wdek:
            raise RemoteError(f"Key Protect {self.url}: wrap answer without ciphertext")
        return wdek

    def unwrap(self, root_key_id: str, wdek: str) -> str:
        out = self._action(root_key_id, "unwrap", {"ciphertext": wdek})
        plain = out.get("plaintext")
        if not isinstance(plain, str):
            raise RemoteError(f"Key Protect {self.url}: unwrap answer without plaintext")
        return plain


def wrap_key(kp: KeyProtect, root_key_id: str, key: bytes | bytearray, target: str, *,
             check: bool = True, name: str = "key file") -> dict[str, Any]:
    """Wrap what the target needs; unless check is False, unwrap it once and compare. The
    result's warnings are key_for_target's (a VPC passphrase that is not a DEK)."""
    if target not in TARGETS:
        raise CloudError(f"target {target!r} must be one of {', '.join(TARGETS)}")
    meaning = key_for_target(target, key, name)
    plaintext = meaning.wrap_plaintext
    wdek = kp.wrap(root_key_id, plaintext)
    checked = False
    if check:
        back = kp.unwrap(root_key_id, wdek)
        if back != plaintext:
            raise CloudError(f"Key Protect {kp.url}: the WDEK unwraps to something else than was "
                             "wrapped: do not import with it")
        checked = True
    out = {"wdek": wdek, "target": target, "root_key_id": root_key_id,
           "instance_id": kp.instance_id, "checked": checked}
    if meaning.warnings:
        out["warnings"] = meaning.warnings
    return out


def unwrap_matches(kp: KeyProtect, root_key_id: str, wdek: str, key: bytes | bytearray | None,
                   target: str) -> dict[str, Any]:
    """Unwrap a WDEK; with a key file, say whether it holds what the target needs."""
    plain = kp.unwrap(root_key_id, wdek)
    try:
        raw_len = len(base64.b64decode(plain, validate=True))
    except (binascii.Error, ValueError):
        raw_len = -1
    out: dict[str, Any] = {"root_key_id": root_key_id, "unwrapped_bytes": raw_len}
    if key is not None:
        out["matches_key_file"] = plain == wrap_plaintext(key, target)
    return out
