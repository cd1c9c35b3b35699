"""publish end to end: pre-flight checks (the key's rule, `lukspack check`) before anything is
created or uploaded, encrypt straight into the bucket, wrap, import, wait, compare checksums; the
object downloaded and opened by lukspack, qemu-img, cryptsetup and an independent VHD decryptor;
a refused import deletes the object; kill -9 part way, then --resume."""

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
def source(bootable_disk: Path) -> Path:
    """A disk `lukspack check` passes for VPC and classic (conftest.bootable_disk)."""
    return bootable_disk


@pytest.fixture(scope="module")
def no_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A disk with no root filesystem (lukspack sample's pattern): `check` fails it."""
    p = tmp_path_factory.mktemp("src") / "disk.img"
    run([sys.executable, "-m", "lukspack", "sample", str(p), "--size", "48"], env=cli_env())
    return p


def bucket_is_empty(s3, prefix: str) -> bool:
    listing = s3.client().list_objects_v2(Bucket=s3server.BUCKET, Prefix=prefix)
    return listing.get("KeyCount", 0) == 0 and \
        not s3.client().list_multipart_uploads(Bucket=s3server.BUCKET).get("Uploads")


def publish_args(cloud, src: Path, key_args: list[str], *extra: str, to: str = "vpc",
                 name: str = "my-image", os_name: str = "debian-12-amd64",
                 crn: str | None = None, instance: str = INSTANCE, as_json: bool = True) -> list[str]:
    api = cloud.vpc.url if to == "vpc" else f"{cloud.sl.url}/rest/v3.1"
    return ["publish", str(src), "--to", to, "--cos", BUCKET, "--root-key-crn",
            crn or cloud.root_key_crn, "--kms-instance", instance, "--name", name, "--os", os_name,
            *key_args, "--api-url", api, "--kms-url", cloud.kp.url, "--iam-url", cloud.iam_url,
            # the encrypted VHD has no key slots: --pbkdf-force-iterations is a usage error
            *([] if to == "classic" and "raw" not in extra else
              ["--pbkdf-force-iterations", "1000"]),
            "--part-size", "5", "--no-progress", *(["--json"] if as_json else []), *extra]


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
    assert err.index("for IBM Cloud vpc: ") < err.index("wrote a new key")  # checked first
    assert r["check"]["target"] == "vpc" and r["check"]["skipped"] is False
    assert r["check"]["FAIL"] == 0 and r["check"]["PASS"] > 10
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


@pytest.mark.parametrize("nbytes", [None, "32"])
def test_publish_classic_vhd(cloud, s3, source, tmp_path, capsys, nbytes) -> None:
    from tests.vhd_crypt.drive import independent_decrypt

    key = tmp_path / "dek"
    extra = ["--new-key-bytes", nbytes] if nbytes else []
    code, out, err = run_cli(publish_args(cloud, source, ["--new-key-file", str(key)], *extra,
                                          to="classic", name="vhd-img", os_name="UBUNTU_22_64",
                                          as_json=False), capsys)
    assert code == 0, err
    assert "check for IBM Cloud classic: " in out and " 0 failed" in out
    r = out.splitlines()[0].split(":", 2)
    assert f"{r[0]}:{r[1]}" == f"{BUCKET}/vhd-img.vhd-0.vhd"
    dek = key.read_bytes()
    # AES-256-XTS by default, --new-key-bytes 32: AES-128-XTS
    assert len(base64.b64decode(dek, validate=True)) == int(nbytes or 64)
    cfg = cloud.sl.created[0]["_cfg"]
    key_id = cloud.root_key_crn.rsplit(":", 1)[-1]
    assert cloud.kp.unwrap_local(key_id, cfg["wrappedDek"]) == dek.decode()  # the base64 DEK
    got = download(s3, f"{BUCKET}/vhd-img.vhd-0.vhd", tmp_path / "dl.vhd")
    plain = independent_decrypt(got, base64.b64decode(dek))  # struct + `cryptography` only
    want = source.read_bytes()
    assert plain[: len(want)] == want and not plain[len(want):].strip(b"\0")


def test_new_key_bytes_is_for_classic(cloud, source, tmp_path, capsys) -> None:
    key = tmp_path / "k"
    code, _, err = run_cli(publish_args(cloud, source, ["--new-key-file", str(key)],
                                        "--new-key-bytes", "32"), capsys)
    assert code == 2 and "--new-key-bytes" in err and not key.exists()


def test_check_failure_uploads_nothing(cloud, s3, no_root, tmp_path, capsys) -> None:
    key = tmp_path / "new.key"
    code, out, err = run_cli(publish_args(cloud, no_root, ["--new-key-file", str(key)],
                                          name="no-root"), capsys)
    assert code == 1 and out == "" and "Traceback" not in err
    assert "check(s) failed for IBM Cloud vpc" in err and "root" in err
    assert not key.exists() and bucket_is_empty(s3, "no-root")
    assert not cloud.vpc.images


def test_skip_check_is_said(cloud, s3, no_root, tmp_path, capsys) -> None:
    key = tmp_path / "new.key"
    code, out, err = run_cli(publish_args(cloud, no_root, ["--new-key-file", str(key)],
                                          "--skip-check", "--output-format", "raw", to="classic",
                                          name="skipped", os_name="UBUNTU_22_64"), capsys)
    assert code == 0, err
    assert json.loads(out)["check"] == {"target": "classic", "skipped": True}
    assert "check for IBM Cloud classic skipped (--skip-check)" in err


@pytest.mark.parametrize("to,fmt,content,message", [
    # 64 base64 characters decode to 48 bytes: before, encrypt took them as a raw key and
    # wrap-key refused them after the whole image was uploaded
    ("classic", "vhd", b"A" * 63 + b"=", "decodes to 47 bytes"),
    ("classic", "vhd", base64.b64encode(bytes(range(48))), "decodes to 48 bytes"),
    ("vpc", "qcow2", b"caf\xe9-latin-1-passphrase", "must be UTF-8"),
    ("classic", "raw", b"abc123", "not a valid data encryption key"),
])
def test_key_rule_before_any_byte(cloud, s3, source, tmp_path, capsys, to, fmt, content,
                                  message) -> None:
    key = tmp_path / "k"
    key.write_bytes(content)
    key.chmod(0o600)
    code, _, err = run_cli(publish_args(cloud, source, ["--key-file", str(key)],
                                        "--output-format", fmt, to=to, name=f"refused-{fmt}",
                                        os_name="UBUNTU_22_64" if to == "classic" else
                                        "debian-12-amd64"), capsys)
    assert code == 1 and message in err and "Traceback" not in err, err
    assert bucket_is_empty(s3, f"refused-{fmt}") and "uploaded" not in err


def test_vpc_weak_passphrase_is_a_warning(cloud, s3, source, tmp_path, capsys) -> None:
    key = tmp_path / "abc123"
    key.write_bytes(b"abc123")  # IBM's VPC example passphrase
    key.chmod(0o600)
    code, out, err = run_cli(publish_args(cloud, source, ["--key-file", str(key)],
                                          name="weak"), capsys)
    assert code == 0, err
    assert "warning:" in err and "not a data encryption key" in err
    (image,) = cloud.vpc.images.values()
    key_id = cloud.root_key_crn.rsplit(":", 1)[-1]
    assert cloud.kp.unwrap_local(key_id, image["_req"]["encrypted_data_key"]) == "YWJjMTIz"


def test_refused_import_deletes_the_object(cloud, s3, source, tmp_path, capsys) -> None:
    """The image service refuses the request (a name in use: no retry changes that): the object
    uploaded for it is deleted, and so is the publish state."""
    cloud.vpc.images["r006-taken"] = {"id": "r006-taken", "name": "taken", "status": "available"}
    key = tmp_path / "new.key"
    code, _, err = run_cli(publish_args(cloud, source, ["--new-key-file", str(key)],
                                        name="taken"), capsys)
    assert code == 1 and "image_name_duplicate" in err and "Traceback" not in err
    assert "uploaded" in err and f"deleted {BUCKET}/taken.qcow2" in err
    assert bucket_is_empty(s3, "taken")
    assert not list(Path(os.environ["XDG_CACHE_HOME"]).rglob("*.publish.json"))


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
    assert not key.exists() and bucket_is_empty(s3, "never")


def test_publish_kill_9_then_resume(cloud, s3, cos_env, tmp_path) -> None:
    from tests.cloud.s3proxy import kill_9_part_way

    src = tmp_path / "big.img"
    run([sys.executable, "-m", "lukspack", "sample", str(src), "--size", "96"], env=cli_env())
    key = tmp_path / "k.key"
    env = {**cli_env(), **cos_env, "IBMCLOUD_API_KEY": os.environ["IBMCLOUD_API_KEY"],
           "LUKSPACK_POLL_S": "0.05"}
    args = publish_args(cloud, src, ["--new-key-file", str(key)], "--skip-check", name="resumed")
    cache = Path(os.environ["XDG_CACHE_HOME"])
    state = kill_9_part_way([sys.executable, "-m", "lukspack", *args], env, s3.endpoint,
                            lambda: list(cache.rglob("*.lukspack-upload")), need=b"key_material")
    kept = state.read_bytes().count(b'"part"')
    resume = publish_args(cloud, src, ["--key-file", str(key)], "--resume", "--skip-check",
                          name="resumed")
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


def test_vpc_with_another_output_format_is_a_usage_error(tmp_path, capsys) -> None:
    """--to vpc --output-format raw (or vhd) cannot work together: exit 2, before anything."""
    for fmt in ("raw", "vhd"):
        args = ["publish", str(tmp_path / "no-such-source.img"), "--to", "vpc", "--cos",
                "cos://us-south/bucket", "--root-key-crn", "crn:v1:bluemix:public:kms:us-south:"
                "a/0123456789abcdef0123456789abcdef:7c3d1b2a-0000-4000-8000-00000000abcd:key:"
                "1f2e3d4c-0000-4000-8000-0000000000aa", "--kms-instance",
                "7c3d1b2a-0000-4000-8000-00000000abcd", "--name", "img", "--os",
                "debian-12-amd64", "--new-key-file", str(tmp_path / "k"), "--output-format", fmt,
                "--endpoint-url", "http://127.0.0.1:9", "--iam-url", "http://127.0.0.1:9"]
        code, _, err = run_cli(args, capsys)
        assert code == 2 and "--output-format must be qcow2" in err and err.count("\n") == 1
        assert not (tmp_path / "k").exists()


@pytest.mark.parametrize("new_key,code,says", [
    ("-", 2, "name a file to write the new key to"),
    ("exists.key", 1, "already exists; lukspack never overwrites a key"),
    ("nodir/new.key", 1, "does not exist"),
])
def test_new_key_file_refused_before_anything(tmp_path, capsys, monkeypatch, new_key, code,
                                              says) -> None:
    """A --new-key-file that cannot be written is said first: not after the image's check, the
    Key Protect test and the IAM token (here there is no cloud at all: any contact would fail
    with another message)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exists.key").write_bytes(b"keep")
    args = ["publish", str(tmp_path / "no-such-source.img"), "--to", "vpc", "--cos",
            "cos://us-south/bucket", "--root-key-crn", "crn:v1:bluemix:public:kms:us-south:a/"
            "0123456789abcdef0123456789abcdef:7c3d1b2a-0000-4000-8000-00000000abcd:key:"
            "1f2e3d4c-0000-4000-8000-0000000000aa", "--kms-instance",
            "7c3d1b2a-0000-4000-8000-00000000abcd", "--name", "img", "--os", "debian-12-amd64",
            "--new-key-file", new_key, "--endpoint-url", "http://127.0.0.1:9", "--kms-url",
            "http://127.0.0.1:9", "--iam-url", "http://127.0.0.1:9", "--no-progress"]
    got, out, err = run_cli(args, capsys)
    assert got == code and says in err and err.count("\n") == 1, err
    assert (tmp_path / "exists.key").read_bytes() == b"keep" and not (tmp_path / "-").exists()
