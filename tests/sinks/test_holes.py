"""decrypt and convert --to raw keep the source's holes and leave all-zero 4 KiB blocks of its
data as holes, as `qemu-img convert -O raw` does: the same bytes (cmp) and about the same
allocated size. A block device gets every zero written."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import FAST, Cli, MiB, qemu_img
from tests.luks.luks_helpers import write_key

SIZE = 64 * MiB


def sparse_raw(path: Path) -> Path:
    """64 MiB: 4 KiB of data at the start of each of the first 48 MiB (every 4 MiB chunk of the
    stream has data), 1 MiB of written zeros at 40 MiB with 4 KiB of data in its middle; the
    rest never written (the last 16 MiB: whole chunks of zeros)."""
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for m in range(48):
            f.seek(m * MiB)
            f.write(os.urandom(4096))
        f.seek(40 * MiB + 8192)
        f.write(bytes(MiB) + os.urandom(4096) + bytes(MiB))
    return path


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _same_as_qemu(ours: Path, theirs: Path) -> None:
    assert filecmp.cmp(ours, theirs, shallow=False)
    assert os.path.getsize(ours) == os.path.getsize(theirs) == SIZE
    data = 49 * 4096
    # close to the data (st_blocks counts whole filesystem blocks), within 64 KiB of qemu-img's
    assert allocated(ours) <= data + 256 * 1024, (allocated(ours), allocated(theirs))
    assert abs(allocated(ours) - allocated(theirs)) <= 64 * 1024, (allocated(ours),
                                                                   allocated(theirs))


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return sparse_raw(tmp_path / "s.raw")


@pytest.mark.parametrize("fmt", ["raw", "vpc", "qcow2"])
def test_convert_to_raw_keeps_holes(tmp_path: Path, cli: Cli, raw: Path, fmt: str) -> None:
    if fmt == "raw":
        source = raw
    else:  # -S 0: the written zeros stay allocated in the source too
        source = tmp_path / f"s.{fmt}"
        opts = ["-o", "subformat=dynamic,force_size=on"] if fmt == "vpc" else []
        qemu_img("convert", "-S", "0", "-f", "raw", "-O", fmt, *opts, str(raw), str(source))
    ref = tmp_path / "qemu.raw"
    qemu_img("convert", "-f", fmt, "-O", "raw", str(source), str(ref))
    out = tmp_path / "o.raw"
    cli("convert", source, out, "--to", "raw")
    _same_as_qemu(out, ref)


@pytest.mark.parametrize("fmt", ["luks", "qcow2"])
def test_decrypt_keeps_holes(tmp_path: Path, cli: Cli, keyfile: Path, raw: Path,
                             fmt: str) -> None:
    """A LUKS RAW image (every byte ciphertext: the zeros become holes again) and a qcow2+LUKS
    with unallocated clusters, decrypted by lukspack and by qemu-img."""
    enc = tmp_path / ("e.qcow2" if fmt == "qcow2" else "e.img")
    cli("encrypt", raw, enc, "--key-file", keyfile, *FAST)
    out = tmp_path / "d.raw"
    cli("decrypt", enc, out, "--key-file", keyfile)
    key = write_key(tmp_path / "k", keyfile.read_bytes())
    ref = tmp_path / "qemu.raw"
    file_opts = f"driver={fmt},file.filename={enc},"
    file_opts += "encrypt.key-secret=s0" if fmt == "qcow2" else "key-secret=s0"
    qemu_img("convert", "--object", f"secret,id=s0,file={key}", "--image-opts", file_opts,
             "-O", "raw", str(ref))
    _same_as_qemu(out, ref)


def test_decrypt_onto_a_block_device_writes_the_zeros(tmp_path: Path, cli: Cli, keyfile: Path,
                                                      raw: Path) -> None:
    """A device holds old data where nothing is written: decrypt writes every zero there (here
    through a symbolic link given with --force, which writes the device, not the link)."""
    losetup = shutil.which("losetup") or "/usr/sbin/losetup"
    backing = tmp_path / "disk.bin"
    backing.write_bytes(b"\xff" * SIZE)
    dev = subprocess.run([losetup, "-f", "--show", str(backing)], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        enc = tmp_path / "e.img"
        cli("encrypt", raw, enc, "--key-file", keyfile, *FAST)
        link = tmp_path / "disk.link"  # --force through a link to a device: the device
        link.symlink_to(dev)
        cli("decrypt", enc, link, "--key-file", keyfile, "--force")
        assert link.is_symlink()
        with open(dev, "rb") as f:
            assert f.read(SIZE) == raw.read_bytes()
    finally:
        subprocess.run([losetup, "-d", dev], check=False)


@pytest.mark.parametrize("seed", range(20))
def test_nonzero_runs_against_a_byte_by_byte_scan(seed: int) -> None:
    """The 4 KiB blocks write_sparse writes, against a plain scan of each block (a short tail
    counts as a block of its own)."""
    import random

    from lukspack.sinks.file import nonzero_runs

    rnd = random.Random(seed)
    n = rnd.choice([0, 1, 4095, 4096, 4097, 40960, 40961 + rnd.randrange(8191)])
    data = bytearray(n)
    for _ in range(rnd.randrange(6)):
        if n:
            data[rnd.randrange(n)] = rnd.randrange(1, 256)
    blocks = [(a, min(a + 4096, n)) for a in range(0, n, 4096)]
    want: list[tuple[int, int]] = []
    for a, b in blocks:
        if any(data[a:b]):
            if want and want[-1][1] == a:
                want[-1] = (want[-1][0], b)
            else:
                want.append((a, b))
    assert nonzero_runs(memoryview(data)) == want
