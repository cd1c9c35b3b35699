"""The cloud jobs of lukspack.api called from Python, against the local stand-ins: publish's
result is what `publish --json` prints for the same run; a rule broken is a typed error with
the CLI's exit code; upload and wrap_key work without the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lukspack import api
from lukspack.cloud.upload import CosOptions
from lukspack.errors import UsageError
from tests.cloud.test_kms import run_cli
from tests.cloud.test_publish import BUCKET, publish_args


def _request(cloud, source: Path, key: Path, name: str) -> api.PublishRequest:
    return api.PublishRequest(
        str(source), "vpc", BUCKET, cloud.root_key_crn, cloud.kp.instance_id, name,
        "debian-12-amd64", key=api.KeySource(path=str(key)), api_url=cloud.vpc.url,
        kms_url=cloud.kp.url, pbkdf_force_iterations=1000,
        cos_options=CosOptions(iam_url=cloud.iam_url, part_size=5 << 20))


def _key(tmp_path: Path) -> Path:
    p = tmp_path / "vpc.key"
    p.write_bytes(b"Zq3v8wq1TQ0rM5pYb2dN7xK4hL6cE9aJ1fG0iS3uV5wX")  # a 44-character passphrase
    p.chmod(0o600)
    return p


def _stable(d: dict) -> dict:
    """A publish's summary without what differs between two runs (timings, image ids, and what
    a random volume key and the wrap's random IV change); the image's checksum is the
    object's in each."""
    d = json.loads(json.dumps(d))
    assert d["image"]["sha256"] == d.pop("sha256") and len(d.pop("wdek_sha256")) == 64
    d["image"].pop("sha256")
    d.pop("encrypt", None)
    d.pop("object")
    d["image"] = {k: v for k, v in d["image"].items() if k not in ("id", "crn", "name")}
    return d


def test_publish_result_is_the_cli_json(cloud, s3, bootable_disk, tmp_path, capsys) -> None:
    key = _key(tmp_path)
    said: list[str] = []
    r = api.publish(_request(cloud, bootable_disk, key, "api-image"), say=said.append)
    assert isinstance(r, api.PublishResult) and isinstance(r.authorizations, tuple)
    assert r.image is not None and r.image["checksum_match"] is True
    assert any(line.startswith("checked: root key") for line in said)
    code, out, err = run_cli(publish_args(cloud, bootable_disk, ["--key-file", str(key)],
                                          name="cli-image"), capsys)
    assert code == 0, err
    cli = json.loads(out)
    assert list(cli) == list(r.to_dict())  # the same keys, in the same order
    assert _stable(cli) == _stable(r.to_dict())
    assert set(cli["encrypt"]) == set(r.to_dict()["encrypt"])
    assert (r.object, cli["object"]) == (f"{BUCKET}/api-image.qcow2", f"{BUCKET}/cli-image.qcow2")


@pytest.mark.parametrize("change, message", [
    ({"key": None}, "give one of --key-file and --new-key-file"),
    ({"new_key_bytes": 32, "key": None, "new_key_file": "x.key"},
     "--new-key-bytes goes with --new-key-file for --to classic"),
])
def test_publish_rule_is_a_usage_error(cloud, bootable_disk, tmp_path, change, message) -> None:
    from dataclasses import replace

    req = replace(_request(cloud, bootable_disk, _key(tmp_path), "rule"), **change)
    with pytest.raises(UsageError, match=message) as e:
        api.publish(req)
    assert api.exit_code(e.value) == 2
    assert not cloud.vpc.images  # nothing was created


def test_publish_vhd_with_kdf_option_is_a_usage_error(cloud, bootable_disk, tmp_path) -> None:
    from dataclasses import replace

    req = replace(_request(cloud, bootable_disk, _key(tmp_path), "vhd"), target="classic",
                  os_name="UBUNTU_22_64")
    with pytest.raises(UsageError) as e:
        api.publish(req)
    assert api.exit_code(e.value) == 2 and "vhd" in str(e.value).lower()
