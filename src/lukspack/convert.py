"""`lukspack convert`: write a source's virtual disk as RAW, fixed or dynamic VHD, or plain qcow2
(the documented steps 1 and 2, for people who still want them)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lukspack.engine import ProgressFn, phase_progress
from lukspack.errors import LukspackError, UnsupportedError
from lukspack.images import DiskImage, announce, open_image, source_files
from lukspack.options import StreamOptions
from lukspack.pipeline import run_stream
from lukspack.sinks.file import FileSink, open_file_output
from lukspack.sinks.paths import check_output_path

MiB = 1 << 20
Out = FileSink


def round_up(n: int, unit: int = MiB) -> int:
    return -(-n // unit) * unit


def convert(source: str, output: str, to: str, *, force: bool = False,
            opts: StreamOptions | None = None, progress: ProgressFn | None = None,
            input_format: str | None = None, disk: int | None = None,
            protected: tuple[tuple[str, str], ...] = (), remote: Any = None) -> dict[str, Any]:
    """Write the source's virtual disk as RAW, a fixed VHD (disk + 512-byte footer), a dynamic
    VHD (2 MiB blocks; all-zero blocks stay unallocated) or a plain qcow2."""
    opts = opts or StreamOptions()
    if to not in CONVERT_TARGETS:
        raise LukspackError(f"--to {to} is not supported (use {', '.join(CONVERT_TARGETS)})")
    check_output_path(output, force, (("source", source), *protected))  # before any read
    from lukspack.disks import encryption_of

    kind = encryption_of(source, input_format)
    if kind is not None:
        what = {"luks": "LUKS", "qcow2-luks": "qcow2+LUKS", "vhd-crypt": "encrypted VHD"}[kind]
        raise UnsupportedError(f"{source}: is encrypted ({what}); convert reads plain images: "
                               f"decrypt it first (lukspack decrypt {source} OUT.raw --key-file "
                               "KEY)")
    with open_image(source, input_format, disk, remote=remote) as image:
        size = image.virtual_size
        out = open_file_output(output, force=force, protected=tuple(
            ("source", s) for s in source_files(image)) + protected)
        with out:
            out.begin(0, image.allocated_size())
            announce(image)  # before the work: a RAW with no partition table is said first
            bytes_out = CONVERT_TARGETS[to](image, out, opts,
                                            phase_progress(progress, "convert", size))
            image.check_unchanged()  # after the last read, before the output is committed
            out.finish(bytes_out)
            out.commit()
        return {"source": image.path, "source_format": image.format_name, "output": output,
                "format": to, "virtual_size": size, "bytes": bytes_out,
                **({"warnings": list(image.warnings)} if image.warnings else {})}


def _to_raw(image: DiskImage, out: Out, opts: StreamOptions,
            progress: Callable[[int], None] | None, footer: bytes = b"",
            size: int | None = None) -> int:
    size = image.virtual_size if size is None else size
    out.truncate(size + len(footer))  # all-zero 4 KiB blocks stay holes, as qemu-img leaves them
    run_stream(size, image.read_into, lambda o, d, m: out.write_sparse(o, d),
               chunk_size=opts.chunk_size, progress=progress)
    if footer:
        out.pwrite(size, footer)
    return size + len(footer)


def _vhd_footer(size: int, disk_type: int, data_offset: int) -> bytes:
    from lukspack.images.vhd import make_footer

    return make_footer(size, disk_type, data_offset, unique_id=secrets.token_bytes(16),
                       timestamp=max(0, int(time.time()) - 946684800))  # seconds since 2000


def _to_vhd_fixed(image: DiskImage, out: Out, opts: StreamOptions,
                  progress: Callable[[int], None] | None) -> int:
    from lukspack.images.vhd import DISK_FIXED

    size = round_up(image.virtual_size, 512)  # as qemu-img: a partial last sector is padded
    return _to_raw(image, out, opts, progress, _vhd_footer(size, DISK_FIXED, 0xFFFFFFFFFFFFFFFF),
                   size)


def _to_vhd_dynamic(image: DiskImage, out: Out, opts: StreamOptions,
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


def _to_qcow2(image: DiskImage, out: Out, opts: StreamOptions,
              progress: Callable[[int], None] | None) -> int:
    """A plain qcow2 v3 (64 KiB clusters, all-zero clusters not stored)."""
    from lukspack.images.qcow2_write import Qcow2Writer

    writer = Qcow2Writer(image.virtual_size)
    cs = writer.cluster_size

    def read(offset: int, view: memoryview) -> Any:
        image.read_into(offset, view)
        return writer.plan(offset, view)

    def write(offset: int, data: memoryview, plan: Any) -> None:
        for r in plan.runs:
            out.pwrite(r.dest, data[r.start : r.start + r.length])
        for dest, table in plan.metadata:
            out.pwrite(dest, table)

    run_stream(writer.stream_size, read, write, chunk_size=max(cs, opts.chunk_size // cs * cs),
               progress=progress)
    fin = writer.finish()
    for dest, data in [*fin.trailer, (0, fin.prefix)]:
        out.pwrite(dest, data)
    return fin.total_size


CONVERT_TARGETS: dict[str, Callable[..., int]] = {
    "raw": _to_raw,
    "vhd-fixed": _to_vhd_fixed,
    "vhd-dynamic": _to_vhd_dynamic,
    "qcow2": _to_qcow2,
}
