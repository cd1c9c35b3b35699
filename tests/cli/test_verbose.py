"""-v/--verbose and --debug (issue 17): what lukspack decided and why, on stderr: the formats
and how they were found, the layout, the KDF cost, each stage's time; never a secret; nothing
without them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.helpers import FAST, Cli, pattern_disk


@pytest.fixture(autouse=True)
def quiet_again() -> None:
    """The in-process CLI configures the lukspack logger; each test starts without it."""
    yield
    log = logging.getLogger("lukspack")
    for h in list(log.handlers):
        log.removeHandler(h)
    log.setLevel(logging.NOTSET)
    log.propagate = True


@pytest.mark.parametrize("where", ["after", "before"])
def test_verbose_says_what_was_decided(cli: Cli, keyfile: Path, tmp_path: Path,
                                       where: str) -> None:
    src = pattern_disk(tmp_path / "s.raw", 2)
    args = ["encrypt", src, tmp_path / "o.qcow2", "--key-file", keyfile, *FAST]
    args = [*args, "-v"] if where == "after" else ["-v", *args]
    p = cli(*args)
    err = p.stderr.decode()
    assert "lukspack: output " in err and "qcow2+LUKS, from the name's suffix .qcow2" in err
    assert "source " in err and "raw (detected from its content)" in err
    assert "layout: qcow2" in err and "before the payload" in err
    assert "key slot KDF: pbkdf2-sha256, 1000 iterations (--pbkdf-force-iterations)" in err
    for stage in ("encrypt", "key slot", "header", "finish", "commit"):
        assert f"stage {stage}:" in err, stage
    assert keyfile.read_bytes().decode() not in err  # never the key
    assert p.stdout  # the result is still on stdout


def test_verbose_names_a_calibrated_cost_and_why_raw(cli: Cli, keyfile: Path,
                                                     tmp_path: Path) -> None:
    src = pattern_disk(tmp_path / "s.raw", 1)
    err = cli("encrypt", src, tmp_path / "o.bin", "--key-file", keyfile, "--iter-time", "50",
              "--verbose").stderr.decode()
    assert "LUKS RAW, the name ends in neither .qcow2 nor .vhd" in err
    assert "for --iter-time 50 ms" in err and "per second here" in err


def test_debug_adds_times_and_modules(cli: Cli, keyfile: Path, tmp_path: Path) -> None:
    src = pattern_disk(tmp_path / "s.raw", 1)
    err = cli("encrypt", src, tmp_path / "o.img", "--key-file", keyfile, *FAST,
              "--debug").stderr.decode()
    lines = [ln for ln in err.splitlines() if ln.startswith("lukspack: [")]
    assert lines and all(" s] " in ln for ln in lines)
    assert any("] engine: stage encrypt" in ln for ln in lines)
    first = float(lines[0].split("[")[1].split(" s]")[0])
    assert 0 <= first < 600  # seconds since start, not a wall-clock time


def test_nothing_without_v(cli: Cli, keyfile: Path, tmp_path: Path) -> None:
    src = pattern_disk(tmp_path / "s.raw", 1)
    err = cli("encrypt", src, tmp_path / "o.img", "--key-file", keyfile, *FAST).stderr.decode()
    assert "layout:" not in err and "stage" not in err


def test_add_key_verbose_times_its_kdfs(cli: Cli, keyfile: Path, tmp_path: Path) -> None:
    src = pattern_disk(tmp_path / "s.raw", 1)
    image = tmp_path / "o.img"
    cli("encrypt", src, image, "--key-file", keyfile, *FAST)
    new = tmp_path / "n.key"
    new.write_bytes(b"second passphrase")
    new.chmod(0o600)
    err = cli("add-key", image, "-d", keyfile, "--new-key-file", new, *FAST,
              "-v").stderr.decode()
    assert "lukspack: unlock:" in err and "lukspack: key slot:" in err
    assert "second passphrase" not in err
