"""Fixtures of the encrypted-VHD tests: the real vhd-util's samples, decompressed once per session
into a temporary directory (never into the repository)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.vhd_crypt.drive import PLAINTEXT_SHA256, VECTORS, unxz


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vs.vhd, vs-aes256.vhd, vs-aes128.vhd and vs.raw (make_source.py) in one directory."""
    if not (VECTORS / "README.md").is_file():
        pytest.skip(f"the vhd-util samples are not at {VECTORS} (../shared/vectors/vhd-util)")
    d = tmp_path_factory.mktemp("vhd-util")
    for name in ("vs.vhd.xz", "vs-aes256.vhd.xz", "vs-aes128.vhd.xz"):
        unxz(name, d)
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["make_source.py", str(d / "vs.raw")]
    try:
        runpy.run_path(str(VECTORS / "make_source.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert hashlib.sha256((d / "vs.raw").read_bytes()).hexdigest() == PLAINTEXT_SHA256
    return d


@pytest.fixture(scope="session")
def sample_keys(tmp_path_factory: pytest.TempPathFactory, samples: Path) -> dict[str, Path]:
    """The sample keys copied with mode 0600 (lukspack warns about group/world-readable keys)."""
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("aes256.key", "aes128.key", "aes256.dek", "aes128.dek"):
        p = d / name
        p.write_bytes((VECTORS / name).read_bytes())
        p.chmod(0o600)
        out[name] = p
    return out
