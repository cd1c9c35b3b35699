"""Input images: format detection by content and the one reader interface (see base.DiskImage)."""

from __future__ import annotations

import os
import stat

from lukspack.errors import FormatError, LukspackError, UnsupportedError
from lukspack.images.base import DiskImage, Extent
from lukspack.images.raw import RawImage
from lukspack.images.vhd import FOOTER_COOKIE, FOOTER_SIZE, VhdImage, parse_footer

__all__ = ["DiskImage", "Extent", "open_image", "detect_format", "source_files", "FORMATS"]

FORMATS = ("raw", "vhd", "qcow2", "vmdk", "vhdx")
_RAW_SUFFIXES = (".raw", ".img", ".bin", ".dd")

_SIGNATURES = (
    (b"QFI\xfb", "qcow2"),
    (b"KDMV", "vmdk"),
    (b"COWD", "vmdk"),
    (b"# Disk DescriptorFile", "vmdk"),
    (b"vhdxfile", "vhdx"),
    (FOOTER_COOKIE, "vhd"),
    (b"LUKS\xba\xbe", "luks"),
)


def detect_format(path: str, fd: int) -> str:
    """Name the container format from the file's content; the name only breaks the raw/VHD tie."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, 64, 0)
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if size >= FOOTER_SIZE:
        footer = parse_footer(os.pread(fd, FOOTER_SIZE, size - FOOTER_SIZE))
        if footer is not None and footer["checksum_ok"]:
            # a raw file whose last sector is a VHD footer (what `qemu-img convert -O raw`
            # makes of a fixed VHD without -f vpc): the name says which the user means
            if path.lower().endswith(_RAW_SUFFIXES):
                return "raw"
            return "vhd"
    return "raw"


def _qcow2(path: str, fd: int) -> DiskImage:
    from lukspack.images.qcow2 import Qcow2Image

    return Qcow2Image(path, fd)


def _vmdk(path: str, fd: int) -> DiskImage:
    from lukspack.images.vmdk import VmdkImage

    return VmdkImage(path, fd)


def _vhdx(path: str, fd: int) -> DiskImage:
    from lukspack.images.vhdx import VhdxImage

    return VhdxImage(path, fd)


_READERS = {"qcow2": _qcow2, "vmdk": _vmdk, "vhdx": _vhdx}


def source_files(image: DiskImage) -> tuple[str, ...]:
    """Every file an image reads (a VMDK descriptor names extent files): none may be an output."""
    return tuple(getattr(image, "files", (image.path,)))


def open_image(path: str, fmt: str | None = None) -> DiskImage:
    """Open a disk image read-only, detecting its format unless fmt names it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise LukspackError(f"{path}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise LukspackError(f"{path}: is a directory, not a disk image")
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISBLK(st.st_mode):
            raise LukspackError(f"{path}: is not a regular file or block device")
        if st.st_size == 0 and stat.S_ISREG(st.st_mode):
            raise FormatError(f"{path}: is empty (0 bytes), not a disk image")
        found = fmt or detect_format(path, fd)
        if found == "raw":
            return RawImage(path, fd)
        if found == "vhd":
            from lukspack.images.vhd_crypt import is_encrypted_vhd

            if is_encrypted_vhd(fd):  # its blocks are ciphertext: never a plain source
                raise UnsupportedError(f"{path}: is already an encrypted VHD (vhd-util); decrypt "
                                       "it first or use it as it is")
            return VhdImage(path, fd)
        if found in _READERS:
            return _READERS[found](path, fd)
        if found == "luks":
            raise UnsupportedError(f"{path}: is already a LUKS container; decrypt it first or "
                                   "use it as it is")
        raise UnsupportedError(f"{path}: {found} images are not supported yet")
    except BaseException:
        os.close(fd)
        raise
