"""`lukspack check`: prove a disk image is a Linux with cloud-init that IBM Cloud VPC or classic
can boot, without root, without mounting, reading only the blocks the rules need.

    from lukspack.check import run_check
    report = run_check(image, "vpc")      # image: any lukspack.images.base.DiskImage
    report.failed, report.to_dict(), report.lines()
    ensure_fit(image, "vpc")              # the same, raising CheckFailed (a LukspackError) on FAIL
"""

from __future__ import annotations

from lukspack.check.report import CheckReport, Finding
from lukspack.check.runner import TARGETS, CheckFailed, ensure_fit, raise_on_fail, run_check

__all__ = ["CheckFailed", "CheckReport", "Finding", "TARGETS", "ensure_fit", "raise_on_fail",
           "run_check"]
