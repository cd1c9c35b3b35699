"""An output that cannot be made is refused before the source is read: the source here does not
exist, so an error that names the output proves the output was checked first. --force on a
symbolic link replaces the link, never the file it points to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import FAST, Cli, cli_env, leftovers, pattern_disk


def _args(command: str, source: Path, output: str, keyfile: Path) -> list[str]:
    if command == "encrypt":
        return ["encrypt", str(source), output, "--key-file", str(keyfile), *FAST]
    if command == "decrypt":
        return ["decrypt", str(source), output, "--key-file", str(keyfile)]
    return ["convert", str(source), output, "--to", "raw"]


COMMANDS = ["encrypt", "decrypt", "convert"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("output,says", [
    ("newdir/", "ends in '/': name the file to write"),
    ("missing/o.img", "does not exist"),
    ("exists.img", "already exists (use --force"),
    ("dir/", "ends in '/'"),
])
def test_a_bad_output_fails_before_the_source_is_read(tmp_path: Path, cli: Cli, keyfile: Path,
                                                      command: str, output: str,
                                                      says: str) -> None:
    (tmp_path / "exists.img").write_bytes(b"keep")
    (tmp_path / "dir").mkdir()
    source = tmp_path / "no-such-source.raw"
    path = f"{tmp_path}/{output}"  # a Path would drop the trailing /
    err = cli.fails(*_args(command, source, path, keyfile))
    assert says in err and f"{path}:" in err and "no-such-source" not in err, err
    assert (tmp_path / "exists.img").read_bytes() == b"keep"
    assert not (tmp_path / "newdir").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_an_empty_output_is_a_usage_error(tmp_path: Path, cli: Cli, keyfile: Path,
                                          command: str) -> None:
    err = cli.fails(*_args(command, tmp_path / "no-such-source.raw", "", keyfile), code=2)
    assert "OUTPUT is empty" in err and "no-such-source" not in err, err



@pytest.mark.parametrize("command", COMMANDS)
def test_dash_output_is_a_usage_error_not_a_file_named_dash(tmp_path: Path, cli: Cli,
                                                            keyfile: Path, command: str) -> None:
    """`-` is standard output to a cryptsetup/dd user; lukspack writes images to files (keygen's
    rule): refused before the source is read, no file named `-`; `./-` names one."""
    err = cli.fails(*_args(command, tmp_path / "no-such-source.raw", "-", keyfile), code=2)
    assert "OUTPUT '-'" in err and "./-" in err and "no-such-source" not in err, err
    assert not (tmp_path / "-").exists()

@pytest.mark.parametrize("command", COMMANDS)
def test_an_unwritable_directory_fails_before_the_source_is_read(keyfile: Path,
                                                                 command: str) -> None:
    """As an unprivileged user (root may write anywhere): a directory of mode 0555."""
    setpriv = shutil.which("setpriv")
    assert setpriv and os.geteuid() == 0, "this test runs as root and drops to nobody"
    top = Path(tempfile.mkdtemp(prefix="lukspack-ro-"))
    try:
        top.chmod(0o755)
        ro = top / "ro"
        ro.mkdir(mode=0o555)
        key = top / "dek.key"
        shutil.copy(keyfile, key)
        os.chown(key, 65534, 65534)
        out = str(ro / "o.img")
        p = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-m", "lukspack",
                            *_args(command, top / "no-such-source.raw", out, key)],
                           capture_output=True, env=cli_env(), cwd=top)
        err = p.stderr.decode()
        assert p.returncode == 1 and err.count("\n") == 1, err
        assert f"{out}: cannot write here: directory {ro} is not writable by this user" in err
        assert "no-such-source" not in err
        assert os.listdir(ro) == []
    finally:
        shutil.rmtree(top)


@pytest.mark.parametrize("command", COMMANDS)
def test_force_on_a_symbolic_link_replaces_the_link(tmp_path: Path, cli: Cli, keyfile: Path,
                                                    command: str) -> None:
    """What --help and the README say: the link itself is replaced by the new file; the file
    it pointed to is left as it was."""
    src = pattern_disk(tmp_path / "src.raw", 2)
    source = src
    if command == "decrypt":
        source = tmp_path / "e.img"
        cli("encrypt", src, source, "--key-file", keyfile, *FAST)
    target = tmp_path / "target.img"
    target.write_bytes(b"the file the link points to")
    link = tmp_path / "link.img"
    link.symlink_to(target)
    assert "already exists" in cli.fails(*_args(command, source, str(link), keyfile))
    cli(*_args(command, source, str(link), keyfile), "--force")
    assert not link.is_symlink() and link.is_file() and link.stat().st_size >= 2 << 20
    assert target.read_bytes() == b"the file the link points to"
    assert leftovers(tmp_path) == []



@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("points_to", ["nowhere", "directory"])
def test_force_replaces_a_link_whatever_it_points_to(tmp_path: Path, cli: Cli, keyfile: Path,
                                                     command: str, points_to: str) -> None:
    """A dangling link, or one to a directory, is still a link: without --force it is refused
    (before the source is read), with --force the link itself is replaced, as --help says."""
    src = pattern_disk(tmp_path / "src.raw", 2)
    source = src
    if command == "decrypt":
        source = tmp_path / "e.img"
        cli("encrypt", src, source, "--key-file", keyfile, *FAST)
    target = tmp_path / "nowhere" / "x.img"
    if points_to == "directory":
        target = tmp_path / "adir"
        target.mkdir()
    link = tmp_path / "link.img"
    link.symlink_to(target)
    err = cli.fails(*_args(command, source, str(link), keyfile))
    assert "symbolic link" in err and "--force" in err, err
    cli(*_args(command, source, str(link), keyfile), "--force")
    assert not link.is_symlink() and link.is_file() and link.stat().st_size >= 2 << 20
    assert not (tmp_path / "nowhere").exists() and (points_to != "directory" or target.is_dir())
    assert leftovers(tmp_path) == []

def test_help_says_what_force_replaces() -> None:
    from tests.helpers import run

    for command in COMMANDS:
        out = run([sys.executable, "-m", "lukspack", command, "--help"], env=cli_env()).stdout
        text = " ".join(out.decode().split())
        assert "a symbolic link is replaced itself, not the file it points to" in text, text
