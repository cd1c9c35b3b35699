"""The check on Btrfs roots the real mkfs.btrfs writes (--rootdir, --subvol, --compress): the root
found in its subvolume as libguestfs finds it, fstab's subvol= resolved, subvolumes mounted,
and the kernel command line's rootflags= checked against the subvolume the root is in."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lukspack.check import run_check
from lukspack.check.report import CheckReport
from lukspack.images import open_image
from tests.check.guest_tree import KVER, base_tree, gpt_disk, write
from tests.helpers import require


@pytest.fixture(autouse=True)
def _tools() -> None:
    require("mkfs.btrfs")  # never skipped: scripts/test.sh installs it


def grub_cfg(flags: str) -> str:
    return f"menuentry 'Test' {{\n\tlinux /boot/vmlinuz-{KVER} root=LABEL=root ro {flags} console=ttyS0\n}}\n"


def btrfs_disk(tmp_path: Path, change: Callable[[Path], None] | None = None, subvol: str = "root",
               fstab_opts: str = "defaults,subvol=root", flags: str = "rootflags=subvol=root",
               mkfs_opts: tuple[str, ...] = ("-u", "rw:root", "-u", "rw:home")) -> Path:
    """A GPT disk whose partition 2 is a Btrfs with the base guest tree in subvolume `subvol`
    ("" for the top level) and an empty `home` beside it."""
    stage = tmp_path / "stage"
    root = stage / subvol if subvol else stage
    base_tree(root, tmp_path)
    (stage / "home/user").mkdir(parents=True, exist_ok=True)
    write(stage, "home/user/.profile", "PATH=/usr/bin\n")
    write(root, "etc/fstab", f"LABEL=root / btrfs {fstab_opts} 0 0\nLABEL=root /home btrfs subvol=home 0 0\n")
    write(root, "boot/grub/grub.cfg", grub_cfg(flags))
    if change is not None:
        change(root)
    fs = tmp_path / "root.btrfs"
    with open(fs, "wb") as f:
        f.truncate(128 << 20)
    subprocess.run(["mkfs.btrfs", "-q", "-f", "-L", "root", "--rootdir", str(stage), "--compress", "zstd",
                    *mkfs_opts, str(fs)], check=True, stdout=subprocess.DEVNULL)
    out = gpt_disk(fs, tmp_path / "disk.img")
    fs.unlink()
    return out


def check(disk: Path, target: str = "vpc") -> CheckReport:
    with open_image(str(disk)) as image:
        return run_check(image, target)


def finding(report: CheckReport, check_name: str, contains: str = "") -> tuple[str, str]:
    found = [f for f in report.findings if f.check == check_name and contains in f.evidence]
    assert found, "\n".join(report.lines())
    return found[0].status, found[0].evidence


def test_root_in_a_subvolume_passes(tmp_path: Path) -> None:
    report = check(btrfs_disk(tmp_path))
    assert not report.failed, "\n".join(report.lines())
    status, ev = finding(report, "root filesystem")
    assert status == "PASS" and ev.startswith("/dev/vda2 (Btrfs, UUID=") and "subvolume root (id " in ev
    assert finding(report, "/etc/fstab", "/ is")[0] == "PASS"
    assert finding(report, "/etc/fstab", "/home is")[0] == "PASS"
    status, ev = finding(report, "root subvolume")
    assert status == "PASS" and "rootflags= names the root's subvolume root" in ev
    # everything else is read out of the subvolume, compressed by mkfs.btrfs: the initramfs too
    assert finding(report, "operating system")[1].endswith("(Lukspack Test Linux 42)")
    assert finding(report, "virtio_blk (" + KVER + ")")[0] == "PASS"
    assert finding(report, "installed")[1].endswith("cloud-init 22.4.2-1+deb12u4")
    want = "/dev/vda2: default top-level subvolume (id 5); subvolumes: root (id 256), home (id"
    assert any(f.startswith(want) for f in report.facts), report.facts


def test_kernel_without_rootflags_fails(tmp_path: Path) -> None:
    # the kernel would mount the top level, which holds root/ and home/, not the system
    report = check(btrfs_disk(tmp_path, flags=""))
    assert [(f.area, f.check) for f in report.failures()] == [("boot", "root subvolume")]
    ev = report.failures()[0].evidence
    assert "it mounts the top level (id 5)" in ev and "add rootflags=subvol=root" in ev


def test_rootflags_naming_another_subvolume_fails(tmp_path: Path) -> None:
    report = check(btrfs_disk(tmp_path, flags="rootflags=subvol=home"))
    assert [(f.area, f.check) for f in report.failures()] == [("boot", "root subvolume")]
    assert "it mounts home (id" in report.failures()[0].evidence


def test_rootflags_by_subvolid_passes(tmp_path: Path) -> None:
    report = check(btrfs_disk(tmp_path, flags="rootflags=subvolid=256"))  # mkfs numbers from 256
    assert finding(report, "root subvolume")[0] == "PASS", "\n".join(report.lines())


def test_default_subvolume_needs_no_rootflags(tmp_path: Path) -> None:
    report = check(btrfs_disk(tmp_path, flags="", fstab_opts="defaults",
                              mkfs_opts=("-u", "default:root", "-u", "rw:home")))
    assert not report.failed, "\n".join(report.lines())
    assert "the root is the Btrfs default subvolume root" in finding(report, "root subvolume")[1]


def test_root_at_the_top_level(tmp_path: Path) -> None:
    report = check(btrfs_disk(tmp_path, subvol="", fstab_opts="defaults", flags="",
                              mkfs_opts=("-u", "rw:home")))
    assert not report.failed, "\n".join(report.lines())
    assert "top-level subvolume (id 5)" in finding(report, "root filesystem")[1]


def test_fstab_subvolume_missing_fails(tmp_path: Path) -> None:
    report = check(btrfs_disk(tmp_path, fstab_opts="subvol=@rootfs"))
    assert [(f.area, f.check) for f in report.failures()] == [("root", "/etc/fstab")]
    assert "subvol=@rootfs names no subvolume" in report.failures()[0].evidence


def test_fstab_root_naming_another_subvolume_fails(tmp_path: Path) -> None:
    report = check(btrfs_disk(tmp_path, fstab_opts="subvol=home"))
    failures = [(f.check, f.evidence) for f in report.failures()]
    assert failures and failures[0][0] == "/etc/fstab" and "not the root found" in failures[0][1]


def test_cloud_init_disabled_inside_the_subvolume(tmp_path: Path) -> None:
    report = check(btrfs_disk(tmp_path, lambda root: write(root, "etc/cloud/cloud-init.disabled", "")))
    assert [(f.area, f.check) for f in report.failures()] == [("cloud-init", "enabled")]


def test_damaged_btrfs_is_a_warning_not_a_traceback(tmp_path: Path) -> None:
    disk = btrfs_disk(tmp_path)
    with open(disk, "r+b") as f:  # the superblock of partition 2 (starts at 2 MiB)
        f.seek((2 << 20) + 0x10000 + 0x100)
        f.write(b"\xff" * 16)
    report = check(disk)
    assert finding(report, "filesystem")[0] == "WARN"
    assert "superblock checksum" in finding(report, "filesystem")[1]
    assert finding(report, "root filesystem")[0] == "FAIL"



def test_unreadable_root_tree_after_the_root_is_found_warns(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from lukspack.check.boot import check_root_subvolume
    from lukspack.check.btrfs import Btrfs, BtrfsError, BtrfsFS
    from lukspack.check.report import Report

    src = tmp_path / "src"
    (src / "root/etc").mkdir(parents=True)
    fs_img = tmp_path / "fs.img"
    with open(fs_img, "wb") as f:
        f.truncate(128 << 20)
    subprocess.run(["mkfs.btrfs", "-q", "-f", "--rootdir", str(src), "-u", "rw:root", str(fs_img)],
                   check=True, stdout=subprocess.DEVNULL)

    class Dev:
        def pread(self, offset: int, size: int) -> bytes:
            with open(fs_img, "rb") as f:
                f.seek(offset)
                return f.read(size)

    btrfs = Btrfs(Dev())
    root = BtrfsFS(None, btrfs, 256)

    def damaged() -> int:
        raise BtrfsError("Btrfs tree block at 30507008: checksum mismatch")

    monkeypatch.setattr(btrfs, "default_subvolume", damaged)
    report = Report()
    check_root_subvolume(root, [], report)
    assert [(f.status, f.check) for f in report.findings] == [("WARN", "root subvolume")]
    assert "checksum mismatch" in report.findings[0].evidence
