"""Fixtures of the cloud tests: one real S3 server for the session, credentials for it in the
environment of each test, and the local stand-ins of IAM, Key Protect, VPC and SoftLayer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cloud import s3server


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3server.S3Server]:
    server = s3server.start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def cos_env(s3: s3server.S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The test's environment: the local server's endpoint and HMAC keys, nothing else cloud."""
    for k in list(s3server.os.environ):
        if k.startswith(("COS_", "AWS_", "IBMCLOUD_")):
            monkeypatch.delenv(k)
    env = s3server.env_for(s3)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return env


@pytest.fixture
def obj() -> str:
    """A fresh object location in the test bucket."""
    return f"cos://{s3server.REGION}/{s3server.BUCKET}/t/{uuid.uuid4().hex}.img"
