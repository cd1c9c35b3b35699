"""Bad manifests: each one line naming the row and the field, exit 1, nothing uploaded and no key
written; CSV and YAML read the same; the command line gives defaults, the manifest overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lukspack.fleet import manifest as mf
from tests.cloud.test_kms import run_cli
from tests.fleet.conftest import BUCKET, classic_row, defaults_for, vpc_row, write_manifest


class FakeCloud:  # the values a manifest names; nothing is contacted by these tests
    root_key_crn = ("crn:v1:bluemix:public:kms:us-south:a/0123456789abcdef0123456789abcdef:"
                    "7c3d1b2a-0000-4000-8000-00000000abcd:key:1f2e3d4c-0000-4000-8000-0000000000aa")
    iam_url = "http://127.0.0.1:9/identity/token"

    class kp:
        url = "http://127.0.0.1:9"

    class vpc:
        url = "http://127.0.0.1:9"

    class sl:
        url = "http://127.0.0.1:9"


C = FakeCloud()


def good_rows(src: Path) -> list[dict]:
    return [vpc_row(C, src, "web-1"), classic_row(C, src, "db-1", format="raw")]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    p = tmp_path / "disk.raw"
    p.write_bytes(b"\0" * (1 << 20))
    return p


def test_good_manifest_merges_defaults(tmp_path, src) -> None:
    m = mf.load(str(write_manifest(tmp_path / "f.yaml", good_rows(src), defaults_for(C))),
                {"concurrency": 2, "part_size": 64})
    web, db = m.rows
    assert web["output"] == f"{BUCKET}/fleet/web-1.qcow2"
    assert db["output"] == f"{BUCKET}/fleet/db-1.raw"
    assert web["concurrency"] == 2  # command line, no manifest value
    assert web["part_size"] == 5  # the manifest's defaults beat the command line
    assert mf.key_path(web) == str(tmp_path / "keys" / "web-1.key")


def test_csv_reads_like_yaml(tmp_path, src) -> None:
    d = defaults_for(C)
    rows = good_rows(src)
    fields = sorted({k for r in rows for k in r} | set(d))
    lines = [",".join(fields), ",".join(["defaults" if f == "name" else str(d.get(f, ""))
                                         for f in fields])]
    for r in rows:
        lines.append(",".join(str(r.get(f, "")) for f in fields))
    csv_path = tmp_path / "f.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    a = mf.load(str(csv_path))
    b = mf.load(str(write_manifest(tmp_path / "f.yaml", rows, d)))
    assert [r.values for r in a.rows] == [r.values for r in b.rows]
    assert a.rows[1].line == 4


@pytest.mark.parametrize("change,where,message", [
    (lambda r: r[0].update(colour="blue"), "row 0 (web-1), field 'colour'", "unknown field"),
    (lambda r: r[1].pop("source"), "row 1 (db-1), field 'source'", "missing"),
    (lambda r: r[1].update(output=BUCKET + "/fleet/web-1.qcow2", format="raw"),
     "row 1 (db-1), field 'output'", "is also row 0's output"),
    (lambda r: r[0].update(name="Web_1"), "row 0 (Web_1), field 'name'", "lowercase letters"),
    (lambda r: r[0].update(name="ibm-web"), "row 0 (ibm-web), field 'name'", "reserved"),
    (lambda r: r[1].update(name="web-1", target="vpc", os="debian-12-amd64", format=None),
     "row 1 (web-1), field 'name'", "is also row 0's vpc image name"),
    (lambda r: r[0].update(target="powervs"), "row 0 (web-1), field 'target'",
     "must be vpc or classic"),
    (lambda r: r[0].update(format="vhd"), "row 0 (web-1), field 'format'",
     "vpc imports qcow2, not 'vhd'"),
    (lambda r: r[1].update(format="qcow2"), "row 1 (db-1), field 'format'",
     "classic imports vhd or raw"),
    (lambda r: r[1].update(skip_check="maybe"), "row 1 (db-1), field 'skip_check'",
     "is not true or false"),
    (lambda r: r[1].update(os="ubuntu"), "row 1 (db-1), field 'os'",
     "operating system reference code"),
    (lambda r: r[1].update(format="vhd", output=BUCKET + "/db-1.vhd"),
     "row 1 (db-1), field 'output'", "classic wants a VHD object named like NAME.vhd-0.vhd"),
    (lambda r: r[0].update(output="cos://Nowhere/b/x.qcow2"), "row 0 (web-1), field 'output'",
     "is not an IBM Cloud region"),
    (lambda r: r[0].update(part_size=2), "row 0 (web-1), field 'part_size'",
     "must be at least 5"),
])
def test_bad_manifest_one_line(tmp_path, src, capsys, change, where, message) -> None:
    rows = good_rows(src)
    change(rows)
    path = write_manifest(tmp_path / "f.yaml", rows, defaults_for(C))
    for cmd in ("plan", "run"):
        code, out, err = run_cli(["fleet", cmd, str(path)], capsys)
        assert code == 1 and out == "", err
        assert err.count("\n") == 1 and err.startswith(f"lukspack: error: {path}: {where}: "), err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "keys").exists() and not (tmp_path / "f.yaml.state").exists()


def test_missing_required_can_come_from_the_command_line(tmp_path, src, capsys) -> None:
    d = defaults_for(C)
    crn = d.pop("root_key_crn")
    path = write_manifest(tmp_path / "f.yaml", good_rows(src), d)
    code, _, err = run_cli(["fleet", "status", str(path)], capsys)
    assert code == 1 and "row 0 (web-1), field 'root_key_crn': missing" in err
    code, out, err = run_cli(["fleet", "status", str(path), "--root-key-crn", crn, "--json"],
                             capsys)
    assert code == 0, err
    r = json.loads(out)
    assert [i["status"] for i in r["images"]] == ["pending", "pending"] and not r["all_done"]


def test_defaults_unknown_field_and_not_yaml(tmp_path, src, capsys) -> None:
    path = write_manifest(tmp_path / "f.yaml", good_rows(src), {**defaults_for(C), "colur": 1})
    code, _, err = run_cli(["fleet", "plan", str(path)], capsys)
    assert code == 1 and f"{path}: defaults, field 'colur': unknown field" in err
    bad = tmp_path / "g.yaml"
    bad.write_text("images: [\n")
    code, _, err = run_cli(["fleet", "plan", str(bad)], capsys)
    assert code == 1 and "not valid YAML" in err and err.count("\n") == 1
