"""Credentials, only from the environment or a credentials file (never from arguments).

For object storage, in this order: HMAC keys `COS_HMAC_ACCESS_KEY_ID` / `COS_HMAC_SECRET_ACCESS_KEY`,
then `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, then the credentials file's HMAC keys; else an
IAM API key (`IBMCLOUD_API_KEY`, or the file's `apikey`), whose bearer token is refreshed during
long transfers. Key Protect, VPC and SoftLayer always use the IAM API key.

The credentials file is `--credentials-file`, else `COS_CREDENTIALS_FILE`, else
`~/.bluemix/cos_credentials` (where IBM's COS SDKs look): the JSON of a COS service credential
(https://cloud.ibm.com/docs/cloud-object-storage?topic=cloud-object-storage-uhc-hmac-credentials-main:
`{"apikey": ..., "cos_hmac_keys": {"access_key_id": ..., "secret_access_key": ...}}`), or an
AWS-style INI file with `aws_access_key_id` / `aws_secret_access_key` in `[default]`.
"""

from __future__ import annotations

import configparser
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from lukspack.cloud.errors import CredentialsError
from lukspack.cloud.iam import IAM_URL, TokenSource, token_url

DEFAULT_CREDENTIALS_FILE = "~/.bluemix/cos_credentials"
HMAC_ENV = (("COS_HMAC_ACCESS_KEY_ID", "COS_HMAC_SECRET_ACCESS_KEY"),
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
API_KEY_ENV = "IBMCLOUD_API_KEY"
MAX_FILE_BYTES = 64 * 1024


class NoCredentials(CredentialsError):
    """Neither HMAC keys nor an API key anywhere (the other CredentialsErrors: one is broken)."""


@dataclass(frozen=True)
class HmacKeys:
    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass
class Credentials:
    hmac: HmacKeys | None
    api_key: str | None = field(repr=False)
    source: str  # where they came from, for messages: "environment", a file name
    iam_url: str = IAM_URL
    _tokens: TokenSource | None = field(default=None, repr=False)

    def tokens(self) -> TokenSource:
        """The IAM token source of the API key; CredentialsError when there is no API key."""
        if self.api_key is None:
            raise CredentialsError(f"no IBM Cloud API key: set {API_KEY_ENV} (or 'apikey' in the "
                                   "credentials file); Key Protect, VPC and classic need IAM")
        if self._tokens is None:
            self._tokens = TokenSource(self.api_key, self.iam_url)
        return self._tokens


def _read_file(path: str) -> tuple[HmacKeys | None, str | None]:
    from lukspack.keys import check_permissions

    check_permissions(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise CredentialsError(f"{path}: cannot read credentials file: {e.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise CredentialsError(f"{path}: credentials file is larger than {MAX_FILE_BYTES} bytes")
    text = raw.decode("utf-8", "replace")
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            raise CredentialsError(f"{path}: credentials file is not valid JSON") from None
        if not isinstance(doc, dict):
            raise CredentialsError(f"{path}: credentials file must hold a JSON object")
        hmac = None
        keys = doc.get("cos_hmac_keys")
        if keys is not None:
            if not (isinstance(keys, dict) and isinstance(keys.get("access_key_id"), str)
                    and isinstance(keys.get("secret_access_key"), str)):
                raise CredentialsError(f"{path}: cos_hmac_keys needs access_key_id and "
                                       "secret_access_key strings")
            hmac = HmacKeys(keys["access_key_id"], keys["secret_access_key"])
        api_key = doc.get("apikey")
        if api_key is not None and not isinstance(api_key, str):
            raise CredentialsError(f"{path}: apikey must be a string")
        return hmac, api_key or None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:
        raise CredentialsError(f"{path}: credentials file is neither JSON nor INI") from None
    sect = parser["default"] if parser.has_section("default") else None
    if sect is None or "aws_access_key_id" not in sect or "aws_secret_access_key" not in sect:
        raise CredentialsError(f"{path}: [default] needs aws_access_key_id and "
                               "aws_secret_access_key")
    return HmacKeys(sect["aws_access_key_id"], sect["aws_secret_access_key"]), None


def load_credentials(credentials_file: str | None = None, env: Mapping[str, str] | None = None,
                     iam_url: str | None = None) -> Credentials:
    """The credentials for object storage and IAM; CredentialsError when there are none."""
    env = os.environ if env is None else env
    iam = token_url(iam_url)  # the base (as IBM's SDKs take it) or the full token URL
    path = credentials_file or env.get("COS_CREDENTIALS_FILE") or ""
    explicit = bool(path)
    path = os.path.expanduser(path or DEFAULT_CREDENTIALS_FILE)
    file_hmac, file_key = (None, None)
    if explicit or os.path.exists(path):
        file_hmac, file_key = _read_file(path)
    api_key = env.get(API_KEY_ENV) or file_key
    for id_name, secret_name in HMAC_ENV:
        key_id, secret = env.get(id_name), env.get(secret_name)
        if key_id and secret:
            return Credentials(HmacKeys(key_id, secret), api_key, f"{id_name}/{secret_name}", iam)
        if key_id or secret:
            raise CredentialsError(f"{id_name} and {secret_name} must be set together")
    if file_hmac is not None:
        return Credentials(file_hmac, api_key, path, iam)
    if api_key:
        return Credentials(None, api_key, API_KEY_ENV if env.get(API_KEY_ENV) else path, iam)
    raise NoCredentials("no credentials: set COS_HMAC_ACCESS_KEY_ID and "
                           f"COS_HMAC_SECRET_ACCESS_KEY, or {API_KEY_ENV}, or write a "
                           f"credentials file ({DEFAULT_CREDENTIALS_FILE} or --credentials-file)")
