"""`lukspack convert`: write a source's virtual disk as RAW, fixed or dynamic VHD, or plain qcow2
(the documented steps 1 and 2, for people who still want them)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lukspack.errors import LukspackError
from lukspack.images import DiskImage, open_image, source_files
from lukspack.ops import (
    EncryptOptions,
    MiB,
    ProgressFn,
    _progress,
    _sparse_writer,
    round_up,
)
from lukspack.output import AtomicOutput
from lukspack.pipeline import run_stream


def convert(source: str, output: str, to: str, *, force: bool = False,
            opts: EncryptOptions | None = None, progress: ProgressFn | None = None
            ) -> dict[str, Any]:
    """Write the source's virtual disk as RAW, a fixed VHD (disk + 512-byte footer) or a dynamic
    VHD (2 MiB blocks; all-zero blocks stay unallocated)."""
    opts = opts or EncryptOptions()
    if to not in CONVERT_TARGETS:
        raise LukspackError(f"--to {to} is not supported (use {', '.join(CONVERT_TARGETS)})")
    with open_image(source, opts.input_format) as image:
        size = image.virtual_size
        with AtomicOutput(output, force=force, sources=source_files(image)) as out:
            bytes_out = CONVERT_TARGETS[to](image, out, opts, _progress(progress, "convert", size))
            out.commit()
        return {"source": source, "source_format": image.format_name, "output": output,
                "format": to, "virtual_size": size, "bytes": bytes_out}


def _to_raw(image: DiskImage, out: AtomicOutput, opts: EncryptOptions,
            progress: Callable[[int], None] | None, footer: bytes = b"",
            size: int | None = None) -> int:
    size = image.virtual_size if size is None else size
    out.truncate(size + len(footer))
    sink = _sparse_writer(out)
    run_stream(size, image.read_into, lambda o, d, m: sink(o, d), chunk_size=opts.chunk_size,
               progress=progress)
    if footer:
        out.pwrite(size, footer)
    return size + len(footer)


def _vhd_footer(size: int, disk_type: int, data_offset: int) -> bytes:
    from lukspack.images.vhd import make_footer

    return make_footer(size, disk_type, data_offset, unique_id=secrets.token_bytes(16),
                       timestamp=max(0, int(time.time()) - 946684800))  # seconds since 2000


def _to_vhd_fixed(image: DiskImage, out: AtomicOutput, opts: EncryptOptions,
                  progress: Callable[[int], None] | None) -> int:
    from lukspack.images.vhd import DISK_FIXED

    size = round_up(image.virtual_size, 512)  # as qemu-img: a partial last sector is padded
    return _to_raw(image, out, opts, progress, _vhd_footer(size, DISK_FIXED, 0xFFFFFFFFFFFFFFFF),
                   size)


def _to_vhd_dynamic(image: DiskImage, out: AtomicOutput, opts: EncryptOptions,
                    progress: Callable[[int], None] | None) -> int:
    from lukspack.images.vhd import BAT_UNUSED, DISK_DYNAMIC, make_dynamic_header

    block = 2 * MiB
    size = round_up(image.virtual_size, 512)
    entries = -(-size // block)
    table_offset = 1536
    bat = np.full(entries, BAT_UNUSED, dtype=">u4")
    pos = [table_offset + round_up(entries * 4, 512)]
    bitmap = b"\xff" * 512

    def write(offset: int, data: memoryview, _meta: Any) -> None:
        if not np.frombuffer(data, dtype=np.uint8).any():
            return
        bat[offset // block] = pos[0] // 512
        out.pwrite(pos[0], bitmap)
        out.pwrite(pos[0] + 512, data)
        if len(data) < block:  # the last block is whole on disk
            out.pwrite(pos[0] + 512 + len(data), bytes(block - len(data)))
        pos[0] += 512 + block

    run_stream(size, image.read_into, write, chunk_size=block, progress=progress)
    footer = _vhd_footer(size, DISK_DYNAMIC, 512)
    out.pwrite(0, footer)
    out.pwrite(512, make_dynamic_header(table_offset, entries, block))
    out.pwrite(table_offset, bat.tobytes() + bytes(pos_pad(entries)))
    out.pwrite(pos[0], footer)
    return pos[0] + 512


def pos_pad(entries: int) -> int:
    """0xFF padding is not needed: the BAT area is padded with zeros to a whole sector."""
    return round_up(entries * 4, 512) - entries * 4


def _to_qcow2(image: DiskImage, out: AtomicOutput, opts: EncryptOptions,
              progress: Callable[[int], None] | None) -> int:
    from lukspack.qcow2_ops import convert_to_qcow2

    return convert_to_qcow2(image, out, opts, progress)


CONVERT_TARGETS: dict[str, Callable[..., int]] = {
    "raw": _to_raw,
    "vhd-fixed": _to_vhd_fixed,
    "vhd-dynamic": _to_vhd_dynamic,
    "qcow2": _to_qcow2,
}
