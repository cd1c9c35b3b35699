"""scripts/demo.sh installs only what lukspack needs to run; scripts/test.sh adds the test
extras. Both scripts run for real in a copy of the checkout, with a stand-in Python whose venv
records every command instead of installing (no network, seconds)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.helpers import ROOT

FAKE_PYTHON = """#!/bin/bash
# `python3 -m venv .venv`: a venv whose python, lukspack, ruff and mypy record their arguments
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  for tool in python lukspack ruff mypy; do
    printf '#!/bin/bash\\necho "%s $*" >> "$LOG"\\n' "$tool" > "$3/bin/$tool"
    chmod +x "$3/bin/$tool"
  done
  exit 0
fi
echo "unexpected: $*" >&2
exit 1
"""


def _checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "scripts", root / "scripts")
    for name in ("pyproject.toml", "setup.py"):
        shutil.copy(ROOT / name, root / name)
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return root


def _run(root: Path, script: str, log: Path) -> list[str]:
    env = {**os.environ, "PYTHON": str(root.parent / "python3"), "LOG": str(log)}
    env.pop("LUKSPACK_EXTRAS", None)
    p = subprocess.run(["bash", f"scripts/{script}"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return log.read_text().splitlines()


def test_demo_installs_lukspack_without_the_test_extras(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    calls = _run(root, "demo.sh", tmp_path / "demo.log")
    installs = [c for c in calls if c.startswith("python -m pip install --quiet -e")]
    assert installs == ["python -m pip install --quiet -e ."], calls
    assert any(c.startswith("lukspack verify") for c in calls)  # the demo itself ran
    assert (root / ".venv/.lukspack-installed").exists()


def test_test_sh_installs_the_test_extras(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    calls = _run(root, "test.sh", tmp_path / "test.log")
    installs = [c for c in calls if c.startswith("python -m pip install --quiet -e")]
    assert installs == ["python -m pip install --quiet -e .[test]"], calls
    assert "ruff check ." in calls and "mypy " in calls  # mypy strict, its config in pyproject
    assert calls.index("mypy ") < next(i for i, c in enumerate(calls) if c.startswith("python -m pytest"))
    # a demo after the tests finds lukspack installed (with more), and installs only lukspack
    calls = _run(root, "demo.sh", tmp_path / "demo.log")
    assert [c for c in calls if "pip install --quiet -e" in c] == \
        ["python -m pip install --quiet -e ."]
