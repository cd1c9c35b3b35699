"""Fixtures of the fleet tests: the cloud tests' real S3 server (SeaweedFS) and IBM stand-ins,
small disk images in mixed formats (qemu-img), and manifests that address them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cloud import s3server
from tests.cloud.conftest import INSTANCE, cloud, cos_env, s3  # noqa: F401 - fixtures
from tests.helpers import cli_env, run, tool

BUCKET = f"cos://{s3server.REGION}/{s3server.BUCKET}"
FORMATS = {"raw": "raw", "vhd": "vpc", "qcow2": "qcow2", "vmdk": "vmdk"}


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6 MiB pattern disk as raw, vhd, qcow2 and vmdk (qemu-img converts it)."""
    d = tmp_path_factory.mktemp("fleet-images")
    raw = d / "disk.raw"
    run([sys.executable, "-m", "lukspack", "sample", str(raw), "--size", "6"], env=cli_env())
    out = {"raw": raw}
    for fmt in ("vhd", "qcow2", "vmdk"):
        p = d / f"disk.{fmt}"
        run([tool("qemu-img"), "convert", "-O", FORMATS[fmt], str(raw), str(p)])
        out[fmt] = p
    return out


def defaults_for(c: Any) -> dict[str, Any]:
    return {"root_key_crn": c.root_key_crn, "kms_instance": INSTANCE, "kms_url": c.kp.url,
            "iam_url": c.iam_url, "pbkdf_force_iterations": 1000, "part_size": 5,
            "skip_check": True, "key": "new", "output": BUCKET + "/fleet/"}


def vpc_row(c: Any, source: Path, name: str, **kw: Any) -> dict[str, Any]:
    return {"source": str(source), "target": "vpc", "name": name, "os": "debian-12-amd64",
            "api_url": c.vpc.url, **kw}


def classic_row(c: Any, source: Path, name: str, **kw: Any) -> dict[str, Any]:
    return {"source": str(source), "target": "classic", "name": name, "os": "UBUNTU_22_64",
            "api_url": f"{c.sl.url}/rest/v3.1", **kw}


def write_manifest(path: Path, rows: list[dict[str, Any]], defaults: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"defaults": defaults, "images": rows}, sort_keys=False))
    return path


def mixed_rows(c: Any, images: dict[str, Path], prefix: str) -> list[dict[str, Any]]:
    """Four formats in, both targets and all three output formats out."""
    return [vpc_row(c, images["vmdk"], f"{prefix}-vmdk"),
            vpc_row(c, images["qcow2"], f"{prefix}-qcow2"),
            classic_row(c, images["vhd"], f"{prefix}-vhd"),
            classic_row(c, images["raw"], f"{prefix}-raw", format="raw")]
