"""import vpc / import classic: dry runs print the exact request with secrets redacted; real
requests against the VPC and SoftLayer stand-ins, which read the object from the S3 server."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from lukspack.cloud.errors import CloudError
from lukspack.cloud.iam import TokenSource
from lukspack.cloud.imports import check_vpc_name, classic_image_request
from lukspack.cloud.kms import KeyProtect, wrap_key
from tests.cloud import s3server
from tests.cloud.conftest import API_KEY, INSTANCE, ROOT_KEY
from tests.cloud.test_kms import run_cli
from tests.cloud.test_upload import make_file

DEK = base64.b64encode(bytes(range(32)))


def wdek_file(cloud, tmp_path: Path, key: bytes, target: str) -> Path:
    kp = KeyProtect(cloud.kp.url, INSTANCE, TokenSource(API_KEY, cloud.iam_url))
    p = tmp_path / "wdek"
    p.write_text(wrap_key(kp, ROOT_KEY, key, target)["wdek"])
    return p


def uploaded(capsys, tmp_path: Path, name: str, size: int = 6 * 1024 * 1024) -> str:
    src = make_file(tmp_path / "img", size, seed=len(name))
    loc = f"cos://{s3server.REGION}/{s3server.BUCKET}/{name}"
    code, _, err = run_cli(["upload", str(src), loc, "--part-size", "5", "--no-progress"], capsys)
    assert code == 0, err
    return loc


def test_vpc_names() -> None:
    check_vpc_name("my-image-1")
    for bad in ("ibm-ubuntu", "My-Image", "1image", "image-", "a--b", "x" * 64, "img_1"):
        with pytest.raises(CloudError, match="image name"):
            check_vpc_name(bad)


def test_vpc_dry_run_prints_the_request_without_secrets(cloud, tmp_path, capsys) -> None:
    w = wdek_file(cloud, tmp_path, b"abc123", "vpc")
    iam_before = len(cloud.iam.requests)
    code, out, err = run_cli(["import", "vpc", "--name", "my-image", "--file",
                              "cos://us-south/bucket1/my.qcow2", "--os", "debian-12-amd64",
                              "--root-key-crn", cloud.root_key_crn, "--wdek-file", str(w),
                              "--resource-group", "rg1", "--dry-run", "--api-url",
                              cloud.vpc.url], capsys)
    assert code == 0, err
    req = json.loads(out)
    assert req["method"] == "POST" and req["url"] == f"{cloud.vpc.url}/v1/images"
    assert req["params"]["generation"] == "2" and len(req["params"]["version"]) == 10
    assert req["json"] == {"name": "my-image", "file": {"href": "cos://us-south/bucket1/my.qcow2"},
                           "operating_system": {"name": "debian-12-amd64"},
                           "encryption_key": {"crn": cloud.root_key_crn},
                           "encrypted_data_key": w.read_text(), "resource_group": {"id": "rg1"}}
    assert req["headers"]["authorization"] == "Bearer <redacted>"
    assert API_KEY not in out
    assert not cloud.vpc.requests and len(cloud.iam.requests) == iam_before  # nothing sent


def test_classic_dry_run_redacts_the_api_key(cloud, tmp_path, capsys) -> None:
    w = wdek_file(cloud, tmp_path, DEK, "classic")
    args = ["import", "classic", "--name", "my image", "--file",
            "cos://us-south/bucket1/my.vhd-0.vhd", "--os-code", "UBUNTU_22_64",
            "--root-key-crn", cloud.root_key_crn, "--wdek-file", str(w), "--dry-run"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    req = json.loads(out)
    assert req["url"].endswith("/SoftLayer_Virtual_Guest_Block_Device_Template_Group/"
                               "createFromIcos.json")
    (cfg,) = req["json"]["parameters"]
    assert set(cfg) == {"name", "note", "operatingSystemReferenceCode", "uri", "ibmApiKey",
                        "crkCrn", "wrappedDek", "cloudInit", "byol", "isEncrypted"}
    assert cfg["ibmApiKey"] == "<redacted>" and API_KEY not in out
    assert cfg["isEncrypted"] is True and cfg["cloudInit"] is True and cfg["byol"] is False
    bad = [a.replace("my.vhd-0.vhd", "my.vhd") for a in args]
    code, _, err = run_cli(bad, capsys)
    assert code == 1 and "NAME.vhd-0.vhd" in err
    code, _, err = run_cli([a.replace("cos://us-south", "cos://us") for a in args], capsys)
    assert code == 1 and "regional buckets" in err


@pytest.mark.parametrize("extra", [["--dry-run", "--wait"], ["--timeout", "60"]])
def test_classic_wait_options_that_conflict_are_usage_errors(cloud, tmp_path, capsys, extra
                                                              ) -> None:
    """--dry-run sends nothing, so --wait has nothing to wait for; --timeout is read only by
    --wait: both exit 2 before anything is sent."""
    w = wdek_file(cloud, tmp_path, DEK, "classic")
    iam_before = len(cloud.iam.requests)
    code, _, err = run_cli(["import", "classic", "--name", "img", "--file",
                            "cos://us-south/bucket1/my.vhd-0.vhd", "--os-code", "UBUNTU_22_64",
                            "--root-key-crn", cloud.root_key_crn, "--wdek-file", str(w), *extra],
                           capsys)
    assert code == 2 and ("--wait" in err), err
    assert not cloud.sl.requests and len(cloud.iam.requests) == iam_before


def test_vpc_expect_sha256_without_wait_is_a_usage_error(cloud, tmp_path, capsys) -> None:
    w = wdek_file(cloud, tmp_path, DEK, "vpc")
    code, _, err = run_cli(["import", "vpc", "--name", "img", "--file",
                            "cos://us-south/bucket1/my.qcow2", "--os", "debian-12-amd64",
                            "--root-key-crn", cloud.root_key_crn, "--wdek-file", str(w),
                            "--expect-sha256", "0" * 64], capsys)
    assert code == 2 and "--expect-sha256 is read by --wait" in err, err
    assert not cloud.vpc.requests


@pytest.mark.parametrize("other", ["--resume", "--verify-remote"])
def test_upload_abort_with_resume_or_verify_is_a_usage_error(cloud, tmp_path, capsys, other
                                                             ) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"x")
    code, _, err = run_cli(["upload", str(f), "cos://us-south/bucket1/f.bin", "--abort", other],
                           capsys)
    assert code == 2 and f"--abort discards the kept upload: it cannot go with {other}" in err


def test_classic_request_refuses_cross_region() -> None:
    with pytest.raises(CloudError, match="regional"):
        classic_image_request(name="n", uri="cos://eu/b1x/n.vhd-0.vhd", os_code="UBUNTU_22_64",
                              root_key_crn="crn:v1:bluemix:public:kms:us-south:a/ab:"
                                           "7c3d1b2a-0000-4000-8000-00000000abcd:key:k",
                              wdek="w", api_key="k")


def test_vpc_import_waits_and_compares_the_real_checksum(cloud, tmp_path, capsys) -> None:
    loc = uploaded(capsys, tmp_path, "vpc/one.qcow2")
    w = wdek_file(cloud, tmp_path, b"abc123", "vpc")
    code, out, err = run_cli(["import", "vpc", "--name", "one", "--file", loc, "--os",
                              "debian-12-amd64", "--root-key-crn", cloud.root_key_crn,
                              "--wdek-file", str(w), "--wait", "--api-url", cloud.vpc.url,
                              "--iam-url", cloud.iam_url, "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["status"] == "available" and r["checksum_match"] is True
    assert "image status: pending" in err and "image status: available" in err
    assert not cloud.vpc.refusals
    # a wrong expectation is reported, not hidden
    code, out, err = run_cli(["import", "vpc", "--name", "two", "--file", loc, "--os",
                              "debian-12-amd64", "--root-key-crn", cloud.root_key_crn,
                              "--wdek-file", str(w), "--wait", "--api-url", cloud.vpc.url,
                              "--iam-url", cloud.iam_url, "--expect-sha256", "0" * 64], capsys)
    assert code == 1 and "file.checksums.sha256 is" in err


def test_vpc_import_failed_shows_status_reasons(cloud, tmp_path, capsys) -> None:
    w = tmp_path / "wdek"
    w.write_text(base64.b64encode(b"not wrapped by this key at all").decode())
    loc = uploaded(capsys, tmp_path, "vpc/bad.qcow2", 1000)
    code, _, err = run_cli(["import", "vpc", "--name", "bad", "--file", loc, "--os",
                            "debian-12-amd64", "--root-key-crn", cloud.root_key_crn,
                            "--wdek-file", str(w), "--wait", "--api-url", cloud.vpc.url,
                            "--iam-url", cloud.iam_url], capsys)
    assert code == 1 and "failed to import: encrypted_data_key_invalid" in err


def test_classic_import_against_softlayer(cloud, tmp_path, capsys) -> None:
    loc = uploaded(capsys, tmp_path, "classic/img.vhd-0.vhd", 3000)
    w = wdek_file(cloud, tmp_path, DEK, "classic")
    code, out, err = run_cli(["import", "classic", "--name", "img", "--file", loc, "--os-code",
                              "UBUNTU_22_64", "--root-key-crn", cloud.root_key_crn,
                              "--wdek-file", str(w), "--api-url", f"{cloud.sl.url}/rest/v3.1",
                              "--iam-url", cloud.iam_url, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["id"] == 4000000 and not cloud.sl.refusals
    sent = cloud.sl.created[0]["_cfg"]
    assert sent["ibmApiKey"] == API_KEY and sent["uri"] == loc  # the real request carries it


def _classic_args(cloud, loc: str, w: Path, *extra: str, iam_url: str | None = None) -> list[str]:
    return ["import", "classic", "--name", "img", "--file", loc, "--os-code", "UBUNTU_22_64",
            "--root-key-crn", cloud.root_key_crn, "--wdek-file", str(w), "--api-url",
            f"{cloud.sl.url}/rest/v3.1", "--iam-url", iam_url or cloud.iam_url, *extra]


def test_classic_import_wait_polls_until_no_transaction(cloud, tmp_path, capsys) -> None:
    loc = uploaded(capsys, tmp_path, "classic/wait.vhd-0.vhd", 3000)
    w = wdek_file(cloud, tmp_path, DEK, "classic")
    code, out, err = run_cli(_classic_args(cloud, loc, w, "--wait", "--json"), capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["status"] == "ACTIVE" and r["waited"] is True and not cloud.sl.refusals
    assert "image template status: transaction CLOUD_IMAGE_IMPORT" in err
    assert "image template status: ACTIVE" in err
    assert cloud.sl.polls[r["id"]] == cloud.sl.IMPORT_POLLS + 1


def test_classic_import_wait_removed_and_timeout(cloud, tmp_path, capsys) -> None:
    loc = uploaded(capsys, tmp_path, "classic/gone.vhd-0.vhd", 3000)
    w = wdek_file(cloud, tmp_path, DEK, "classic")
    cloud.sl.removed.add(4000000)  # SoftLayer removes a template whose import failed
    code, _, err = run_cli(_classic_args(cloud, loc, w, "--wait"), capsys)
    assert code == 1 and "SoftLayer_Exception_ObjectNotFound" in err and "Traceback" not in err
    cloud.sl.stuck.add(4000001)
    code, _, err = run_cli(_classic_args(cloud, loc, w, "--wait", "--timeout", "1"), capsys)
    assert code == 1 and "still transaction CLOUD_IMAGE_IMPORT after 1 s" in err


@pytest.mark.parametrize("form", ["base", "base/", "token"])
def test_iam_url_takes_the_base_or_the_token_url(cloud, tmp_path, capsys, form) -> None:
    """As IBM's SDKs: https://iam.cloud.ibm.com (or private.iam...) gets /identity/token."""
    from lukspack.cloud.iam import token_url

    assert token_url("https://private.iam.cloud.ibm.com") == \
        "https://private.iam.cloud.ibm.com/identity/token"
    assert token_url("https://iam.cloud.ibm.com/identity/token") == \
        "https://iam.cloud.ibm.com/identity/token"
    url = {"base": cloud.iam.url, "base/": cloud.iam.url + "/", "token": cloud.iam_url}[form]
    loc = uploaded(capsys, tmp_path, f"classic/iam-{form.strip('/')}.vhd-0.vhd", 3000)
    w = wdek_file(cloud, tmp_path, DEK, "classic")
    code, _, err = run_cli(_classic_args(cloud, loc, w, iam_url=url), capsys)
    assert code == 0, err
    assert not cloud.iam.refusals


