"""How the command behaves for a person (issue 10): progress without a terminal, whole command
descriptions, one-line usage errors, a passphrase typed at a terminal is not echoed, cryptsetup's
key-file options, and a start-up that loads no heavy module."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import FAST, Cli, MiB, cli_env, pattern_disk


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path: Path, cli: Cli,
                                                      keyfile: Path, monkeypatch) -> None:  # noqa: ANN001
    from lukspack.cli import progress

    monkeypatch.setattr(progress, "LINE_EVERY", 0.0)  # every update, for the test
    src = pattern_disk(tmp_path / "s.raw", 24)
    err = cli("encrypt", src, tmp_path / "o.img", "--key-file", keyfile, "-p", *FAST,
              "--no-verify").stderr.decode()
    lines = [ln for ln in err.splitlines() if ln.strip().startswith("encrypt")]
    assert len(lines) >= 2 and "100.0%" in lines[-1] and "MiB of 24.0 MiB" in lines[-1]
    assert not any("MB/s" in ln or "kB" in ln for ln in lines)  # one unit system: binary
    quiet = cli("encrypt", src, tmp_path / "q.img", "--key-file", keyfile, *FAST).stderr
    assert b"%" not in quiet  # no -p and no terminal: no progress


def test_eta_waits_for_a_measured_rate() -> None:
    """The first seconds (key derivation, calibration) do not produce a wild ETA."""
    import io

    from lukspack.cli.progress import Renderer

    out = io.StringIO()
    r = Renderer(out, interactive=False)
    r.first, r.first_done, r.phase = time.monotonic() - 1.0, 1, "encrypt"
    assert "left" not in r.line(10 * MiB, 1000 * MiB, time.monotonic())
    r.first = time.monotonic() - 10.0
    line = r.line(500 * MiB, 1000 * MiB, time.monotonic())
    assert "0:10 left" in line or "0:09 left" in line or "0:11 left" in line


def test_help_shows_whole_descriptions(cli: Cli) -> None:
    out = cli("--help").stdout.decode()
    commands = out[out.index("Commands:"):]
    assert "..." not in commands
    assert "qcow2 with LUKS inside (IBM Cloud VPC)" in " ".join(out.split())


@pytest.mark.parametrize("args,message", [
    (["encrypt", "s.raw", "o.img", "--key-file", "k", "--pbkdf", "argon2id"], "pbkdf2 only"),
    (["encrypt", "s.raw", "o.img", "--key-file", "k", "--hash", "nohash"], "not a known hash"),
    (["encrypt", "s.raw", "o.img", "--key-file", "k", "--cipher", "twofish-xts-plain64"],
     "supported: aes-xts-plain64"),
    (["encrypt", "s.raw", "o.img", "--key-file", "k", "--key-size", "128"], "supported: 256, 512"),
    (["encrypt", "s.raw"], "Missing argument"),
    (["verify", "x", "--bogus"], "No such option"),
])
def test_usage_errors_are_one_line_exit_2(cli: Cli, args: list[str], message: str) -> None:
    assert message in cli.fails(*args, code=2)


def test_an_unreadable_source_is_one_line_exit_1(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "s.raw", 1)
    src.chmod(0)
    if os.access(src, os.R_OK):  # root reads anything: use a missing file instead
        src = tmp_path / "missing.raw"
    err = cli.fails("encrypt", src, tmp_path / "o.img", "--key-file", keyfile, *FAST)
    assert "cannot open" in err


def test_keyfile_size_and_offset(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "s.raw", 2)
    out = tmp_path / "o.img"
    cli("encrypt", src, out, "--key-file", keyfile, *FAST)
    padded = tmp_path / "padded.key"
    padded.write_bytes(b"JUNK" + keyfile.read_bytes() + b"\ntrailing")
    padded.chmod(0o600)
    n = len(keyfile.read_bytes())
    cli("verify", out, "--key-file", padded, "--keyfile-offset", "4", "--keyfile-size", str(n))
    assert "no key slot opens" in cli.fails("verify", out, "--key-file", padded)


def test_a_passphrase_typed_at_a_terminal_is_not_echoed(tmp_path: Path, keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "s.raw", 2)
    out = tmp_path / "o.img"
    Cli(tmp_path)("encrypt", src, out, "--key-file", keyfile, *FAST)
    secret = keyfile.read_bytes()
    pid, fd = pty.fork()
    if pid == 0:  # the child: lukspack on a terminal
        os.chdir(tmp_path)
        env = cli_env()
        os.execve(sys.executable, [sys.executable, "-m", "lukspack", "verify", str(out),
                                   "--key-file", "-", "--no-progress"], env)
    seen = b""
    deadline = time.monotonic() + 30
    while b"passphrase" not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            seen += os.read(fd, 1024)
    os.write(fd, secret + b"\n")
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert b"Enter passphrase" in seen and b"key opens LUKS1" in seen
    assert secret not in seen  # echo was off


def test_version_starts_without_heavy_modules() -> None:
    """`lukspack --version` and `--help` import click and the CLI only (start-up is measured in
    bench/bench.py; this checks what makes it fast)."""
    code = ("import sys, runpy; sys.argv = ['lukspack', '--version']\n"
            "try:\n    runpy.run_module('lukspack', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "heavy = [m for m in ('numpy', 'lukspack.engine', 'lukspack.luks.luks2', 'xxhash',"
            " 'lukspack.crypto.xts') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, env=cli_env())
    assert b"HEAVY []" in p.stdout, p.stdout + p.stderr


def test_json_summary_says_what_each_digest_covers(tmp_path: Path, cli: Cli,
                                                   keyfile: Path) -> None:
    """One image, one disk digest: encrypt --json, verify and decrypt report the same value."""
    src = pattern_disk(tmp_path / "s.raw", 2, tail=1536)  # not a whole MiB: padding
    out = tmp_path / "o.img"
    s = json.loads(cli("encrypt", src, out, "--key-file", keyfile, "--json", *FAST).stdout)
    v = json.loads(cli("verify", out, "--key-file", keyfile, "--json").stdout)
    vs = json.loads(cli("verify", out, "--key-file", keyfile, "--source", src, "--json").stdout)
    d = json.loads(cli("decrypt", out, tmp_path / "p.raw", "--key-file", keyfile,
                       "--json").stdout)
    assert s["disk_sha256"] == v["disk_sha256"] == vs["disk_sha256"] == d["disk_sha256"]
    assert s["source_sha256"] == vs["source_sha256"] != s["disk_sha256"]
    assert v["matches_source"] is None and vs["matches_source"] is True
    assert "disk_sha256" in s["digests"] and s["disk_bytes"] == 3 * MiB
