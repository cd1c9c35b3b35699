"""`lukspack info`: describe any image: a LUKS header as `cryptsetup luksDump` shows it, a
qcow2+LUKS image's layout with its LUKS header, or a disk image's layout."""

from __future__ import annotations

import os
from typing import Any

from lukspack.disks import encryption_of
from lukspack.images import open_image, open_source
from lukspack.images.encrypted import open_qcow2_luks
from lukspack.luks import open_luks
from lukspack.luks.volume import dump_header
from lukspack.remote import is_remote, source_reads


def _fd(path: str) -> int:
    return open_source(path)


def info(path: str, input_format: str | None = None, disk: int | None = None, *,
         remote: Any = None) -> dict[str, Any]:
    """What the image is; a remote source (remote: its options) is read as a plain image."""
    kind = None if is_remote(path) else encryption_of(path, input_format)
    if kind == "vhd-crypt":
        from lukspack.images.vhd_crypt import encrypted_vhd_info

        return encrypted_vhd_info(path)
    if kind == "luks":
        fd = _fd(path)
        try:
            vol = open_luks(path, fd)
            d = {"format": f"luks{vol.version}", "file_size": os.fstat(fd).st_size,
                 "payload_offset": vol.payload_offset, "payload_bytes": vol.payload_size,
                 "sector_size": vol.sector_size, "luks": vol.dump()}
            if vol.payload_problem:  # cryptsetup loads it; lukspack cannot open the payload
                d["notes"] = [f"verify and decrypt refuse this image: {vol.payload_problem}"]
            return d
        finally:
            os.close(fd)
    if kind == "qcow2-luks":
        fd = _fd(path)
        qcow = None
        try:
            qcow, vol = open_qcow2_luks(path, fd)
            d = qcow.info()
            d["encryption"] = {"format": "luks", **dump_header(vol)}
            return d
        finally:
            if qcow is not None:
                qcow.close()
            else:
                os.close(fd)
    with open_image(path, input_format, disk, remote=remote) as image:
        out: dict[str, Any] = image.info()
        reads = source_reads(image)
        if reads is not None:
            out["source_reads"] = reads
        if image.warnings:
            out["notes"] = [*out.get("notes", []), *image.warnings]
        return out
