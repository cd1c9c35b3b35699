"""`lukspack size`: the documented step-4 arithmetic, done right for each output format."""

from __future__ import annotations

from typing import Any

from lukspack.errors import LukspackError
from lukspack.images import open_image
from lukspack.luks import luks1
from lukspack.luks.luks2 import DEFAULT_DATA_OFFSET

MiB = 1 << 20
SIZE_TYPES = ("luks1", "luks2", "vhd")


def round_up(n: int, unit: int = MiB) -> int:
    return -(-n // unit) * unit


def size_report(source: str, luks_type: str = "luks1", input_format: str | None = None,
                disk: int | None = None, remote: Any = None) -> dict[str, Any]:
    with open_image(source, input_format, disk, remote=remote) as image:
        raw = image.virtual_size
        source = image.path  # a remote URL without its query string
    if luks_type == "vhd":
        from lukspack.containers.encrypted_vhd import encrypted_vhd_size

        return {"source": source, "type": "vhd", "source_bytes": raw, **encrypted_vhd_size(raw)}
    if luks_type == "luks1":
        header = luks1.header_bytes(64)
    elif luks_type == "luks2":
        header = DEFAULT_DATA_OFFSET  # 2 x 16 KiB headers + keyslots area up to 16 MiB
    else:
        raise LukspackError(f"--type {luks_type} is not supported (use {', '.join(SIZE_TYPES)})")
    payload = round_up(raw)
    total = header + payload
    documented = round_up(raw + 4 * MiB)
    return {
        "source": source, "type": luks_type, "source_bytes": raw, "header_bytes": header,
        "payload_bytes": payload, "total_bytes": total, "total_mib": total // MiB,
        "documented_total_bytes": documented, "documented_fits": documented - header >= raw,
    }
