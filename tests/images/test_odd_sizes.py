"""Disks whose size is not a whole number of clusters, grains or blocks: the last partial unit
reads exactly as qemu reads it, and the qcow2+LUKS output has the same virtual size."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import Cli, MiB, pattern_disk, qemu_img
from tests.images.flavours import encrypt_and_compare, read_all

CASES = {
    "qcow2": ["-O", "qcow2"],
    "qcow2-compressed": ["-c", "-O", "qcow2"],
    "vmdk-streamOptimized": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
    "vmdk-monolithicSparse": ["-O", "vmdk", "-o", "subformat=monolithicSparse"],
    "vhdx": ["-O", "vhdx", "-o", "block_size=1M"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_partial_last_unit(case: str, tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "odd.raw", 5, tail=3 * 512, seed=3)
    image = tmp_path / f"odd.{case.split('-')[0]}"
    qemu_img("convert", "-f", "raw", *CASES[case], str(src), str(image))
    ref = tmp_path / "ref.raw"
    qemu_img("convert", "-O", "raw", str(image), str(ref))
    data, _read, _extents, _fmt = read_all(image)
    assert data == ref.read_bytes()
    assert data[: 5 * MiB + 3 * 512] == src.read_bytes()  # qemu may pad to its own unit
    encrypt_and_compare(cli, image, ref, keyfile, tmp_path)
