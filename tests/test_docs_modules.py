"""docs/architecture.md's "Every module" table names every file under src/lukspack, and only
those: a module added or removed without its line fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_is_in_the_architecture_table() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("### Every module", 1)[1].split("\n#", 1)[0]
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", section, flags=re.M))
    src = ROOT / "src" / "lukspack"
    present = {p.relative_to(src).as_posix() for p in src.rglob("*.py")}
    assert not present - listed, f"not in docs/architecture.md: {sorted(present - listed)}"
    assert not listed - present, f"listed but gone: {sorted(listed - present)}"
