"""Fixtures of the remote-source tests: the local HTTP object server, the session key, and the
real S3 server of the cloud tests (SeaweedFS)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cloud.conftest import bootable_disk, cloud, cos_env, s3  # noqa: F401  (SeaweedFS, the stand-ins)
from tests.remote.httpserver import ObjectServer


@pytest.fixture(scope="module")
def server() -> Iterator[ObjectServer]:
    s = ObjectServer()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def keyfile(session_keyfile: Path) -> Path:
    return session_keyfile


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait 10 ms, not 200: faults are injected on purpose here."""
    monkeypatch.setenv("LUKSPACK_REMOTE_BACKOFF_S", "0.01")
