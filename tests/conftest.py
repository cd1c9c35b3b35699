"""Shared fixtures; the helpers they use live in tests/helpers.py."""

from __future__ import annotations

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


