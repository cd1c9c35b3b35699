"""Shared fixtures; the helpers they use live in tests/helpers.py."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest

from tests.helpers import Cli, InProcessCli


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The CLI in this process (fast); tests of start-up, signals and exit codes of a real
    process use `process_cli`."""
    return InProcessCli(tmp_path)


@pytest.fixture
def process_cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def _write_dek(path: Path) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, base64.b64encode(secrets.token_bytes(32)))
    os.close(fd)
    return path


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    """A valid DEK (32 random bytes, base64, mode 0600), written without starting a process."""
    return _write_dek(tmp_path / "dek.key")




@pytest.fixture(scope="session")
def session_keyfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DEK (32 random bytes, base64, mode 0600) for module- and session-scoped fixtures."""
    return _write_dek(tmp_path_factory.mktemp("key") / "dek.key")
