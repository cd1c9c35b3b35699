"""LUKS containers: headers, key slots, the anti-forensic splitter and key derivation.

The entry points, importable from here (loaded on first use, so `import lukspack.luks.kdf`
stays light): `open_luks`, `open_luks_path`, `open_luks_bytes` (open.py), `LuksVolume` and
`ReadAt` (volume.py), `KdfCache` (kdf.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker sees; at run time __getattr__ loads them
    from lukspack.luks.kdf import KdfCache
    from lukspack.luks.open import open_luks, open_luks_bytes, open_luks_path
    from lukspack.luks.volume import LuksVolume, ReadAt

__all__ = ["KdfCache", "LuksVolume", "ReadAt", "open_luks", "open_luks_bytes", "open_luks_path"]

_HOMES = {"open_luks": "open", "open_luks_path": "open", "open_luks_bytes": "open",
          "LuksVolume": "volume", "ReadAt": "volume", "KdfCache": "kdf"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lukspack.luks' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lukspack.luks.{home}"), name)
