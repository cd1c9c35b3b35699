"""publish end to end: pre-flight checks before anything is uploaded, encrypt straight into the
bucket, wrap, import, wait, compare checksums; the object downloaded and opened by lukspack
and qemu-img; kill -9 part way, then --resume."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lukspack.cloud.location import parse_cos
from tests.cloud import s3server
from tests.cloud.conftest import INSTANCE, STANDARD_KEY
from tests.cloud.test_kms import run_cli
from tests.helpers import cli_env, run, tool

BUCKET = f"cos://{s3server.REGION}/{s3server.BUCKET}"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("src") / "disk.img"
    run([sys.executable, "-m", "lukspack", "sample", str(p), "--size", "48"], env=cli_env())
    return p


def publish_args(cloud, src: Path, key_args: list[str], *extra: str, to: str = "vpc",
                 name: str = "my-image", os_name: str = "debian-12-amd64",
                 crn: str | None = None, instance: str = INSTANCE) -> list[str]:
    api = cloud.vpc.url if to == "vpc" else f"{cloud.sl.url}/rest/v3.1"
    return ["publish", str(src), "--to", to, "--cos", BUCKET, "--root-key-crn",
            crn or cloud.root_key_crn, "--kms-instance", instance, "--name", name, "--os", os_name,
            *key_args, "--api-url", api, "--kms-url", cloud.kp.url, "--iam-url", cloud.iam_url,
            # the encrypted VHD has no key slots: --pbkdf-force-iterations is a usage error
            *([] if to == "classic" and "raw" not in extra else
              ["--pbkdf-force-iterations", "1000"]),
            "--part-size", "5", "--no-progress", "--json", *extra]


def download(s3, location: str, to: Path) -> Path:
    loc = parse_cos(location)
    to.write_bytes(s3.client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
    return to


def test_publish_vpc(cloud, s3, source, tmp_path, capsys) -> None:
    key = tmp_path / "new.key"
    code, out, err = run_cli(publish_args(cloud, source, ["--new-key-file", str(key)]), capsys)
    assert code == 0, err
    r = json.loads(out)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and b"\n" not in key.read_bytes()
    for line in ("checked: root key", "needs service authorization: Cloud Block Storage",
                 "Image Service for VPC -> Cloud Object Storage: Reader"):
        assert line in err
    assert err.index("checked: root key") < err.index("wrote a new key") < err.index("uploaded")
    img = r["image"]
    assert img["status"] == "available" and img["checksum_match"] is True
    assert r["object"] == f"{BUCKET}/my-image.qcow2" and not cloud.vpc.refusals
    # what the VPC stand-in got unwraps to base64 of the passphrase bytes (IBM's VPC rule)
    (image,) = cloud.vpc.images.values()
    wdek = image["_req"]["encrypted_data_key"]
    key_id = cloud.root_key_crn.rsplit(":", 1)[-1]
    assert cloud.kp.unwrap_local(key_id, wdek) == base64.b64encode(key.read_bytes()).decode()
    got = download(s3, r["object"], tmp_path / "dl.qcow2")
    run([sys.executable, "-m", "lukspack", "verify", str(got), "--key-file", str(key),
         "--source", str(source)], env=cli_env())
    info = run([tool("qemu-img"), "info", "--output=json", str(got)]).stdout
    assert json.loads(info)["format-specific"]["data"]["encrypt"]["format"] == "luks"


def test_publish_classic_luks_raw(cloud, s3, source, tmp_path, capsys) -> None:
    key = tmp_path / "dek"
    code, out, err = run_cli(publish_args(cloud, source, ["--new-key-file", str(key)],
                                          "--output-format", "raw", to="classic",
                                          name="classic-img", os_name="UBUNTU_22_64"), capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["object"] == f"{BUCKET}/classic-img.raw" and r["image"]["id"] == 4000000
    cfg = cloud.sl.created[0]["_cfg"]
    key_id = cloud.root_key_crn.rsplit(":", 1)[-1]
    assert cloud.kp.unwrap_local(key_id, cfg["wrappedDek"]) == key.read_text()  # the DEK text
    got = download(s3, r["object"], tmp_path / "dl.raw")
    run([tool("cryptsetup"), "luksDump", str(got)])
    run([tool("cryptsetup"), "open", "--test-passphrase", "--key-file", str(key), str(got)])


def test_publish_classic_vhd(cloud, s3, source, tmp_path, capsys) -> None:
    try:
        import lukspack.containers.encrypted_vhd  # noqa: F401
    except ImportError:
        pytest.skip("the encrypted VHD container (another issue) is not on this branch yet")
    key = tmp_path / "dek"
    code, out, err = run_cli(publish_args(cloud, source, ["--new-key-file", str(key)],
                                          to="classic", name="vhd-img", os_name="UBUNTU_22_64"),
                             capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["object"] == f"{BUCKET}/vhd-img.vhd-0.vhd"
    cfg = cloud.sl.created[0]["_cfg"]
    key_id = cloud.root_key_crn.rsplit(":", 1)[-1]
    assert cloud.kp.unwrap_local(key_id, cfg["wrappedDek"]) == key.read_text()  # the base64 DEK


@pytest.mark.parametrize("crn_key,instance,message", [
    (STANDARD_KEY, INSTANCE, "is not a root key"),
    (None, "00000000-1111-4000-8000-000000000000", "is not the instance of the root key CRN"),
])
def test_preflight_fails_before_any_upload_or_key(cloud, s3, source, tmp_path, capsys, crn_key,
                                                  instance, message) -> None:
    crn = cloud.root_key_crn.rsplit(":", 1)[0] + f":{crn_key}" if crn_key else None
    key = tmp_path / "new.key"
    code, _, err = run_cli(publish_args(cloud, source, ["--new-key-file", str(key)], crn=crn,
                                        instance=instance, name="never"), capsys)
    assert code == 1 and message in err and "Traceback" not in err
    assert not key.exists()
    listing = s3.client().list_objects_v2(Bucket=s3server.BUCKET, Prefix="never")
    assert listing.get("KeyCount", 0) == 0
    assert not s3.client().list_multipart_uploads(Bucket=s3server.BUCKET).get("Uploads")


def test_publish_kill_9_then_resume(cloud, s3, cos_env, tmp_path) -> None:
    from tests.cloud.s3proxy import kill_9_part_way

    src = tmp_path / "big.img"
    run([sys.executable, "-m", "lukspack", "sample", str(src), "--size", "96"], env=cli_env())
    key = tmp_path / "k.key"
    env = {**cli_env(), **cos_env, "IBMCLOUD_API_KEY": os.environ["IBMCLOUD_API_KEY"],
           "LUKSPACK_POLL_S": "0.05"}
    args = publish_args(cloud, src, ["--new-key-file", str(key)], name="resumed")
    cache = Path(os.environ["XDG_CACHE_HOME"])
    state = kill_9_part_way([sys.executable, "-m", "lukspack", *args], env, s3.endpoint,
                            lambda: list(cache.rglob("*.lukspack-upload")), need=b"key_material")
    kept = state.read_bytes().count(b'"part"')
    resume = publish_args(cloud, src, ["--key-file", str(key)], "--resume", name="resumed")
    q = subprocess.run([sys.executable, "-m", "lukspack", *resume], env=env, capture_output=True,
                       text=True, timeout=300)
    assert q.returncode == 0, q.stderr
    r = json.loads(q.stdout)
    assert r["encrypt"]["total_bytes"] and r["image"]["checksum_match"] is True
    assert r["resumed_parts"] >= kept >= 3
    got = download(s3, r["object"], tmp_path / "dl.qcow2")
    run([sys.executable, "-m", "lukspack", "verify", str(got), "--key-file", str(key),
         "--source", str(src)], env=cli_env())
    assert not state.exists()
    assert not s3.client().list_multipart_uploads(Bucket=s3server.BUCKET).get("Uploads")
