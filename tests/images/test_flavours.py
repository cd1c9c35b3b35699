"""Every qcow2, VMDK, VHDX and VDI flavour that qemu-img makes (tests/images/flavours.py) reads exactly
as qemu reads it and encrypts to what qemu decrypts, into qcow2+LUKS and into RAW LUKS; formats are
detected by content, not by name. Format-specific cases are in test_qcow2_read, test_vmdk_read,
test_vhdx_read and test_vdi_read."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import FAST, Cli, qemu_luks_decrypt, same_prefix
from tests.images.flavours import FLAVOURS, check_reader, copy, encrypt_and_compare, make


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_flavour_reads_and_encrypts_like_qemu(name: str, source: Path, tmp_path: Path, cli: Cli,
                                               keyfile: Path) -> None:
    image, ref = make(name, source, tmp_path)
    check_reader(name, image, ref, name.split("-")[0])
    encrypt_and_compare(cli, image, ref, keyfile, tmp_path)


@pytest.mark.parametrize("name", ["qcow2-compressed", "vmdk-streamOptimized-vmware-footer",
                                  "vhdx-fixed", "vdi-fixed"])
def test_to_raw_luks(name: str, source: Path, tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    image, ref = make(name, source, tmp_path)
    out = tmp_path / "out.img"
    cli("encrypt", str(image), str(out), "--key-file", str(keyfile), *FAST)
    plain = qemu_luks_decrypt(out, keyfile, tmp_path / "plain.raw")
    assert same_prefix(plain, ref)


@pytest.mark.parametrize("name, disguise", [("qcow2-v3", "disk.img"),
                                            ("vmdk-streamOptimized", "disk.raw"),
                                            ("vhdx-dynamic", "disk.vhd"),
                                            ("vdi-dynamic", "disk.img")])
def test_detected_by_content_not_name(name: str, disguise: str, source: Path, tmp_path: Path,
                                      cli: Cli, keyfile: Path) -> None:
    image, ref = make(name, source, tmp_path)
    encrypt_and_compare(cli, copy(image, tmp_path / disguise), ref, keyfile, tmp_path)
