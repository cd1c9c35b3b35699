"""What an output may be (issue 10): never a device node other than a block device, never a key
file or the source, never a silent replacement of a file that appeared meanwhile; long names fit
NAME_MAX. Temporary files of killed runs, bad output paths and holes: tests/sinks."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lukspack.errors import OutputError
from lukspack.sinks.file import FileSink
from tests.helpers import (
    FAST,
    Cli,
    MiB,
    cryptsetup,
    leftovers,
    loop_device,
    pattern_disk,
    special_file,
)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return pattern_disk(tmp_path / "src.raw", 2)


@pytest.mark.parametrize("kind,what", [("chardev", "a character device"), ("fifo", "a FIFO"),
                                       ("socket", "a socket"), ("dir", "a directory")])
@pytest.mark.parametrize("command", ["encrypt", "convert", "decrypt"])
def test_force_never_replaces_a_node(tmp_path: Path, cli: Cli, keyfile: Path, src: Path,
                                     kind: str, what: str, command: str) -> None:
    node = special_file(tmp_path, kind)
    before = os.lstat(node)
    if command == "encrypt":
        args = ["encrypt", src, node, "--key-file", keyfile, "--force", *FAST]
    elif command == "convert":
        args = ["convert", src, node, "--to", "raw", "--force"]
    else:
        enc = tmp_path / "e.img"
        cli("encrypt", src, enc, "--key-file", keyfile, *FAST)
        args = ["decrypt", enc, node, "--key-file", keyfile, "--force"]
    err = cli.fails(*args)
    assert f"is {what}" in err
    after = os.lstat(node)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_output_is_the_key_file(tmp_path: Path, cli: Cli, keyfile: Path, src: Path, how: str,
                                command: str) -> None:
    enc = tmp_path / "e.img"
    if command == "decrypt":
        cli("encrypt", src, enc, "--key-file", keyfile, *FAST)
    key_before = keyfile.read_bytes()
    target = keyfile
    if how == "symlink":
        target = tmp_path / "link.key"
        target.symlink_to(keyfile)
    elif how == "hardlink":
        target = tmp_path / "hard.key"
        os.link(keyfile, target)
    args = (["encrypt", src, target, "--key-file", keyfile, "--force", *FAST]
            if command == "encrypt" else ["decrypt", enc, target, "--key-file", keyfile, "--force"])
    err = cli.fails(*args)
    assert "same file as the key file" in err
    assert keyfile.read_bytes() == key_before and leftovers(tmp_path) == []


def test_a_name_that_appears_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    """Without --force the final step is link(2): it fails when the name appeared while the
    image was being written (a second run to the same new name)."""
    out = tmp_path / "o.img"
    sink = FileSink(str(out))
    sink.begin(0, 4096)
    sink.write(0, b"new" * 100)
    sink.finish(300)
    out.write_bytes(b"the other run's image")
    with pytest.raises(OutputError, match="appeared while lukspack was writing it"):
        sink.commit()
    sink.abort()
    assert out.read_bytes() == b"the other run's image" and leftovers(tmp_path) == []


def test_two_concurrent_runs_to_one_new_name(tmp_path: Path, keyfile: Path, src: Path) -> None:
    """Two real runs at once: one wins, the other fails with one line; never both exit 0."""
    from tests.helpers import cli_env

    args = [sys.executable, "-m", "lukspack", "encrypt", str(src), "o.img", "--key-file",
            str(keyfile), "--pbkdf-force-iterations", "200000"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]
    codes = sorted(p.wait(timeout=120) for p in procs)
    errs = [p.stderr.read().decode() for p in procs]
    assert codes == [0, 1], errs
    assert any("already exists" in e or "appeared while" in e for e in errs)
    cryptsetup("luksOpen", "--test-passphrase", "--key-file", str(keyfile), str(tmp_path / "o.img"))
    assert leftovers(tmp_path) == []


# temporary files of killed runs: tests/sinks/test_temps.py


def test_a_long_output_name_fits_name_max(tmp_path: Path, cli: Cli, keyfile: Path,
                                          src: Path) -> None:
    out = tmp_path / ("x" * 235 + ".img")
    cli("encrypt", src, out, "--key-file", keyfile, *FAST)
    assert out.exists() and leftovers(tmp_path) == []


def test_a_block_device_is_written_in_place(tmp_path: Path, cli: Cli, keyfile: Path,
                                            src: Path) -> None:
    """A block device output needs --force, is checked for size first, written in place (never
    renamed), and verified by reading it back. A loop device stands in for a disk."""
    backing = tmp_path / "disk.bin"
    with open(backing, "wb") as f:
        f.truncate(8 * MiB)
    with loop_device(backing) as dev:  # skips only where the machine cannot have one, saying why
        assert "is a block device; use --force" in cli.fails("encrypt", src, dev, "--key-file",
                                                             keyfile, *FAST)
        s = cli("encrypt", src, dev, "--key-file", keyfile, "--force", "--json", *FAST)
        assert stat.S_ISBLK(os.stat(dev).st_mode)
        assert b'"verified": true' in s.stdout
        cryptsetup("luksOpen", "--test-passphrase", "--key-file", str(keyfile), dev)
        big = pattern_disk(tmp_path / "big.raw", 9)
        assert "the device has 8388608 bytes" in cli.fails("encrypt", big, dev, "--key-file",
                                                           keyfile, "--force", *FAST)
