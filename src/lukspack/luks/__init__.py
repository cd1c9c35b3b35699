"""LUKS containers: headers, key slots, the anti-forensic splitter and key derivation.

The entry points, importable from here (loaded on first use, so `import lukspack.luks.kdf`
stays light): `open_luks`, `open_luks_path`, `open_luks_bytes` (open.py), `LuksVolume` and
`ReadAt` (volume.py), `KdfCache` (kdf.py).
"""

from __future__ import annotations

from typing import Any

__all__ = ["KdfCache", "LuksVolume", "ReadAt", "open_luks", "open_luks_bytes", "open_luks_path"]


def __getattr__(name: str) -> Any:
    if name in ("open_luks", "open_luks_path", "open_luks_bytes"):
        from lukspack.luks import open as module
    elif name in ("LuksVolume", "ReadAt"):
        from lukspack.luks import volume as module  # type: ignore[no-redef]
    elif name == "KdfCache":
        from lukspack.luks import kdf as module  # type: ignore[no-redef]
    else:
        raise AttributeError(f"module 'lukspack.luks' has no attribute {name!r}")
    return getattr(module, name)
