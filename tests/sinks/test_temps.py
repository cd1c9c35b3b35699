"""Temporary files left by killed runs: every run that writes into a directory removes those of
that directory whose process is gone (whatever output they were for) and says so in one line;
a live run's are never removed, and a PID now used by another process does not keep a dead run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lukspack.sinks.paths import BOOT, HOST, process_start, temp_name
from tests.helpers import FAST, Cli, MiB, cli_env, leftovers, pattern_disk


def _temp(directory: Path, output: str, pid: int, start: int, host: str = HOST,
          boot: str = BOOT, size: int = 8192) -> Path:
    p = directory / f".{output}.{pid}.{start}.{host}.{boot}.0badc0de.lukspack-tmp"
    p.write_bytes(b"x" * size)
    return p


def test_dead_temporaries_of_other_outputs_are_removed_live_ones_kept(tmp_path: Path, cli: Cli,
                                                                     keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "src.raw", 2)
    dead = subprocess.Popen(["true"])
    dead.wait()
    # a sleeping process standing for another lukspack run, alive while this test runs
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                "lukspack"])
    try:
        start = process_start(sleeper.pid)
        assert start
        gone = _temp(tmp_path, "other.img", dead.pid, 4242)
        reused = _temp(tmp_path, "third.img", sleeper.pid, start + 1)  # the PID now another's
        earlier_boot = _temp(tmp_path, "o.img", sleeper.pid, start, boot="00000000")
        live = _temp(tmp_path, "other.img", sleeper.pid, start)
        mine = Path(temp_name(str(tmp_path / "fourth.img")))  # this process's: alive
        mine.write_bytes(b"m")
        elsewhere = _temp(tmp_path, "other.img", dead.pid, 4242, host="00000000")
        p = cli("encrypt", src, tmp_path / "o.img", "--key-file", keyfile, *FAST)
        lines = [x for x in p.stderr.decode().splitlines() if "temporary file" in x]
        assert len(lines) == 1, p.stderr
        assert f"removed 3 temporary files of killed lukspack runs from {tmp_path} " \
               f"({3 * 8192} bytes allocated)" in lines[0]
        for path in (gone, reused, earlier_boot):
            assert not path.exists() and path.name in lines[0]
        assert live.exists() and mine.exists() and elsewhere.exists()
        assert (tmp_path / "o.img").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_killed_run_leaves_a_temporary_a_run_to_another_name_removes(tmp_path: Path,
                                                                     keyfile: Path) -> None:
    """A real lukspack killed with SIGKILL: while it ran, a run to another name in the same
    directory kept its temporary file; once it is dead, the next run removes it."""
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        f.truncate(2048 * MiB)
    src = pattern_disk(tmp_path / "src.raw", 2)
    p = subprocess.Popen([sys.executable, "-m", "lukspack", "encrypt", str(big), "o.img",
                          "--key-file", str(keyfile), *FAST], cwd=tmp_path, env=cli_env(),
                         stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not leftovers(tmp_path):
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.02)
        left = leftovers(tmp_path)
        run = Cli(tmp_path)("encrypt", src, "a.img", "--key-file", keyfile, *FAST)
        assert "temporary file" not in run.stderr.decode()
        assert leftovers(tmp_path) == left and p.poll() is None  # the live run's is kept
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert leftovers(tmp_path) == left and len(left) == 1
    run = Cli(tmp_path)("encrypt", src, "b.img", "--key-file", keyfile, *FAST)
    assert f"removed 1 temporary file of killed lukspack runs from {tmp_path}" in \
        run.stderr.decode() and left[0] in run.stderr.decode()
    assert leftovers(tmp_path) == []


def test_temporary_names_are_cut_by_bytes(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    """A 240-byte UTF-8 name (multibyte characters) is written by encrypt, convert and decrypt:
    the temporary name is cut to NAME_MAX bytes, not characters, and never inside a character."""
    src = pattern_disk(tmp_path / "src.raw", 2)
    name = "\u20ac" * 78 + "xx.img"  # 3-byte characters
    assert len(os.fsencode(name)) == 240 and os.pathconf(tmp_path, "PC_NAME_MAX") == 255
    tmp = os.path.basename(temp_name(str(tmp_path / name)))
    assert len(os.fsencode(tmp)) <= 255 and "\ufffd" not in tmp.encode().decode()
    enc = tmp_path / ("e" + name[1:])
    cli("encrypt", src, enc, "--key-file", keyfile, *FAST)
    cli("convert", src, tmp_path / name, "--to", "raw")
    assert (tmp_path / name).read_bytes() == src.read_bytes()
    plain = tmp_path / ("d" + name[1:])
    cli("decrypt", enc, plain, "--key-file", keyfile)
    assert plain.read_bytes() == src.read_bytes() + bytes(plain.stat().st_size - 2 * MiB)
    assert leftovers(tmp_path) == []
