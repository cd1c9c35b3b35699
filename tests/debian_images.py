"""The Debian 12 images scripts/build-test-images.py builds (cached by the script's hash), for the
check and boot-test tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, require

BUILD_TIMEOUT = 1800
GOOD = "debian12-cloudinit.raw"


@pytest.fixture(scope="session")
def debian_images() -> Path:
    if os.geteuid() != 0:
        pytest.skip("building the Debian test images needs root (debootstrap and chroot)")
    require("debootstrap", "mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "sfdisk", "mformat", "syslinux")
    t = time.monotonic()
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "build-test-images.py")],
                       capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if p.returncode != 0:
        pytest.fail(f"scripts/build-test-images.py failed:\n{p.stderr[-3000:]}")
    out = Path(p.stdout.strip().splitlines()[-1])
    print(f"debian test images ready in {time.monotonic() - t:.0f} s: {out}", file=sys.stderr)
    return out


@pytest.fixture(scope="session")
def encrypted_images(debian_images: Path, tmp_path_factory: pytest.TempPathFactory,
                     session_keyfile: Path) -> dict[str, Path]:
    """The good image encrypted by `lukspack encrypt` to qcow2+LUKS ("qcow2"), LUKS RAW ("raw")
    and the vhd-util encrypted VHD ("vhd")."""
    from tests.helpers import FAST, cli_env

    out = tmp_path_factory.mktemp("encrypted")
    made = {}
    for name, fmt in (("good.qcow2", "qcow2"), ("good.luks", "raw"), ("good.vhd", "vhd")):
        subprocess.run([sys.executable, "-m", "lukspack", "encrypt", str(debian_images / GOOD),
                        str(out / name), "--key-file", str(session_keyfile), "--output-format", fmt,
                        "--no-verify", "--no-progress",
                        *([] if fmt == "vhd" else FAST)],  # the VHD has no key slots
                       check=True, env=cli_env(),
                       stdout=subprocess.DEVNULL)
        made[fmt] = out / name
    return made
