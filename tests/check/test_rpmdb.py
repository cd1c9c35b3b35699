"""cloud-init's version from a real rpm database (rpm 4.18's SQLite backend, made by rpmbuild and
rpm --justdb in the test), as on RHEL 9 and Fedora, where there is no dpkg status file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lukspack.check.report import Finding
from lukspack.check.rpmdb import header_fields
from tests.check.test_edge_cases import check_tree, finding

SPEC = """Name: {name}
Version: {version}
Release: {release}
Epoch: {epoch}
Summary: lukspack test package
License: ASL 2.0
BuildArch: noarch
%description
lukspack test package
%files
"""


def rpm_database(work: Path, packages: list[tuple[str, str, str, int]]) -> Path:
    """rpmdb.sqlite holding the packages (name, version, release, epoch), made by the real rpm."""
    for tool in ("rpm", "rpmbuild"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is required (scripts/test.sh installs the rpm package)")
    db = work / "db"
    db.mkdir()
    sqlite = ["--define", "_db_backend sqlite", "--dbpath", str(db)]
    subprocess.run(["rpm", *sqlite, "--initdb"], check=True, capture_output=True)
    for name, version, release, epoch in packages:
        top = work / f"build-{name}"
        (top / "SPECS").mkdir(parents=True)
        spec = top / "SPECS" / f"{name}.spec"
        spec.write_text(SPEC.format(name=name, version=version, release=release, epoch=epoch))
        subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {top}", str(spec)], check=True,
                       capture_output=True)
        rpm = next((top / "RPMS" / "noarch").glob("*.rpm"))
        subprocess.run(["rpm", *sqlite, "-i", "--justdb", "--nodeps", str(rpm)], check=True,
                       capture_output=True)
    return db / "rpmdb.sqlite"


def installed(tmp_path: Path, db: Path, where: str, target: str = "vpc") -> Finding:
    """The check's "cloud-init installed" finding for a guest with no dpkg status and db at where."""
    def rpm_guest(tree: Path) -> None:
        (tree / "var/lib/dpkg/status").unlink()
        (tree / where).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(db, tree / where)

    return finding(check_tree(tmp_path, rpm_guest, target=target), "cloud-init", "installed")[0]


def test_cloud_init_version_from_the_rpm_database(tmp_path: Path) -> None:
    db = rpm_database(tmp_path, [("bash", "5.1.8", "9.el9", 0), ("cloud-init", "23.4", "7.el9", 0)])
    f = installed(tmp_path, db, "var/lib/rpm/rpmdb.sqlite")
    assert f.status == "PASS" and f.evidence == "/var/lib/rpm/rpmdb.sqlite: cloud-init 23.4-7.el9"


def test_an_old_cloud_init_rpm_fails_and_epoch_is_kept(tmp_path: Path) -> None:
    db = rpm_database(tmp_path, [("cloud-init", "0.7.5", "1", 2)])
    f = installed(tmp_path, db, "usr/lib/sysimage/rpm/rpmdb.sqlite", target="classic")
    assert f.status == "FAIL" and "cloud-init 2:0.7.5-1" in f.evidence and ">= 0.7.7" in f.evidence


def test_a_database_without_cloud_init_and_hostile_headers(tmp_path: Path) -> None:
    db = rpm_database(tmp_path, [("bash", "5.1.8", "9.el9", 0)])
    f = installed(tmp_path, db, "var/lib/rpm/rpmdb.sqlite")
    assert f.status == "FAIL" and "rpm database" in f.evidence
    assert header_fields(b"") == {} and header_fields(b"\xff" * 8) == {}
    assert header_fields(b"\0\0\0\1\0\0\0\4" + b"\0\0\3\xe8\0\0\0\6\x7f\0\0\0\0\0\0\1abc") == {}


def berkeley_db(work: Path, sqlite_db: Path, records: int, byte_order: str) -> Path:
    """The RHEL 7/8 form of the same database: a Berkeley DB hash `Packages` (db5.3_load, with
    the header blobs the real rpm wrote, repeated to `records` so they span many buckets and
    overflow pages), which the real rpm's own bdb_ro backend must list in full."""
    import sqlite3
    import struct

    if shutil.which("db5.3_load") is None:
        pytest.fail("db5.3_load is required (scripts/test.sh installs db5.3-util)")
    rows = sqlite3.connect(sqlite_db).execute("SELECT blob FROM Packages ORDER BY hnum")
    blobs = [bytes(b) for (b,) in rows]
    pack = "<I" if byte_order == "1234" else ">I"  # rpm keys records by the host's u32
    lines = ["VERSION=3", "format=bytevalue", "type=hash", "db_pagesize=4096", f"db_lorder={byte_order}",
             "HEADER=END"]
    for n in range(1, records + 1):
        lines += [" " + struct.pack(pack, n).hex(), " " + blobs[(n - 1) % len(blobs)].hex()]
    lines.append("DATA=END")
    out = work / "bdb"
    out.mkdir()
    subprocess.run(["db5.3_load", str(out / "Packages")], input=("\n".join(lines) + "\n").encode(),
                   check=True)
    listed = subprocess.run(["rpm", "--define", "_db_backend bdb_ro", "--dbpath", str(out), "-qa",
                             "--qf", "%{NAME} %{VERSION}-%{RELEASE}\n"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == records and "cloud-init 22.1-5.el8" in listed.stdout
    return out / "Packages"


@pytest.mark.parametrize("byte_order", ["1234", "4321"])
def test_cloud_init_version_from_a_berkeley_db_rpm_database(tmp_path: Path, byte_order: str) -> None:
    from lukspack.check.bdb import records

    sqlite_db = rpm_database(tmp_path, [("bash", "4.4.20", "4.el8", 0), ("cloud-init", "22.1", "5.el8", 0)])
    packages = berkeley_db(tmp_path, sqlite_db, 300, byte_order)
    got = list(records(packages.read_bytes()))
    assert len(got) == 300 and {header_fields(v)[1000] for _, v in got} == {"bash", "cloud-init"}
    f = installed(tmp_path, packages, "var/lib/rpm/Packages")
    assert f.status == "PASS" and f.evidence == "/var/lib/rpm/Packages: cloud-init 22.1-5.el8"


def test_damaged_berkeley_db_is_refused_cleanly(tmp_path: Path) -> None:
    import random

    from lukspack.check.bdb import BdbError, records

    sqlite_db = rpm_database(tmp_path, [("cloud-init", "22.1", "5.el8", 0)])
    good = berkeley_db(tmp_path, sqlite_db, 40, "1234").read_bytes()
    rng = random.Random(13)
    outcomes = {"read": 0, "refused": 0}
    for _ in range(400):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            page = rng.choice([0] + list(range(1, len(good) // 4096)))
            at = page * 4096 + rng.choice([8, 12, 16, 20, 22, 25, 26, 28, 32, 72, 96, rng.randrange(4096)])
            data[at] = rng.choice([0, 1, 3, 7, 0xFF, rng.randrange(256)])
        try:
            list(records(bytes(data)))
            outcomes["read"] += 1
        except BdbError:
            outcomes["refused"] += 1
    assert outcomes["read"] and outcomes["refused"], outcomes
    with pytest.raises(BdbError):
        list(records(good[:300]))
    with pytest.raises(BdbError, match="not a Berkeley DB hash"):
        list(records(b"\0" * 4096))
