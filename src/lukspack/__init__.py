"""lukspack: turn a VM disk image into a LUKS-encrypted image, rootless, in one streaming pass."""

from __future__ import annotations

__version__ = "0.1.0"
