"""Errors of the cloud package: each one line, naming the location, field or service."""

from __future__ import annotations

from lukspack.errors import LukspackError


class CloudError(LukspackError):
    """A cloud location, option or answer is wrong (bad cos:// location, a refused request)."""


class CredentialsError(CloudError):
    """No usable credentials, or the service refused them."""


class RemoteError(CloudError):
    """A service failed in a way that may pass (network, 5xx): a kept upload can be resumed."""
