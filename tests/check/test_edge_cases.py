"""The check's rules on small real filesystems (mkfs.ext4 -d, mkfs.xfs -p) built from guest
trees that each break one thing."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lukspack.check import run_check
from lukspack.check.report import CheckReport
from lukspack.images import open_image
from tests.check.guest_tree import KVER, base_tree, gpt_disk, initramfs, link, make_ext4, make_xfs, write
from tests.helpers import require


@pytest.fixture(autouse=True)
def _tools() -> None:
    require("mkfs.ext4")  # never skipped: scripts/test.sh installs it


def check_tree(tmp_path: Path, change: Callable[[Path], None] | None = None, target: str = "vpc",
               fs: str = "ext4") -> CheckReport:
    tree = base_tree(tmp_path / "tree", tmp_path)
    if change is not None:
        change(tree)
    fs_image = tmp_path / f"root.{fs}"
    if fs == "ext4":
        make_ext4(tree, fs_image)
    else:
        make_xfs(tree, fs_image, tmp_path)
    out = gpt_disk(fs_image, tmp_path / "disk.img")
    fs_image.unlink()
    with open_image(str(out)) as image:
        return run_check(image, target)


def finding(report: CheckReport, area: str, check: str) -> list:
    found = [f for f in report.findings if f.area == area and f.check == check]
    assert found, f"no {area}/{check} finding in {report.lines()}"
    return found


def test_base_tree_passes_vpc(tmp_path: Path) -> None:
    report = check_tree(tmp_path)
    assert not report.failed, "\n".join(report.lines())
    os_f = finding(report, "os", "operating system")[0]
    # the image's os-release (a relative link), not the host's
    assert os_f.status == "PASS" and "ID=lukspacktest" in os_f.evidence
    assert "/etc/os-release -> /usr/lib/os-release" in os_f.evidence
    assert finding(report, "cloud-init", "installed")[0].evidence.endswith("cloud-init 22.4.2-1+deb12u4")
    assert finding(report, "cloud-init", "enabled")[0].status == "PASS"
    assert finding(report, "boot", "serial console")[0].status == "PASS"
    assert "EFI system partition #1" in finding(report, "boot", "boot loader")[0].evidence
    assert [f.status for f in report.findings if f.check.startswith("GPT")] == ["PASS", "PASS"]
    assert report.bytes_read < 4 << 20  # of a 35 MiB disk
    assert report.to_dict()["bytes_read"] == report.bytes_read


def test_xfs_root_passes_vpc(tmp_path: Path) -> None:
    require("mkfs.xfs")
    report = check_tree(tmp_path, fs="xfs")
    assert not report.failed, "\n".join(report.lines())
    assert "xfs" in finding(report, "root", "root filesystem")[0].evidence.lower()


def test_disabled_by_marker_file(tmp_path: Path) -> None:
    report = check_tree(tmp_path, lambda t: write(t, "etc/cloud/cloud-init.disabled", ""))
    f = finding(report, "cloud-init", "enabled")[0]
    assert f.status == "FAIL" and "/etc/cloud/cloud-init.disabled exists" in f.evidence
    assert report.failed


def test_disabled_on_kernel_command_line(tmp_path: Path) -> None:
    def change(t: Path) -> None:
        write(t, "etc/default/grub", 'GRUB_CMDLINE_LINUX="console=ttyS0 cloud-init=disabled"\n')
    f = finding(check_tree(tmp_path, change), "cloud-init", "enabled")[0]
    assert f.status == "FAIL"
    assert "/etc/default/grub: kernel command line has cloud-init=disabled" in f.evidence


def test_masked_unit(tmp_path: Path) -> None:
    f = finding(check_tree(tmp_path, lambda t: link(t, "etc/systemd/system/cloud-init.service",
                                                     "/dev/null")), "cloud-init", "enabled")[0]
    assert f.status == "FAIL" and "cloud-init.service -> /dev/null (masked)" in f.evidence


def test_unit_not_enabled(tmp_path: Path) -> None:
    def change(t: Path) -> None:
        (t / "etc/systemd/system/cloud-init.target.wants/cloud-final.service").unlink()
    f = finding(check_tree(tmp_path, change), "cloud-init", "enabled")[0]
    assert f.status == "FAIL" and "cloud-final.service not in" in f.evidence


def test_datasource_list_without_nocloud(tmp_path: Path) -> None:
    def change(t: Path) -> None:
        write(t, "etc/cloud/cloud.cfg.d/10_ok.cfg", "datasource_list: [ NoCloud, None ]\n")
        write(t, "etc/cloud/cloud.cfg.d/99_ec2.cfg", "datasource_list: [ ConfigDrive, Ec2 ]\n")
    vpc = finding(check_tree(tmp_path, change), "cloud-init", "datasource_list")[0]
    assert vpc.status == "FAIL" and "99_ec2.cfg" in vpc.evidence and "no NoCloud" in vpc.evidence
    shutil.rmtree(tmp_path / "tree")
    classic = finding(check_tree(tmp_path, change, target="classic"), "cloud-init", "datasource_list")
    assert classic[0].status == "PASS"


def test_datasource_list_nocloud_only_passes(tmp_path: Path) -> None:
    report = check_tree(tmp_path, lambda t: write(t, "etc/cloud/cloud.cfg.d/90.cfg",
                                                  "datasource_list: [ NoCloud, None ]\n"))
    assert finding(report, "cloud-init", "datasource_list")[0].status == "PASS"
    assert not report.failed


def test_multi_line_datasource_list(tmp_path: Path) -> None:
    report = check_tree(tmp_path, lambda t: write(t, "etc/cloud/cloud.cfg.d/90.cfg",
                                                  "datasource_list:\n  - NoCloud\n  - None\n"))
    statuses = {f.status: f.evidence for f in finding(report, "cloud-init", "datasource_list")}
    assert "multi-line list" in statuses["WARN"] and "90.cfg" in statuses["WARN"]


def test_scripts_vendor_missing(tmp_path: Path) -> None:
    f = finding(check_tree(tmp_path, lambda t: write(t, "etc/cloud/cloud.cfg",
                                                     "cloud_final_modules:\n - scripts-user\n")),
                "cloud-init", "cloud_final_modules")[0]
    assert f.status == "FAIL" and "scripts-vendor missing" in f.evidence


def test_no_cloud_init(tmp_path: Path) -> None:
    report = check_tree(tmp_path, lambda t: write(t, "var/lib/dpkg/status",
                                                  "Package: base-files\nStatus: install ok installed\n"))
    f = finding(report, "cloud-init", "installed")[0]
    assert f.status == "FAIL" and "not installed" in f.evidence


def test_cloud_init_too_old_for_vpc(tmp_path: Path) -> None:
    def change(t: Path) -> None:
        (t / "var/lib/dpkg/status").unlink()
        write(t, "usr/lib/python3.6/site-packages/cloudinit/version.py", '__VERSION__ = "0.7.8"\n')
    vpc = finding(check_tree(tmp_path, change), "cloud-init", "installed")[0]
    assert vpc.status == "FAIL" and "0.7.8" in vpc.evidence and ">= 0.7.9" in vpc.evidence
    shutil.rmtree(tmp_path / "tree")
    assert finding(check_tree(tmp_path, change, "classic"), "cloud-init", "installed")[0].status == "PASS"


def test_no_os_release(tmp_path: Path) -> None:
    def change(t: Path) -> None:
        (t / "etc/os-release").unlink()
        (t / "usr/lib/os-release").unlink()
    f = finding(check_tree(tmp_path, change), "os", "operating system")[0]
    assert f.status == "FAIL"


def test_os_release_falls_back_to_usr_lib(tmp_path: Path) -> None:
    f = finding(check_tree(tmp_path, lambda t: (t / "etc/os-release").unlink()), "os",
                "operating system")[0]
    assert f.status == "PASS" and f.evidence.startswith("/usr/lib/os-release:")


def test_os_release_absolute_link_resolves_in_the_image(tmp_path: Path) -> None:
    # the host has its own /usr/lib/os-release: an absolute link must read the image's
    f = finding(check_tree(tmp_path, lambda t: link(t, "etc/os-release", "/usr/lib/os-release")),
                "os", "operating system")[0]
    assert f.status == "PASS" and "ID=lukspacktest" in f.evidence


def test_os_release_dangling_link(tmp_path: Path) -> None:
    def change(t: Path) -> None:
        link(t, "etc/os-release", "/usr/lib/os-release.gone")
        (t / "usr/lib/os-release").unlink()
    f = finding(check_tree(tmp_path, change), "os", "operating system")[0]
    assert f.status == "FAIL" and "/usr/lib/os-release.gone" in f.evidence


def test_os_release_link_loop(tmp_path: Path) -> None:
    def change(t: Path) -> None:
        link(t, "etc/os-release", "os-release2")
        link(t, "etc/os-release2", "/etc/os-release")
        (t / "usr/lib/os-release").unlink()
    assert finding(check_tree(tmp_path, change), "os", "operating system")[0].status == "FAIL"


def test_not_a_root_filesystem(tmp_path: Path) -> None:
    report = check_tree(tmp_path, lambda t: (t / "bin").unlink())
    assert finding(report, "root", "root filesystem")[0].status == "FAIL"


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd", "lz4"])
def test_initramfs_compressions_after_early_microcode(tmp_path: Path, compression: str) -> None:
    require(compression)
    data = initramfs(tmp_path, compression, microcode=True)
    report = check_tree(tmp_path, lambda t: write(t, f"boot/initrd.img-{KVER}", data))
    f = finding(report, "kernel", "initramfs")[0]
    assert f.status == "PASS" and f"cpio + {compression} cpio" in f.evidence
    assert finding(report, "kernel", f"virtio_blk ({KVER})")[0].status == "PASS"


def test_initramfs_without_virtio(tmp_path: Path) -> None:
    data = initramfs(tmp_path, "gzip", modules=("virtio_pci",))
    report = check_tree(tmp_path, lambda t: write(t, f"boot/initrd.img-{KVER}", data))
    f = finding(report, "kernel", f"virtio_blk ({KVER})")[0]
    assert f.status == "FAIL" and "not built in" in f.evidence
    assert finding(report, "kernel", f"virtio_pci ({KVER})")[0].status == "PASS"


def test_virtio_built_in(tmp_path: Path) -> None:
    data = initramfs(tmp_path, "gzip", modules=())
    def change(t: Path) -> None:
        write(t, f"boot/initrd.img-{KVER}", data)
        write(t, f"boot/config-{KVER}", "CONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO_PCI=y\n")
    f = finding(check_tree(tmp_path, change), "kernel", f"virtio_blk ({KVER})")[0]
    assert f.status == "PASS" and "CONFIG_VIRTIO_BLK=y" in f.evidence


def test_classic_needs_xen_front_ends(tmp_path: Path) -> None:
    report = check_tree(tmp_path, target="classic")
    f = finding(report, "kernel", f"xen-blkfront ({KVER})")[0]
    assert f.status == "FAIL"


def test_no_kernel(tmp_path: Path) -> None:
    f = finding(check_tree(tmp_path, lambda t: shutil.rmtree(t / "boot")), "kernel", "kernels")[0]
    assert f.status == "FAIL" and "vmlinuz" in f.evidence


def test_no_console_ttys0_warns(tmp_path: Path) -> None:
    report = check_tree(tmp_path, lambda t: write(
        t, "boot/grub/grub.cfg", f"\tlinux /boot/vmlinuz-{KVER} root=LABEL=root ro quiet\n"))
    assert finding(report, "boot", "serial console")[0].status == "WARN"


def test_fstab_root_unresolved(tmp_path: Path) -> None:
    f = finding(check_tree(tmp_path, lambda t: write(t, "etc/fstab", "UUID=0000-dead / ext4 defaults 0 1\n")),
                "root", "/etc/fstab")[0]
    assert f.status == "FAIL" and "UUID=0000-dead names no volume" in f.evidence


def test_network_disabled_without_dhcp(tmp_path: Path) -> None:
    report = check_tree(tmp_path, lambda t: write(t, "etc/cloud/cloud.cfg.d/99-net.cfg",
                                                  "network: {config: disabled}\n"))
    f = finding(report, "network", "network configuration")[0]
    assert f.status == "FAIL" and "config: disabled" in f.evidence


def test_initramfs_garbage(tmp_path: Path) -> None:
    report = check_tree(tmp_path, lambda t: write(t, f"boot/initrd.img-{KVER}", b"\x1f\x8b" + b"\x01" * 64))
    f = finding(report, "kernel", "initramfs")[0]
    assert f.status == "FAIL" and "cannot decompress" in f.evidence


@pytest.mark.parametrize("seed", range(4))
def test_damaged_filesystem_gives_a_report(tmp_path: Path, seed: int) -> None:
    """Random damage after the superblock: findings, never an exception."""
    import random

    tree = base_tree(tmp_path / "tree", tmp_path)
    fs_image = make_ext4(tree, tmp_path / "root.ext4", 16)
    rng = random.Random(seed)
    with open(fs_image, "r+b") as f:
        for _ in range(200):
            f.seek(rng.randrange(4096, 4 << 20))
            f.write(rng.randbytes(rng.randrange(1, 512)))
    disk = gpt_disk(fs_image, tmp_path / "disk.img")
    with open_image(str(disk)) as image:
        report = run_check(image, "vpc")
    assert report.findings and report.bytes_read > 0


BOOT_UUID = "0b007000-1111-4222-8333-444455556666"


def test_separate_boot_partition_from_fstab(tmp_path: Path) -> None:
    """The RHEL layout: /boot on partition 1, named in /etc/fstab by UUID; kernels and the boot
    configuration are read from there."""
    import subprocess

    from tests.check.guest_tree import gpt_disk_parts

    tree = base_tree(tmp_path / "tree", tmp_path)
    boot = tmp_path / "boot-tree"
    shutil.move(tree / "boot", boot)
    (tree / "boot").mkdir()
    write(tree, "etc/fstab", f"LABEL=root / ext4 defaults 0 1\nUUID={BOOT_UUID} /boot ext4 defaults 0 2\n")
    boot_fs = tmp_path / "boot.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", BOOT_UUID, "-d", str(boot), str(boot_fs), "16M"],
                   check=True)
    root_fs = make_ext4(tree, tmp_path / "root.ext4")
    disk = gpt_disk_parts([boot_fs, root_fs], tmp_path / "disk.img")
    with open_image(str(disk)) as image:
        report = run_check(image, "classic")
    mounts = [f.evidence for f in report.findings if f.check == "/etc/fstab"]
    assert f"/boot is UUID={BOOT_UUID} -> /dev/vda1 (ext4)" in mounts
    assert finding(report, "kernel", "kernels")[0].evidence == f"/boot: vmlinuz-{KVER}"
    assert finding(report, "limits", "/boot")[0].status == "PASS"
    assert "/boot is on /dev/vda1" in finding(report, "limits", "/boot")[0].evidence


def test_size_limits(tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        f.truncate(251 * 10**9)  # sparse: nothing is written
    with open_image(str(big)) as image:
        vpc, classic = run_check(image, "vpc"), run_check(image, "classic")
    assert finding(vpc, "limits", "size")[0].status == "FAIL"
    assert "at most 250 GB" in finding(vpc, "limits", "size")[0].evidence
    assert finding(classic, "limits", "size")[0].status == "FAIL"
    assert vpc.bytes_read < 1 << 20


def test_uppercase_extension_fails_for_vpc(tmp_path: Path) -> None:
    report = check_tree(tmp_path)
    assert not report.failed
    upper = tmp_path / "DISK.IMG"
    (tmp_path / "disk.img").rename(upper)
    with open_image(str(upper)) as image:
        f = finding(run_check(image, "vpc"), "limits", "file name")[0]
    assert f.status == "FAIL" and "DISK.IMG" in f.evidence


def test_ensure_fit_raises_check_failed(tmp_path: Path) -> None:
    from lukspack.check import CheckFailed, ensure_fit
    from lukspack.errors import LukspackError

    report = check_tree(tmp_path, lambda t: write(t, "etc/cloud/cloud-init.disabled", ""))
    assert report.failed
    with open_image(report.image) as image, pytest.raises(CheckFailed) as e:
        ensure_fit(image, "vpc")
    assert isinstance(e.value, LukspackError) and e.value.report.failed
    assert "1 check(s) failed for IBM Cloud vpc, first: cloud-init enabled" in str(e.value)
    shutil.rmtree(tmp_path / "tree")
    passing = check_tree(tmp_path)
    with open_image(passing.image) as image:
        assert not ensure_fit(image, "vpc").failed


def _cloud_init_24_3(t: Path, enable_main: bool = True) -> None:
    """cloud-init >= 24.3: cloud-init.service became cloud-init-network.service, plus cloud-init-main."""
    wants = "etc/systemd/system/cloud-init.target.wants"
    (t / "usr/lib/systemd/system/cloud-init.service").unlink()
    (t / wants / "cloud-init.service").unlink()
    for unit in ("cloud-init-network.service", "cloud-init-main.service"):
        write(t, f"usr/lib/systemd/system/{unit}", "[Unit]\n")
        if enable_main or unit != "cloud-init-main.service":
            link(t, f"{wants}/{unit}", f"/lib/systemd/system/{unit}")


def test_cloud_init_24_3_unit_names(tmp_path: Path) -> None:
    f = finding(check_tree(tmp_path, _cloud_init_24_3), "cloud-init", "enabled")[0]
    assert f.status == "PASS" and "cloud-init-network.service" in f.evidence
    assert "cloud-init-main.service" in f.evidence
    shutil.rmtree(tmp_path / "tree")
    f = finding(check_tree(tmp_path, lambda t: _cloud_init_24_3(t, enable_main=False)), "cloud-init",
                "enabled")[0]
    assert f.status == "FAIL" and "cloud-init-main.service not in" in f.evidence
