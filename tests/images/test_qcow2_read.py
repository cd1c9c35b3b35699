"""qcow2 inputs (v2, v3, compressed, zero clusters, cluster sizes) read exactly as qemu reads them
and encrypt to what qemu decrypts; backing files and encrypted inputs are refused."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import FAST, Cli, MiB, qemu_img
from tests.images.flavours import (
    SOURCE_MIB,
    make,
)


def test_info_counts_clusters(source: Path, tmp_path: Path, cli: Cli) -> None:
    image, _ref = make("qcow2-compressed", source, tmp_path)
    d = json.loads(cli("info", str(image), "--json").stdout)
    assert d["format"] == "qcow2" and d["virtual_size"] == SOURCE_MIB * MiB
    assert d["qcow2"]["version"] == 3 and d["qcow2"]["encrypted"] is False
    assert d["qcow2"]["clusters"]["compressed"] > 0
    assert d["qcow2"]["clusters"]["unallocated"] >= 4 * MiB // 65536


def test_backing_file_is_refused(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    qemu_img("create", "-f", "qcow2", str(tmp_path / "base.qcow2"), "8M")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             str(tmp_path / "child.qcow2"))
    err = cli.fails("encrypt", "child.qcow2", "out.qcow2", "--key-file", str(keyfile), *FAST)
    assert "child.qcow2" in err and "backing file" in err and "base.qcow2" in err
    assert not (tmp_path / "out.qcow2").exists()


def test_encrypted_input_is_refused(source: Path, tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    enc = tmp_path / "enc.qcow2"
    cli("encrypt", str(source), str(enc), "--key-file", str(keyfile), "--no-verify", *FAST)
    assert qemu_img("info", str(enc)).stdout.count(b"encrypted: yes") == 1
    err = cli.fails("encrypt", str(enc), "out.img", "--key-file", str(keyfile), *FAST)
    assert "enc.qcow2" in err and "encrypted qcow2" in err
