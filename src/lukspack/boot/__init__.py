"""`lukspack boot-test`: boot an image (plain, LUKS RAW, qcow2+LUKS) under QEMU with a NoCloud or
ConfigDrive seed and wait for cloud-init to print the seed's marker."""

from __future__ import annotations

from lukspack.boot.qemu import BootError, BootResult, Outcome, Watched, boot_test, image_kind
from lukspack.errors import BootTestFailed

__all__ = ["BootError", "BootResult", "BootTestFailed", "Outcome", "Watched", "boot_test",
           "image_kind"]
