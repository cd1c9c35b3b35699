"""`lukspack check`: prove a disk image is a Linux with cloud-init that IBM Cloud VPC or classic
can boot, without root, without mounting, reading only the blocks the rules need.

    from lukspack.check import run_check
    report = run_check(image, "vpc")      # image: any lukspack.images.base.DiskImage
    report.failed, report.to_dict(), report.lines()
"""

from __future__ import annotations

from lukspack.check.report import CheckReport, Finding
from lukspack.check.runner import TARGETS, run_check

__all__ = ["CheckReport", "Finding", "TARGETS", "run_check"]
