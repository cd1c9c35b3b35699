"""The Debian 12 images scripts/build-test-images.py builds (cached by the script's hash), for the
check and boot-test tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT

BUILD_TIMEOUT = 1800


@pytest.fixture(scope="session")
def debian_images() -> Path:
    if os.geteuid() != 0:
        pytest.skip("building the Debian test images needs root (debootstrap and chroot)")
    for tool in ("debootstrap", "mkfs.ext4", "mkfs.xfs", "sfdisk", "mformat", "syslinux"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing (scripts/test.sh installs it)")
    t = time.monotonic()
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "build-test-images.py")],
                       capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if p.returncode != 0:
        pytest.fail(f"scripts/build-test-images.py failed:\n{p.stderr[-3000:]}")
    out = Path(p.stdout.strip().splitlines()[-1])
    print(f"debian test images ready in {time.monotonic() - t:.0f} s: {out}", file=sys.stderr)
    return out
