"""Peers and test tools are never skipped (tests/helpers.py): a test that needs mkfs.*, sfdisk, a
compressor or qemu-system calls `require`/`tool`, which fail; scripts/test.sh installs them."""

from __future__ import annotations

import re

import pytest

from tests.helpers import ROOT, require

# a skip decided by whether a program is on PATH: what `require` replaces
SKIP_ON_WHICH = re.compile(r"skipif\([^)]*shutil\.which|if shutil\.which\([^)]*\) is None[^\n]*"
                           r"(?:\n[^\n]*){0,2}pytest\.skip")


def test_no_test_skips_when_a_tool_is_missing() -> None:
    found = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")
             if SKIP_ON_WHICH.search(p.read_text())]
    assert found == [], f"skips on a missing tool (use tests.helpers.require): {found}"


def test_require_fails_and_names_the_tool() -> None:
    with pytest.raises(pytest.fail.Exception, match="no-such-tool-4711 is required: "
                                                    "scripts/test.sh installs it"):
        require("sfdisk", "no-such-tool-4711")