def test_import_job_from_python(cloud, tmp_path, capsys) -> None:
    """lukspack.api.imports.import_image: what `import vpc|classic` calls; its rules are typed
    errors with the CLI's exit code, its result is what --json prints."""
    from lukspack.api import exit_code
    from lukspack.api.imports import ImportRequest, import_image
    from lukspack.errors import UsageError

    loc = uploaded(capsys, tmp_path, "vpc/py.qcow2")
    w = wdek_file(cloud, tmp_path, b"abc123", "vpc")
    base = ("vpc", "py", loc, "debian-12-amd64", cloud.root_key_crn, str(w))
    for bad in ({"wait": True, "dry_run": True}, {"expect_sha256": "0" * 64},
                {"note": "classic only"}):
        with pytest.raises(UsageError) as e:
            ImportRequest(*base, **bad)  # type: ignore[arg-type]
        assert exit_code(e.value) == 2
    with pytest.raises(UsageError, match="--timeout is read by --wait"):
        ImportRequest("classic", *base[1:], timeout_s=60)
    seen: list[str] = []
    r = import_image(ImportRequest(*base, wait=True, api_url=cloud.vpc.url,
                                   iam_url=cloud.iam_url), on_status=seen.append)
    d = r.to_dict()
    assert d["status"] == "available" and d["checksum_match"] is True and seen[-1] == "available"
    assert d["name"] == "py" and r.request is None
    dry = import_image(ImportRequest(*base, dry_run=True, api_url=cloud.vpc.url))
    assert dry.image is None and dry.to_dict()["headers"]["authorization"] == "Bearer <redacted>"
