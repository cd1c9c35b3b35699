"""Shared fixtures; the helpers they use live in tests/helpers.py."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest

from tests.helpers import Cli


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    """A valid DEK written by `lukspack keygen`."""
    path = tmp_path / "dek.key"
    Cli(tmp_path)("keygen", str(path))
    return path




@pytest.fixture(scope="session")
def session_keyfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DEK (32 random bytes, base64, mode 0600) for module- and session-scoped fixtures."""
    path = tmp_path_factory.mktemp("key") / "dek.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, base64.b64encode(secrets.token_bytes(32)))
    os.close(fd)
    return path
