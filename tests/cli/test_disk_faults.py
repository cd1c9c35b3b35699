"""A full disk (ENOSPC) and an unwritable directory: one clear line, exit 1, nothing left behind.

Each case runs lukspack inside a private mount namespace (`unshare`) on a small tmpfs, so the
machine's own disks are never filled. As root that needs `unshare -m`; otherwise `unshare -Urm`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.helpers import FAST, Cli, cli_env, pattern_disk


def _in_small_fs(tmp_path: Path, size: str, script: str, readonly: bool = False
                 ) -> subprocess.CompletedProcess[str]:
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    inner = (f"mount -t tmpfs -o {opts} tmpfs {shlex.quote(str(mnt))} && cd {shlex.quote(str(mnt))}"
             f" && {script}; rc=$?; echo LEFT: $(ls -A); exit $rc")
    ns = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-Urm"]
    return subprocess.run([*ns, "sh", "-c", inner], capture_output=True, text=True, cwd=tmp_path,
                          env=cli_env())


def _lk(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable, "-m", "lukspack", *args])


def _one_error_line(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lukspack: error: "), p.stderr
    return lines[0]


def test_encrypt_to_a_full_disk(tmp_path: Path, keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "src.raw", 16)
    p = _in_small_fs(tmp_path, "8m", _lk("encrypt", str(src), "out.img", "--key-file",
                                          str(keyfile), *FAST))
    assert "no space left on device" in _one_error_line(p)
    assert p.stdout.strip().endswith("LEFT:")  # nothing in the directory


def test_decrypt_runs_out_of_space_midway(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "src.raw", 24)
    enc = tmp_path / "enc.img"
    cli("encrypt", src, enc, "--key-file", keyfile, *FAST)
    p = _in_small_fs(tmp_path, "12m", _lk("decrypt", str(enc), "plain.raw", "--key-file",
                                           str(keyfile)))
    assert "no space left on device" in _one_error_line(p)
    assert p.stdout.strip().endswith("LEFT:")


def test_read_only_directory(tmp_path: Path, keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "src.raw", 2)
    p = _in_small_fs(tmp_path, "8m", _lk("encrypt", str(src), "out.img", "--key-file",
                                          str(keyfile), *FAST), readonly=True)
    assert "cannot write here" in _one_error_line(p)


def test_keygen_into_a_read_only_directory(tmp_path: Path) -> None:
    p = _in_small_fs(tmp_path, "1m", _lk("keygen", "k.key"), readonly=True)
    assert "cannot create key file" in _one_error_line(p)


def test_a_big_sparse_disk_fits_a_small_filesystem(tmp_path: Path, keyfile: Path) -> None:
    """The free-space check of a sparse output (qcow2+LUKS, encrypted VHD) counts what the source
    holds, not its virtual size: 8 GiB with 2 MiB of data goes to a 24 MiB filesystem."""
    src = tmp_path / "sparse.raw"
    with open(src, "wb") as f:
        f.truncate(8 << 30)
        f.seek(3 << 30)
        f.write(os.urandom(2 << 20))
    for out in ("out.qcow2", "out.vhd"):
        fast = FAST if out.endswith(".qcow2") else []  # the encrypted VHD has no key slots
        p = _in_small_fs(tmp_path, "24m", _lk("encrypt", str(src), out, "--key-file",
                                               str(keyfile), *fast))
        assert p.returncode == 0, p.stderr
        assert f"LEFT: {out}" in p.stdout
