"""Fixtures of the image tests: one data encryption key per session (no keygen subprocess per
test: these tests run lukspack and qemu-img many times)."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest

from tests.helpers import pattern_disk
from tests.images.flavours import SOURCE_MIB


@pytest.fixture(scope="session")
def keyfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "dek.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, base64.b64encode(secrets.token_bytes(32)))
    os.close(fd)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pattern disk every flavour of every format is made from."""
    return pattern_disk(tmp_path_factory.mktemp("src") / "source.raw", SOURCE_MIB)
