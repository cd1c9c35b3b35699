"""run_check: every rule against one disk image, for IBM Cloud VPC or classic."""

from __future__ import annotations

import os
import time

from lukspack.check.blockio import DiskFile
from lukspack.check.boot import check_boot, check_root_subvolume, kernel_cmdlines
from lukspack.check.cloudinit import check_cloud_init
from lukspack.check.guest import Guest
from lukspack.check.inspection import Layout, discover, find_root, mount_fstab
from lukspack.check.kernel import check_kernels
from lukspack.check.network import check_network
from lukspack.check.os_release import check_os
from lukspack.check.report import CheckReport, Report
from lukspack.errors import LukspackError
from lukspack.images.base import DiskImage

TARGETS = ("vpc", "classic")
GB = 10**9  # IBM Cloud's image size limits are in GB
VPC_MIN, VPC_MAX, CLASSIC_MAX = 10 * GB, 250 * GB, 100 * GB


def check_limits(image: DiskImage, target: str, report: Report) -> None:
    size = image.virtual_size
    gb = f"{size / GB:.2f} GB ({size} bytes)"
    if target == "vpc":
        if size > VPC_MAX:
            report.add("FAIL", "limits", "size", f"virtual size {gb}: IBM Cloud VPC takes at most 250 GB")
        elif size < VPC_MIN:
            report.add("WARN", "limits", "size", f"virtual size {gb}: under 10 GB, IBM Cloud VPC rounds "
                       "the boot volume up to 10 GB")
        else:
            report.add("PASS", "limits", "size", f"virtual size {gb} (VPC: 10 to 250 GB)")
        name = os.path.basename(image.path)
        ext = name.rsplit(".", 1)[1] if "." in name else ""
        if ext and ext != ext.lower():
            report.add("FAIL", "limits", "file name", f"{name}: IBM Cloud VPC needs a lowercase extension")
    else:
        status = "FAIL" if size > CLASSIC_MAX else "PASS"
        report.add(status, "limits", "size", f"virtual size {gb} (classic: at most 100 GB)")


def check_classic_layout(guest: Guest, layout: Layout, report: Report) -> None:
    if layout.lvm_pv_partitions:
        report.add("FAIL", "limits", "LVM", "LVM2 PV on partition(s) " +
                   ", ".join(f"#{n}" for n in layout.lvm_pv_partitions) + " (LVs: " + ", ".join(layout.lvm)
                   + "): IBM Cloud classic does not take LVM on the boot volume")
    boot_fs = guest.mounts.get("/boot") or guest.mounts["/"]
    vol = boot_fs.vol
    where = "/boot" if "/boot" in guest.mounts else "/ (with /boot)"
    if vol.partition_number == 1:
        report.add("PASS", "limits", "/boot", f"{where} is on {vol.device}, the first partition")
    else:
        report.add("FAIL", "limits", "/boot", f"{where} is on {vol.device}: IBM Cloud classic needs /boot "
                   "on the first partition")


class CheckFailed(LukspackError):
    """At least one finding is FAIL; .report holds them all."""

    def __init__(self, message: str, report: CheckReport) -> None:
        super().__init__(message)
        self.report = report


def raise_on_fail(report: CheckReport, name: str) -> CheckReport:
    """report, or CheckFailed naming the number of failures and the first one."""
    if report.failed:
        first = report.failures()[0]
        raise CheckFailed(f"{name}: {report.count('FAIL')} check(s) failed for IBM Cloud "
                          f"{report.target}, first: {first.area} {first.check}: {first.evidence}",
                          report)
    return report


def ensure_fit(image: DiskImage, target: str) -> CheckReport:
    """run_check, raising CheckFailed on any FAIL: what `encrypt --target` and `publish` call
    before they write or upload (unless --skip-check)."""
    return raise_on_fail(run_check(image, target), image.path)


def run_check(image: DiskImage, target: str = "vpc") -> CheckReport:
    """Check that image is a Linux with cloud-init IBM Cloud `target` can boot; reads only what
    the rules need, through image.read_into."""
    if target not in TARGETS:
        raise LukspackError(f"check: target {target!r} is not one of {', '.join(TARGETS)}")
    started, cpu = time.perf_counter(), time.process_time()
    disk = DiskFile(image)
    report = Report()
    info: dict[str, str] = {}
    check_limits(image, target, report)
    layout = discover(disk, report)
    found = find_root(layout, report)
    if found is not None:
        root_vol, root_fs = found
        guest = Guest(root_fs)
        mount_fstab(guest, root_vol, layout, report)
        info = check_os(guest, report)
        cmdlines = kernel_cmdlines(guest, layout)
        cloud = check_cloud_init(guest, report, target, cmdlines)
        check_kernels(guest, report, target)
        check_boot(guest, layout, report, cmdlines)
        check_root_subvolume(root_fs, cmdlines, report)
        check_network(guest, report, cloud)
        if target == "classic":
            check_classic_layout(guest, layout, report)
    os_info: dict[str, str] = {k: info[k] for k in ("ID", "VERSION_ID", "PRETTY_NAME", "source") if k in info}
    image.check_unchanged()  # a few KiB read: the reads' own 4 MiB checks may never have run
    return CheckReport(image.path, target, image.virtual_size, report.findings, report.facts,
                       disk.counter.bytes, disk.counter.reads, time.perf_counter() - started,
                       time.process_time() - cpu, os_info)
