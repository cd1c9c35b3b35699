"""Loader for the published test vectors kept as text files in this folder."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def load(name: str) -> list[dict[str, str]]:
    """Parse `Key = value` blocks separated by blank lines; '#' starts a comment line."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in (HERE / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            continue
        if not line:
            if current:
                records.append(current)
                current = {}
            continue
        key, _, value = line.partition("=")
        current[key.strip()] = value.strip()
    if current:
        records.append(current)
    return records
