"""fleet plan / run / status against the real S3 server and the IBM stand-ins: mixed formats in,
both targets out; one import per image; a rerun imports nothing; one image's failure does not
stop the others; keys written mode 0600; the record beside each object."""

from __future__ import annotations

import base64
import json
import stat
import sys
from pathlib import Path

from lukspack.cloud.location import parse_cos
from lukspack.keys import key_for_target
from tests.cloud import s3server
from tests.cloud.test_kms import run_cli
from tests.fleet.conftest import (
    classic_row,
    defaults_for,
    mixed_rows,
    vpc_row,
    write_manifest,
)
from tests.helpers import cli_env, run


def imports_of(cloud) -> list[str]:
    return sorted([i["name"] for i in cloud.vpc.images.values()] +
                  [c["name"] for c in cloud.sl.created])


def download(s3, location: str, to: Path) -> Path:
    loc = parse_cos(location)
    to.write_bytes(s3.client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
    return to


def test_plan_checks_once_per_bucket_and_writes_nothing(cloud, s3, images, tmp_path,
                                                        capsys) -> None:
    path = write_manifest(tmp_path / "f.yaml", mixed_rows(cloud, images, "plan"),
                          defaults_for(cloud))
    code, out, err = run_cli(["fleet", "plan", str(path), "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert len(r["preflights"]) == 1 and r["preflights"][0]["rows"] == [0, 1, 2, 3]
    assert [i["input"] for i in r["images"]] == ["vmdk", "qcow2", "vhd", "raw"]
    assert [i["format"] for i in r["images"]] == ["qcow2", "qcow2", "vhd", "raw"]
    assert all(i["size"] >= 6 << 20 and i["status"] == "pending" for i in r["images"])
    assert err.count("checked: root key") == 1
    assert not (tmp_path / "keys").exists() and not imports_of(cloud)
    listing = s3.client().list_objects_v2(Bucket=s3server.BUCKET, Prefix="fleet/plan")
    assert listing.get("KeyCount", 0) == 0


def test_plan_refuses_unreachable_and_too_large_sources(cloud, images, tmp_path, capsys) -> None:
    big = tmp_path / "big.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", str(big), "101G"])
    rows = [vpc_row(cloud, images["raw"], "ok-1"), classic_row(cloud, big, "too-big")]
    path = write_manifest(tmp_path / "f.yaml", rows, defaults_for(cloud))
    code, _, err = run_cli(["fleet", "plan", str(path)], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "row 1 (too-big), field 'source': a 108.4 GB disk; classic imports images of at most " \
           "100 GB" in err
    rows[1] = vpc_row(cloud, big, "big-enough")  # VPC takes 250 GB
    rows.append(vpc_row(cloud, tmp_path / "gone.vmdk", "gone"))
    path = write_manifest(tmp_path / "f.yaml", rows, defaults_for(cloud))
    code, _, err = run_cli(["fleet", "plan", str(path)], capsys)
    assert code == 1 and "row 2 (gone), field 'source': " in err and "gone.vmdk" in err
    assert err.count("\n") == 1


def test_plan_preflight_failure_names_the_row(cloud, images, tmp_path, capsys) -> None:
    d = defaults_for(cloud)
    rows = [vpc_row(cloud, images["raw"], "a-1"),
            vpc_row(cloud, images["raw"], "a-2",
                    kms_instance="00000000-1111-4000-8000-000000000000")]
    path = write_manifest(tmp_path / "f.yaml", rows, d)
    code, _, err = run_cli(["fleet", "run", str(path)], capsys)
    last = err.splitlines()[-1]  # before it, the passing group's checks
    assert code == 1 and last.startswith(f"lukspack: error: {path}: row 1 (a-2): pre-flight: ")
    assert err.count("error") == 1 and "Traceback" not in err
    assert not imports_of(cloud) and not (tmp_path / "keys").exists()


def test_run_rerun_status(cloud, s3, images, tmp_path, capsys) -> None:
    path = write_manifest(tmp_path / "f.yaml", mixed_rows(cloud, images, "run"),
                          defaults_for(cloud))
    code, out, err = run_cli(["fleet", "run", str(path), "--jobs", "2", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["all_done"] and r["counts"] == {"done": 4}
    assert imports_of(cloud) == ["run-qcow2", "run-raw", "run-vhd", "run-vmdk"]
    assert not cloud.vpc.refusals and not cloud.sl.refusals
    assert "fleet: 4/4 done, 0 failed" in err and "run-vmdk: started (attempt 1)" in err
    for i in r["images"]:
        key = tmp_path / "keys" / f"{i['name']}.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        if i["format"] == "vhd":  # a new classic key: 64 bytes (AES-256-XTS), as publish's
            assert len(base64.b64decode(key.read_bytes(), validate=True)) == 64
        key_for_target({"qcow2": "vpc", "vhd": "classic", "raw": "luks"}[i["format"]],
                       key.read_bytes())  # each new key serves its row's target
        assert i["image_id"] is not None and i["seconds"] is not None
        rec = json.loads(s3.client().get_object(
            Bucket=s3server.BUCKET, Key=parse_cos(i["output"]).key + ".lukspack-fleet.json"
        )["Body"].read())
        assert rec["status"] == "done" and str(rec["image"]["id"]) == str(i["image_id"])
    # no key, nor the path of one, in the output, the state, the worker logs or the records
    keys = [(tmp_path / "keys" / f"{i['name']}.key").read_bytes() for i in r["images"]]
    seen = [out.encode(), err.encode()]
    seen += [p.read_bytes() for p in (tmp_path / "f.yaml.state").rglob("*") if p.is_file()
             and p.suffix in (".json", ".log")]
    for i in r["images"]:
        seen.append(s3.client().get_object(Bucket=s3server.BUCKET, Key=parse_cos(
            i["output"]).key + ".lukspack-fleet.json")["Body"].read())
    for k in keys:
        assert not any(k in blob for blob in seen)
    assert not any(b"/keys/" in blob for blob in seen[2:])  # state, logs, records
    # every object decrypts to its source, byte for byte
    for i, src in zip(r["images"], ("vmdk", "qcow2", "vhd", "raw"), strict=True):
        got = download(s3, i["output"], tmp_path / f"dl-{i['name']}")
        run([sys.executable, "-m", "lukspack", "verify", str(got), "--key-file",
             str(tmp_path / "keys" / f"{i['name']}.key"), "--source", str(images[src])],
            env=cli_env())
    # a rerun imports nothing and says so
    code, out, err = run_cli(["fleet", "run", str(path)], capsys)
    assert code == 0, err
    assert imports_of(cloud) == ["run-qcow2", "run-raw", "run-vhd", "run-vmdk"]
    assert err.count("(already done), skipped") == 4
    lines = out.splitlines()
    assert lines[0].split() == ["index", "image", "format", "size", "seconds", "status", "image",
                                "id"]
    assert len(lines) == 5 and all(" done " in line for line in lines[1:])
    code, out2, _ = run_cli(["fleet", "status", str(path)], capsys)
    assert code == 0 and out2 == out


def test_one_failure_does_not_stop_the_others(cloud, s3, images, tmp_path, capsys) -> None:
    rows = [vpc_row(cloud, images["qcow2"], "fine-1"),
            # the check (not skipped) refuses a disk with no operating system
            vpc_row(cloud, images["raw"], "no-os", skip_check=False),
            classic_row(cloud, images["vmdk"], "fine-2", format="raw")]
    path = write_manifest(tmp_path / "f.yaml", rows, defaults_for(cloud))
    code, out, err = run_cli(["fleet", "run", str(path), "--json"], capsys)
    assert code == 1
    r = json.loads(out)
    assert [i["status"] for i in r["images"]] == ["done", "failed", "done"]
    assert r["images"][1]["error"] and imports_of(cloud) == ["fine-1", "fine-2"]
    # as `publish --new-key-file`: the new key is written only once every check passed
    assert not (tmp_path / "keys" / "no-os.key").exists()
    assert (tmp_path / "keys" / "fine-1.key").exists()
    assert err.splitlines()[-1] == ("lukspack: error: 1 of 3 image(s) not done: no-os; run "
                                    "again to resume them")
    code, out, _ = run_cli(["fleet", "status", str(path)], capsys)
    assert code == 0 and "failed" in out and "no-os: " in out
