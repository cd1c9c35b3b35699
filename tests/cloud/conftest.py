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


API_KEY = "test-api-key-0123456789abcdef"
INSTANCE = "7c3d1b2a-0000-4000-8000-00000000abcd"
ROOT_KEY = "1f2e3d4c-0000-4000-8000-0000000000aa"
STANDARD_KEY = "9a8b7c6d-0000-4000-8000-0000000000bb"
ACCOUNT = "0123456789abcdef0123456789abcdef"


class Cloud:
    """The stand-ins of one test, with the values that address them."""

    def __init__(self, s3: s3server.S3Server) -> None:
        from tests.cloud import standins

        self.iam = standins.IamStandIn({API_KEY})
        self.kp = standins.KeyProtectStandIn(self.iam, INSTANCE, [ROOT_KEY], [STANDARD_KEY])
        self.vpc = standins.VpcStandIn(self.iam, self.kp, s3.client(), s3server.BUCKET)
        self.sl = standins.SoftLayerStandIn(self.iam, self.kp, s3.client(), s3server.BUCKET)
        self.root_key_crn = (f"crn:v1:bluemix:public:kms:us-south:a/{ACCOUNT}:{INSTANCE}:key:"
                             f"{ROOT_KEY}")
        self.iam_url = f"{self.iam.url}/identity/token"

    def kms_args(self, key_id: str = ROOT_KEY, instance: str = INSTANCE) -> list[str]:
        return ["--region", "us-south", "--instance-id", instance, "--root-key-id", key_id,
                "--kms-url", self.kp.url, "--iam-url", self.iam_url]

    def stop(self) -> None:
        for s in (self.iam, self.kp, self.vpc, self.sl):
            s.stop()


@pytest.fixture
def cloud(s3: s3server.S3Server, cos_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[Cloud]:
    monkeypatch.setenv("IBMCLOUD_API_KEY", API_KEY)
    monkeypatch.setenv("LUKSPACK_POLL_S", "0.05")
    c = Cloud(s3)
    yield c
    c.stop()


@pytest.fixture(scope="session")
def bootable_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small disk `lukspack check` passes for VPC and classic: the check tests' guest tree
    (tests/check/guest_tree.py, real mkfs.ext4 -d and sfdisk) with the Xen front ends built in
    (classic), the root filesystem as the first and only partition (classic wants /boot there)
    and boot code in the MBR. Seconds to build, unlike the Debian images."""
    from tests.check.guest_tree import KVER, base_tree, gpt_disk_parts, make_ext4, write
    from tests.helpers import require

    require("mkfs.ext4", "sfdisk")
    work = tmp_path_factory.mktemp("guest")
    tree = base_tree(work / "tree", work)
    write(tree, f"boot/config-{KVER}", "CONFIG_VIRTIO_BLK=m\nCONFIG_VIRTIO_PCI=m\n"
          "CONFIG_XEN_BLKDEV_FRONTEND=y\nCONFIG_XEN_NETDEV_FRONTEND=y\n")
    disk = gpt_disk_parts([make_ext4(tree, work / "root.ext4")], work / "guest.img")
    (work / "root.ext4").unlink()
    with open(disk, "r+b") as f:  # boot code in the protective MBR (what a BIOS loader puts)
        f.write(b"\xeb\x63\x90" + b"\x90" * 61)
    return disk
