"""cloud-init's version from a real rpm database (rpm 4.18's SQLite backend, made by rpmbuild and
rpm --justdb in the test), as on RHEL 9 and Fedora, where there is no dpkg status file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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


def test_cloud_init_version_from_the_rpm_database(tmp_path: Path) -> None:
    db = rpm_database(tmp_path, [("bash", "5.1.8", "9.el9", 0), ("cloud-init", "23.4", "7.el9", 0)])

    def rhel(tree: Path) -> None:
        (tree / "var/lib/dpkg/status").unlink()
        (tree / "var/lib/rpm").mkdir(parents=True)
        shutil.copy(db, tree / "var/lib/rpm/rpmdb.sqlite")

    f = finding(check_tree(tmp_path, rhel), "cloud-init", "installed")[0]
    assert f.status == "PASS" and f.evidence == "/var/lib/rpm/rpmdb.sqlite: cloud-init 23.4-7.el9"


def test_an_old_cloud_init_rpm_fails_and_epoch_is_kept(tmp_path: Path) -> None:
    db = rpm_database(tmp_path, [("cloud-init", "0.7.5", "1", 2)])

    def old(tree: Path) -> None:
        (tree / "var/lib/dpkg/status").unlink()
        (tree / "usr/lib/sysimage/rpm").mkdir(parents=True)
        shutil.copy(db, tree / "usr/lib/sysimage/rpm/rpmdb.sqlite")

    f = finding(check_tree(tmp_path, old, target="classic"), "cloud-init", "installed")[0]
    assert f.status == "FAIL" and "cloud-init 2:0.7.5-1" in f.evidence and ">= 0.7.7" in f.evidence


def test_a_database_without_cloud_init_and_hostile_headers(tmp_path: Path) -> None:
    db = rpm_database(tmp_path, [("bash", "5.1.8", "9.el9", 0)])

    def no_ci(tree: Path) -> None:
        (tree / "var/lib/dpkg/status").unlink()
        (tree / "var/lib/rpm").mkdir(parents=True)
        shutil.copy(db, tree / "var/lib/rpm/rpmdb.sqlite")

    f = finding(check_tree(tmp_path, no_ci), "cloud-init", "installed")[0]
    assert f.status == "FAIL" and "rpm database" in f.evidence
    assert header_fields(b"") == {} and header_fields(b"\xff" * 8) == {}
    assert header_fields(b"\0\0\0\1\0\0\0\4" + b"\0\0\3\xe8\0\0\0\6\x7f\0\0\0\0\0\0\1abc") == {}
