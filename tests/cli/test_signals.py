"""SIGINT and SIGTERM stop the work within a second, remove the temporary output, exit 130/143."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import FAST, InProcessCli, MiB, cli_env, leftovers


def _start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "lukspack", *args], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_tmp(directory: Path, p: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while not leftovers(directory):
        assert p.poll() is None, p.stderr.read().decode() if p.stderr else ""
        assert time.monotonic() < deadline, "no temporary output appeared"
        time.sleep(0.02)
    time.sleep(0.2)  # well inside the streaming phase


@pytest.fixture(scope="module")
def encrypted_1g(tmp_path_factory: pytest.TempPathFactory, session_keyfile: Path) -> Path:
    """One encrypted 1 GiB image shared by the decrypt cases."""
    d = tmp_path_factory.mktemp("enc")
    small = d / "small.raw"
    with open(small, "wb") as f:
        f.truncate(1024 * MiB)
    InProcessCli(d)("encrypt", small, d / "enc.img", "--key-file", session_keyfile,
                    "--no-verify", *FAST)
    small.unlink()
    return d / "enc.img"


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("command", ["encrypt", "decrypt", "convert"])
def test_signal_stops_and_cleans_up(tmp_path: Path, session_keyfile: Path, sig: int, code: int,
                                    command: str, encrypted_1g: Path) -> None:
    keyfile = session_keyfile
    src = tmp_path / "big.raw"
    with open(src, "wb") as f:
        f.truncate(2048 * MiB)
    if command == "decrypt":
        args = ["decrypt", str(encrypted_1g), "out.raw", "--key-file", str(keyfile)]
    elif command == "encrypt":
        args = ["encrypt", "big.raw", "out.img", "--key-file", str(keyfile), *FAST]
    else:
        args = ["convert", "big.raw", "out.vhd", "--to", "vhd-fixed"]
        with open(src, "r+b") as f:  # data everywhere, so the copy takes a while
            for off in range(0, 2048 * MiB, 64 * MiB):
                f.seek(off)
                f.write(b"\x01" * MiB)
    with open(src, "r+b") as f:  # a boot sector: no RAW note before the work, one line is ours
        f.seek(510)
        f.write(b"\x55\xaa")
    p = _start(args, tmp_path)
    _wait_for_tmp(tmp_path, p)
    p.send_signal(sig)
    start = time.monotonic()
    p.wait(timeout=10)
    elapsed = time.monotonic() - start
    err = p.stderr.read().decode() if p.stderr else ""
    assert p.returncode == code, err
    assert elapsed < 1.0, elapsed
    assert err.strip() == f"lukspack: interrupted by {signal.Signals(sig).name}"
    assert leftovers(tmp_path) == []
    assert not any((tmp_path / n).exists() for n in ("out.img", "out.raw", "out.vhd"))
