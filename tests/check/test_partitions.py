"""Partition tables as sfdisk writes them, and damaged: both GPT headers' CRCs, MBR logical
partitions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lukspack.check import run_check
from lukspack.check.blockio import DiskFile
from lukspack.check.partitions import read_table
from lukspack.images import open_image
from tests.check.guest_tree import base_tree, build_script, gpt_disk, make_ext4
from tests.helpers import require


@pytest.fixture(autouse=True)
def _tools() -> None:
    require("sfdisk", "mkfs.ext4")  # never skipped: scripts/test.sh installs them


@pytest.fixture
def gpt(tmp_path: Path) -> Path:
    tree = base_tree(tmp_path / "tree", tmp_path)
    return gpt_disk(make_ext4(tree, tmp_path / "root.ext4", 16), tmp_path / "gpt.img")


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def gpt_notes(path: Path) -> dict[str, str]:
    with open_image(str(path)) as image:
        table = read_table(DiskFile(image))
    return {what: f"{status} {ev}" for status, what, ev in table.notes} | {"n": str(len(table.partitions))}


def test_gpt_as_sfdisk_writes_it(gpt: Path) -> None:
    notes = gpt_notes(gpt)
    assert notes["GPT primary header"].startswith("PASS LBA 1, header CRC 0x")
    assert notes["GPT backup header"].startswith("PASS LBA ")
    assert notes["n"] == "2"
    out = subprocess.run(["sfdisk", "--json", str(gpt)], capture_output=True, text=True, check=True).stdout
    with open_image(str(gpt)) as image:
        table = read_table(DiskFile(image))
    for p in table.partitions:
        assert p.uuid.upper() in out  # the unique GUIDs sfdisk reads back
    assert [p.type_name for p in table.partitions] == ["EFI System", "Linux filesystem"]


def test_gpt_backup_header_damaged(gpt: Path) -> None:
    flip(gpt, gpt.stat().st_size - 512 + 60)  # inside the backup header, not its CRC field
    notes = gpt_notes(gpt)
    assert notes["GPT primary header"].startswith("PASS")
    assert notes["GPT backup header"].startswith("FAIL header CRC at LBA ")
    with open_image(str(gpt)) as image:
        report = run_check(image, "vpc")
    assert report.failed and any(f.check == "GPT backup header" for f in report.failures())
    assert not [f for f in report.failures() if f.check != "GPT backup header"]


def test_gpt_primary_entries_damaged_reads_the_backup(gpt: Path) -> None:
    flip(gpt, 2 * 512 + 130)  # the second entry of the primary table (LBA 2)
    notes = gpt_notes(gpt)
    assert notes["GPT primary header"].startswith("FAIL partition entries CRC (LBA 2)")
    assert notes["GPT backup header"].startswith("PASS")
    assert notes["n"] == "2"  # from the backup table


def test_mbr_logical_partition(tmp_path: Path) -> None:
    tree = base_tree(tmp_path / "tree", tmp_path)
    fs = make_ext4(tree, tmp_path / "root.ext4", 16)
    disk = tmp_path / "mbr.img"
    with open(disk, "wb") as f:
        f.truncate(24 << 20)
    table = ("label: dos\nunit: sectors\nstart=2048, size=2048, type=83\n"
             "start=4096, size=40000, type=5\nstart=6144, size=32768, type=83\n")
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)],
                   input=table.encode(), check=True)
    build_script().copy_sparse(fs, disk, 6144 * 512)
    with open_image(str(disk)) as image:
        t = read_table(DiskFile(image))
        report = run_check(image, "vpc")
    assert [(p.number, p.start) for p in t.partitions] == [(1, 2048 * 512), (5, 6144 * 512)]
    root = [f for f in report.findings if f.check == "root filesystem"][0]
    assert root.status == "PASS" and root.evidence.startswith("/dev/vda5 ")


def test_no_partition_table_is_one_volume(tmp_path: Path) -> None:
    tree = base_tree(tmp_path / "tree", tmp_path)
    fs = make_ext4(tree, tmp_path / "root.ext4", 16)
    with open_image(str(fs)) as image:
        report = run_check(image, "vpc")
    root = [f for f in report.findings if f.check == "root filesystem"][0]
    assert root.status == "PASS" and root.evidence.startswith("/dev/vda ")
    assert [f.check for f in report.failures()] == ["boot loader"]
