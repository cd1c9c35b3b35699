"""VMDK inputs (monolithicSparse, streamOptimized with and without -c and with VMware's footer,
monolithicFlat, twoGbMaxExtent*, zeroed grains) read exactly as qemu reads them and encrypt to
what qemu decrypts; delta disks and missing extents are refused."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import FAST, Cli, MiB, qemu_img
from tests.images.flavours import (
    SOURCE_MIB,
    make,
)


def test_info_names_the_subformat(source: Path, tmp_path: Path, cli: Cli) -> None:
    image, _ref = make("vmdk-streamOptimized", source, tmp_path)
    d = json.loads(cli("info", str(image), "--json").stdout)
    assert d["format"] == "vmdk" and d["virtual_size"] == SOURCE_MIB * MiB
    assert d["vmdk"]["create_type"] == "streamOptimized"
    assert d["vmdk"]["extents"][0]["compressed"] is True


def test_delta_disk_is_refused(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    qemu_img("create", "-f", "vmdk", str(tmp_path / "base.vmdk"), "8M")
    qemu_img("create", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", str(tmp_path / "child.vmdk"))
    err = cli.fails("encrypt", "child.vmdk", "out.img", "--key-file", str(keyfile), *FAST)
    assert "child.vmdk" in err and "parentCID" in err


def test_missing_flat_extent_is_refused(source: Path, tmp_path: Path, cli: Cli,
                                        keyfile: Path) -> None:
    image, _ref = make("vmdk-monolithicFlat", source, tmp_path)
    (image.parent / "disk-flat.vmdk").unlink()
    err = cli.fails("encrypt", str(image), "out.img", "--key-file", str(keyfile), *FAST)
    assert "disk.vmdk" in err and "disk-flat.vmdk" in err and "cannot open extent file" in err


def test_output_over_an_extent_file_is_refused(source: Path, tmp_path: Path, cli: Cli,
                                               keyfile: Path) -> None:
    image, _ref = make("vmdk-monolithicFlat", source, tmp_path)
    extent = image.parent / "disk-flat.vmdk"
    before = extent.read_bytes()
    err = cli.fails("encrypt", str(image), str(extent), "--key-file", str(keyfile), "--force",
                    *FAST)
    assert "disk-flat.vmdk" in err and "same file as the source" in err
    assert extent.read_bytes() == before
