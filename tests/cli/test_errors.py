"""Bad input: one clear line, exit 1 (usage: 2), nothing left behind, the source never changed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.helpers import FAST, Cli, leftovers, pattern_disk


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return pattern_disk(tmp_path / "src.raw", 2)


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("content,rule", [
    (b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=\n", "newline"),
    (b"QUJD REVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=", "no spaces"),
    (b"QUJDREVGR0hJSktM", "32 to 512 characters"),
    (b"QUJD" * 129, "32 to 512 characters"),
    (b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk!!==", "base64 text"),
    (b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWYx=", "not valid base64"),
    (b"", "empty"),
])
def test_bad_dek_is_refused_before_any_output(tmp_path: Path, cli: Cli, src: Path,
                                              content: bytes, rule: str) -> None:
    key = tmp_path / "bad.key"
    key.write_bytes(content)
    key.chmod(0o600)
    before = _digest(src)
    err = cli.fails("encrypt", src, tmp_path / "out.img", "--key-file", key, *FAST)
    assert rule in err and "bad.key" in err
    assert not (tmp_path / "out.img").exists() and leftovers(tmp_path) == []
    assert _digest(src) == before
    assert content[:8].decode(errors="replace") not in err or not content  # key never echoed


def test_existing_output_needs_force(tmp_path: Path, cli: Cli, keyfile: Path, src: Path) -> None:
    out = tmp_path / "out.img"
    out.write_bytes(b"precious")
    err = cli.fails("encrypt", src, out, "--key-file", keyfile, *FAST)
    assert "already exists" in err and "--force" in err
    assert out.read_bytes() == b"precious" and leftovers(tmp_path) == []
    cli("encrypt", src, out, "--key-file", keyfile, "--force", *FAST)
    assert out.stat().st_size == 4 << 20


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink", "dotted"])
def test_output_over_source_is_refused(tmp_path: Path, cli: Cli, keyfile: Path, src: Path,
                                       how: str) -> None:
    before = _digest(src)
    target = tmp_path / "alias.img"
    if how == "same":
        target = src
    elif how == "symlink":
        target.symlink_to(src)
    elif how == "hardlink":
        os.link(src, target)
    else:
        target = tmp_path / "." / "x" / ".." / src.name
        (tmp_path / "x").mkdir()
    err = cli.fails("encrypt", src, target, "--key-file", keyfile, "--force", *FAST)
    assert "same file as the source" in err
    assert _digest(src) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("what", ["missing", "directory", "empty"])
def test_unusable_sources(tmp_path: Path, cli: Cli, keyfile: Path, what: str) -> None:
    path = tmp_path / "in.img"
    if what == "directory":
        path.mkdir()
    elif what == "empty":
        path.write_bytes(b"")
    err = cli.fails("encrypt", path, tmp_path / "out.img", "--key-file", keyfile, *FAST)
    assert str(path) in err
    assert not (tmp_path / "out.img").exists() and leftovers(tmp_path) == []


def test_unwritable_destination(tmp_path: Path, cli: Cli, keyfile: Path, src: Path) -> None:
    err = cli.fails("encrypt", src, tmp_path / "nodir" / "out.img", "--key-file", keyfile, *FAST)
    assert "does not exist" in err


def test_usage_errors_exit_2(tmp_path: Path, cli: Cli, src: Path) -> None:
    cli.fails("encrypt", src, tmp_path / "o.img", code=2)  # no --key-file
    cli.fails("encrypt", src, code=2)
    cli.fails("frobnicate", code=2)
    assert leftovers(tmp_path) == []


def test_wrong_key_is_one_line(tmp_path: Path, cli: Cli, keyfile: Path, src: Path) -> None:
    out = tmp_path / "e.img"
    cli("encrypt", src, out, "--key-file", keyfile, *FAST)
    other = tmp_path / "other.key"
    cli("keygen", other)
    assert "no key slot opens" in cli.fails("verify", out, "--key-file", other)
    assert "no key slot opens" in cli.fails("decrypt", out, tmp_path / "d.raw", "--key-file", other)
    assert not (tmp_path / "d.raw").exists() and leftovers(tmp_path) == []


def test_verify_detects_a_changed_source(tmp_path: Path, cli: Cli, keyfile: Path,
                                         src: Path) -> None:
    out = tmp_path / "e.img"
    cli("encrypt", src, out, "--key-file", keyfile, *FAST)
    other = pattern_disk(tmp_path / "other.raw", 2, seed=7)
    assert "does not decrypt to" in cli.fails("verify", out, "--key-file", keyfile, "--source",
                                              other)


def test_no_chs_note_for_lukspack_classic_vhds(tmp_path: Path, cli: Cli) -> None:
    """Its CHS is the VHD specification's rounding of current_size, which tapdisk and qemu
    ignore for a 'tap\\0' creator: decrypt and verify say nothing about it."""
    import base64

    src = pattern_disk(tmp_path / "src.raw", 4)
    key = tmp_path / "c.key"
    key.write_bytes(base64.b64encode(bytes(range(64))))
    key.chmod(0o600)
    cli("encrypt", src, tmp_path / "o.vhd", "--key-file", key)
    for args in (["verify", tmp_path / "o.vhd", "--key-file", key, "--source", src],
                 ["decrypt", tmp_path / "o.vhd", tmp_path / "d.raw", "--key-file", key]):
        p = cli(*args)
        assert b"CHS" not in p.stdout + p.stderr, p.stdout + p.stderr


def test_not_luks_and_truncated_luks(tmp_path: Path, cli: Cli, keyfile: Path, src: Path) -> None:
    assert "not a LUKS container" in cli.fails("verify", src, "--key-file", keyfile)
    out = tmp_path / "e.img"
    cli("encrypt", src, out, "--key-file", keyfile, *FAST)
    with open(out, "r+b") as f:
        f.truncate(100_000)
    err = cli.fails("verify", out, "--key-file", keyfile)
    assert "past the end" in err or "truncated" in err or "overlaps" in err


def test_header_without_payload(tmp_path: Path, cli: Cli, keyfile: Path, src: Path) -> None:
    """Cut right at the payload offset: `info` still dumps the header (as luksDump does), but
    verify and decrypt refuse it instead of reporting an empty disk."""
    out = tmp_path / "e.img"
    cli("encrypt", src, out, "--key-file", keyfile, *FAST)
    with open(out, "r+b") as f:
        f.truncate(2 * 1024 * 1024)
    assert b"Key Slot 0: ENABLED" in cli("info", out).stdout
    for cmd in (["verify", out], ["decrypt", out, tmp_path / "d.raw"]):
        assert "no payload" in cli.fails(*cmd, "--key-file", keyfile)
    assert not (tmp_path / "d.raw").exists() and leftovers(tmp_path) == []


def test_group_readable_key_warns(tmp_path: Path, cli: Cli, keyfile: Path, src: Path) -> None:
    keyfile.chmod(0o644)
    p = cli("encrypt", src, tmp_path / "e.img", "--key-file", keyfile, *FAST)
    err = p.stderr.decode()
    assert "permissions 0644 are too open" in err and keyfile.read_text() not in err
