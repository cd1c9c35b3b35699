"""Fixtures of the image tests: one data encryption key per session (no keygen subprocess per
test: these tests run lukspack and qemu-img many times)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import pattern_disk
from tests.images.flavours import SOURCE_MIB


@pytest.fixture(scope="session")
def keyfile(session_keyfile: Path) -> Path:
    return session_keyfile


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pattern disk every flavour of every format is made from."""
    return pattern_disk(tmp_path_factory.mktemp("src") / "source.raw", SOURCE_MIB)
