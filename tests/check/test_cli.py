"""The `check` and `boot-test` commands on bad input: one line on stderr, exit 1; usage errors 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lukspack.cli import main
from tests.check.guest_tree import base_tree, gpt_disk, make_ext4, write
from tests.helpers import cli_env, require


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lukspack", *args], capture_output=True, text=True,
                          env=cli_env())


def one_error_line(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lukspack: error: "), p.stderr
    return lines[0]


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    require("mkfs.ext4", "sfdisk")
    tree = base_tree(tmp_path / "tree", tmp_path)
    return gpt_disk(make_ext4(tree, tmp_path / "root.ext4", 16), tmp_path / "disk.img")


def test_check_passes_in_process(disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["check", str(disk), "--json"])
    assert e.value.code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["result"] == "PASS" and data["os"]["ID"] == "lukspacktest"


def test_check_fail_exit_1(tmp_path: Path) -> None:
    require("mkfs.ext4", "sfdisk")
    tree = base_tree(tmp_path / "tree", tmp_path)
    write(tree, "etc/cloud/cloud-init.disabled", "")
    disk = gpt_disk(make_ext4(tree, tmp_path / "root.ext4", 16), tmp_path / "disk.img")
    p = run("check", str(disk))
    line = one_error_line(p)
    assert "cloud-init enabled: /etc/cloud/cloud-init.disabled exists" in line
    assert "FAIL  cloud-init enabled" in p.stdout


def test_check_missing_file(tmp_path: Path) -> None:
    line = one_error_line(run("check", str(tmp_path / "nope.raw")))
    assert "nope.raw" in line


def test_check_not_a_disk(tmp_path: Path) -> None:
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"\x01" * 65536)
    p = run("check", str(junk))
    line = one_error_line(p)
    assert "root filesystem" in line


def test_check_bad_target_is_usage_error(disk: Path) -> None:
    p = run("check", str(disk), "--target", "mars")
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_boot_test_missing_file(tmp_path: Path) -> None:
    require("qemu-system-x86_64")
    assert "nope.qcow2" in one_error_line(run("boot-test", str(tmp_path / "nope.qcow2")))


def test_boot_test_luks_needs_a_key(tmp_path: Path) -> None:
    require("qemu-system-x86_64")
    img = tmp_path / "x.luks"
    img.write_bytes(b"LUKS\xba\xbe\x00\x01" + bytes(4096))
    assert "needs --key-file" in one_error_line(run("boot-test", str(img)))


def test_boot_test_bad_datasource_is_usage_error(tmp_path: Path) -> None:
    p = run("boot-test", str(tmp_path / "x.raw"), "--datasource", "ec2")
    assert p.returncode == 2 and "Traceback" not in p.stderr
