"""The cloud jobs of lukspack.api called from Python, against the local stand-ins: publish's
result is what `publish --json` prints for the same run; a rule broken is a typed error with
the CLI's exit code; upload and wrap_key work without the CLI."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from lukspack import api
from lukspack.cloud.upload import CosOptions
from lukspack.errors import LukspackError, UsageError
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


def _kms(cloud) -> api.KmsTarget:
    from tests.cloud.conftest import INSTANCE, ROOT_KEY

    return api.KmsTarget("us-south", INSTANCE, ROOT_KEY, kms_url=cloud.kp.url,
                         iam_url=cloud.iam_url)


def test_wrap_key_and_unwrap_key_from_python(cloud, tmp_path) -> None:
    from lukspack.cloud.errors import CloudError
    from tests.cloud.conftest import ROOT_KEY

    dek = base64.b64encode(bytes(range(32)))
    out = tmp_path / "wdek"
    r = api.wrap_key(api.WrapKeyRequest(api.KeySource(data=dek), "classic", _kms(cloud),
                                        output=str(out)))
    assert r.checked and r.output == str(out) and out.read_text() == r.wdek
    assert cloud.kp.unwrap_local(ROOT_KEY, r.wdek) == dek.decode()
    assert list(r.to_dict()) == ["wdek", "target", "root_key_id", "instance_id", "checked",
                                 "output"]
    req = api.UnwrapKeyRequest(str(out), _kms(cloud), api.KeySource(data=dek), "classic")
    u = api.unwrap_key(req)
    assert u.unwrapped_bytes == 32 and u.matches_key_file is True
    assert api.unwrap_mismatch(req, u) is None
    other = api.UnwrapKeyRequest(str(out), _kms(cloud), api.KeySource(data=base64.b64encode(bytes(32))),
                             "classic")
    err = api.unwrap_mismatch(other, api.unwrap_key(other))
    assert isinstance(err, CloudError) and api.exit_code(err) == 1
    with pytest.raises(LukspackError) as e:  # never over an existing file
        api.wrap_key(api.WrapKeyRequest(api.KeySource(data=dek), "classic", _kms(cloud),
                                        output=str(out)))
    assert str(out) in str(e.value) and api.exit_code(e.value) in (1, 2)


def test_wrap_key_without_an_api_key(cloud, tmp_path, monkeypatch) -> None:
    from lukspack.cloud.errors import CredentialsError

    monkeypatch.delenv("IBMCLOUD_API_KEY")
    with pytest.raises(CredentialsError, match="no IBM Cloud API key"):
        api.wrap_key(api.WrapKeyRequest(api.KeySource(data=b"k" * 44), "vpc", _kms(cloud)))


def test_upload_from_python(cos_env, s3, obj, tmp_path) -> None:
    import hashlib
    import os

    data = os.urandom((5 << 20) + 12345)
    f = tmp_path / "file.bin"
    f.write_bytes(data)
    r = api.upload(api.UploadRequest(str(f), obj, CosOptions(part_size=5 << 20,
                                                             verify_remote=True)))
    assert isinstance(r, api.UploadResult) and r.parts == 2 and r.verified_remote
    assert r.sha256 == hashlib.sha256(data).hexdigest() and r.bytes == len(data)
    assert r.to_dict()["state_file"] is None  # printed as null, as --json always did
    from lukspack.cloud.location import parse_cos

    loc = parse_cos(obj)
    assert s3.client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read() == data
    with pytest.raises(UsageError, match="--abort discards the kept upload") as e:
        api.abort_upload(api.UploadRequest(str(f), obj, CosOptions(resume=True)))
    assert api.exit_code(e.value) == 2
