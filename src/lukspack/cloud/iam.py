"""IBM Cloud IAM access tokens from an API key, refreshed before they expire.

https://cloud.ibm.com/docs/account?topic=account-iamtoken_from_apikey: `POST
https://iam.cloud.ibm.com/identity/token` with the form `grant_type=urn:ibm:params:oauth:grant-type:
apikey&apikey=KEY`, `Accept: application/json`; the answer holds `access_token` and `expires_in`
(3600 s). A long transfer asks for a new token once less than REFRESH_MARGIN_S is left.

`--iam-url` takes what IBM's SDKs take (python-sdk-core's IAMTokenManager: DEFAULT_IAM_URL
`https://iam.cloud.ibm.com`, OPERATION_PATH `/identity/token` appended, a URL already ending in
it used as it is): the base (`https://iam.cloud.ibm.com`, `https://private.iam.cloud.ibm.com`)
or the full token URL.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from lukspack.cloud.errors import CredentialsError, RemoteError

IAM_URL = "https://iam.cloud.ibm.com/identity/token"
OPERATION_PATH = "/identity/token"
GRANT_TYPE = "urn:ibm:params:oauth:grant-type:apikey"
REFRESH_MARGIN_S = 300
HTTP_TIMEOUT_S = 60


def token_url(iam_url: str | None) -> str:
    """The token endpoint for an --iam-url: the base gets /identity/token, as IBM's SDKs add it;
    the full token URL is kept."""
    import re

    if not iam_url:
        return IAM_URL
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", iam_url):
        raise CredentialsError(f"--iam-url {iam_url!r} must be an http(s) URL like "
                               "https://iam.cloud.ibm.com or https://private.iam.cloud.ibm.com")
    url = iam_url.rstrip("/")
    return url if url.endswith(OPERATION_PATH) else url + OPERATION_PATH


def fetch_token(api_key: str, iam_url: str = IAM_URL) -> tuple[str, float]:
    """(access token, seconds it is valid) for the API key; the key is never in a message."""
    import requests

    try:
        r = requests.post(iam_url, data={"grant_type": GRANT_TYPE, "apikey": api_key},
                          headers={"Accept": "application/json"}, timeout=HTTP_TIMEOUT_S)
    except requests.RequestException as e:
        raise RemoteError(f"IAM {iam_url}: cannot get a token: {type(e).__name__}") from None
    if r.status_code in (400, 401, 403):
        raise CredentialsError(f"IAM {iam_url}: the API key was refused "
                               f"(HTTP {r.status_code}{_iam_reason(r)})")
    if r.status_code != 200:
        raise RemoteError(f"IAM {iam_url}: HTTP {r.status_code}{_iam_reason(r)}")
    try:
        body = r.json()
        token = body["access_token"]
        expires_in = float(body.get("expires_in", 3600))
    except (ValueError, KeyError, TypeError):
        raise RemoteError(f"IAM {iam_url}: answer without access_token") from None
    if not isinstance(token, str) or not token:
        raise RemoteError(f"IAM {iam_url}: answer without access_token")
    return token, expires_in


def _iam_reason(r: Any) -> str:
    try:
        msg = r.json().get("errorMessage")
    except ValueError:
        return ""
    return f": {msg}" if isinstance(msg, str) else ""


class TokenSource:
    """A thread-safe IAM token for an API key, fetched on first use and refreshed near expiry."""

    def __init__(self, api_key: str, iam_url: str = IAM_URL) -> None:
        self._api_key = api_key
        self.iam_url = token_url(iam_url)
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.fetches = 0  # how many tokens were fetched (the tests check refreshes)

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() > self._expires_at - REFRESH_MARGIN_S:
                token, valid_s = fetch_token(self._api_key, self.iam_url)
                self._token, self._expires_at = token, time.monotonic() + valid_s
                self.fetches += 1
            return self._token

    def __repr__(self) -> str:  # never the key or the token
        return f"TokenSource(iam_url={self.iam_url!r})"
