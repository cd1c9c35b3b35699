"""`check` on the real Debian 12 images of scripts/build-test-images.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lukspack.check import run_check
from lukspack.check.report import CheckReport
from lukspack.cli import main
from lukspack.images import open_image
from tests.helpers import cli_env

pytestmark = pytest.mark.slow
GOOD, NO_CLOUD_INIT, XFS_LVM = "debian12-cloudinit.raw", "debian12-nocloudinit.raw", "debian12-xfs-lvm.raw"
BTRFS = "debian12-btrfs.raw"


def check(images: Path, name: str, target: str) -> CheckReport:
    with open_image(str(images / name)) as image:
        return run_check(image, target)


def evidence(report: CheckReport, check_name: str) -> tuple[str, str]:
    f = [f for f in report.findings if f.check == check_name]
    assert f, "\n".join(report.lines())
    return f[0].status, f[0].evidence


@pytest.mark.parametrize("target", ["vpc", "classic"])
def test_good_image_passes(debian_images: Path, target: str) -> None:
    report = check(debian_images, GOOD, target)
    assert not report.failed, "\n".join(report.lines())
    assert evidence(report, "root filesystem")[1].startswith("/dev/vda1 (ext4, UUID=5f3c8a1e-")
    status, os_ev = evidence(report, "operating system")
    assert status == "PASS" and "ID=debian VERSION_ID=12" in os_ev and "-> /usr/lib/os-release" in os_ev
    assert evidence(report, "installed")[1].startswith("/var/lib/dpkg/status: cloud-init 22.4")
    assert evidence(report, "boot loader") == ("PASS", "MBR boot code: SYSLINUX mbr.bin")
    # the command line is read from the FAT boot partition's syslinux.cfg
    status, serial = evidence(report, "serial console")
    assert status == "PASS" and serial.startswith("/dev/vda2:/syslinux.cfg: root=UUID=5f3c8a1e-")
    drivers = ("virtio_blk", "virtio_pci") if target == "vpc" else ("xen-blkfront", "xen-netfront")
    for d in drivers:
        status, ev = [(f.status, f.evidence) for f in report.findings if f.check.startswith(d)][0]
        assert status == "PASS" and f"/{d}.ko" in ev
    # the budget on a 2 GiB image: 0.2 s wall here when the machine is idle; CPU time,
    # since the two cores are shared and wall time under load says little
    assert report.cpu_seconds < 2.0
    assert report.bytes_read < report.virtual_size // 50  # reads what it needs, not the disk


def test_no_cloud_init_fails_naming_it(debian_images: Path) -> None:
    report = check(debian_images, NO_CLOUD_INIT, "vpc")
    assert report.failed
    assert [(f.area, f.check) for f in report.failures()] == [("cloud-init", "installed")]
    assert "cloud-init is not installed" in report.failures()[0].evidence
    # without cloud-init the network must come from the OS: ifupdown's DHCP stanza
    assert "iface ens3 dhcp" in evidence(report, "network configuration")[1]


def test_xfs_on_lvm_found_and_classic_refuses_it(debian_images: Path) -> None:
    vpc = check(debian_images, XFS_LVM, "vpc")
    assert not vpc.failed, "\n".join(vpc.lines())
    status, root = evidence(vpc, "root filesystem")
    assert root.startswith("/dev/mapper/vg0-root (XFS v5 (bigtime, nrext64), UUID=7a1b2c3d-")
    assert evidence(vpc, "LVM")[1].startswith("LV vg0/root on /dev/vda1: ")
    assert evidence(vpc, "/etc/fstab") == ("PASS", "/ is /dev/mapper/vg0-root -> /dev/mapper/vg0-root")
    classic = check(debian_images, XFS_LVM, "classic")
    assert classic.failed
    failed = {f.check: f.evidence for f in classic.failures()}
    assert "IBM Cloud classic does not take LVM on the boot volume" in failed["LVM"]
    assert "/dev/mapper/vg0-root" in failed["/boot"]


@pytest.mark.parametrize("target", ["vpc", "classic"])
def test_btrfs_root_in_a_subvolume_passes(debian_images: Path, target: str) -> None:
    """The Debian installer's Btrfs layout: / in @rootfs, /home in @home, zstd-compressed by
    mkfs.btrfs; the whole check runs inside the subvolume."""
    report = check(debian_images, BTRFS, target)
    assert not report.failed, "\n".join(report.lines())
    uuid = "3b9c2d4e-5f60-4a71-8b82-9c3d4e5f6a7b"
    assert evidence(report, "root filesystem")[1].startswith(
        f"/dev/vda1 (Btrfs, UUID={uuid}, subvolume @rootfs (id ")
    fstab = [f.evidence for f in report.findings if f.check == "/etc/fstab"]
    assert fstab == [f"/ is UUID={uuid} -> /dev/vda1 @rootfs",
                     f"/home is UUID={uuid} -> /dev/vda1 @home (btrfs)"]
    status, ev = evidence(report, "root subvolume")
    assert status == "PASS"
    assert ev.startswith("/dev/vda2:/syslinux.cfg: rootflags= names the root's subvolume @rootfs")
    assert evidence(report, "installed")[1].startswith("/var/lib/dpkg/status: cloud-init 22.4")
    assert "429 entries" in evidence(report, "initramfs")[1]  # 13 MB read out of Btrfs extents
    if target == "classic":
        assert evidence(report, "/boot") == ("PASS", "/ (with /boot) is on /dev/vda1, the first partition")
    assert report.cpu_seconds < 2.0 and report.bytes_read < report.virtual_size // 50


def test_cli_json(debian_images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["check", str(debian_images / GOOD), "--json"])
    assert e.value.code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["result"] == "PASS" and data["target"] == "vpc" and data["counts"]["FAIL"] == 0
    assert 0 < data["bytes_read"] < data["virtual_size"] // 50
    assert data["os"]["ID"] == "debian"


def test_cli_exit_code_and_one_line(debian_images: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "lukspack", "check", str(debian_images / NO_CLOUD_INIT)],
                       capture_output=True, text=True, env=cli_env())
    assert p.returncode == 1, p.stderr
    assert "FAIL  cloud-init installed" in p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lukspack: error: ") and "cloud-init" in lines[0]
    p = subprocess.run([sys.executable, "-m", "lukspack", "check", str(debian_images / GOOD),
                        "--target", "classic"], capture_output=True, text=True, env=cli_env())
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith("PASS: ")


@pytest.mark.parametrize("fmt", ["qcow2", "raw", "vhd"])
def test_check_encrypted_with_key_file(encrypted_images: dict[str, Path], session_keyfile: Path,
                                       debian_images: Path, fmt: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["check", str(encrypted_images[fmt]), "--key-file", str(session_keyfile), "--json"])
    assert e.value.code == 0
    data = json.loads(capsys.readouterr().out)
    plain = check(debian_images, GOOD, "vpc").to_dict()
    # the decrypting reader shows the same disk: the same findings, word for word
    assert data["findings"] == plain["findings"] and data["result"] == "PASS"


def test_check_encrypted_without_key_file(encrypted_images: dict[str, Path]) -> None:
    p = subprocess.run([sys.executable, "-m", "lukspack", "check", str(encrypted_images["qcow2"])],
                       capture_output=True, text=True, env=cli_env())
    assert p.returncode == 1 and "give its --key-file" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_encrypt_target_runs_the_check_first(debian_images: Path, tmp_path: Path,
                                             session_keyfile: Path) -> None:
    """`encrypt --target` checks the source before writing: the good image is encrypted to the
    target's format with the check's counts in the summary; the one without cloud-init stops
    with one line and no output, unless --skip-check."""
    import json

    from tests.helpers import FAST, InProcessCli, leftovers

    cli = InProcessCli(tmp_path)
    s = json.loads(cli("encrypt", debian_images / "debian12-cloudinit.raw", "good.img",
                       "--key-file", session_keyfile, "--target", "vpc", "--json", "--no-digest",
                       "--no-verify", *FAST).stdout)
    assert s["output_format"] == "qcow2" and s["check"]["FAIL"] == 0 and s["check"]["PASS"] > 10
    bad = debian_images / "debian12-nocloudinit.raw"
    err = cli.fails("encrypt", bad, "bad.vhd", "--key-file", session_keyfile, "--target",
                    "classic")  # the encrypted VHD has no key slots: no KDF option
    assert "check(s) failed for IBM Cloud classic" in err and "cloud-init" in err
    assert not (tmp_path / "bad.vhd").exists() and leftovers(tmp_path) == []
    cli("encrypt", bad, "bad.vhd", "--key-file", session_keyfile, "--target", "classic",
        "--skip-check", "--no-verify")
    assert (tmp_path / "bad.vhd").exists()
    assert "takes qcow2" in cli.fails("encrypt", bad, "x.vhd", "--key-file", session_keyfile,
                                      "--target", "vpc", *FAST, code=2)
