"""Input images: format detection by content (sniff.py) and the one reader interface
(base.DiskImage). `open_image` is the only way the rest of lukspack opens a source."""

from __future__ import annotations

import os
import stat
from typing import Any

from lukspack.errors import FormatError, LukspackError, UnsupportedError
from lukspack.images.base import DiskImage, Extent
from lukspack.images.sniff import FORMATS, ReadAt, Sniffed, sniff
from lukspack.images.source import ByteSource, LocalFile

__all__ = ["DiskImage", "Extent", "open_image", "announce", "detect_format", "sniff_file", "source_files",
           "check_source_type", "open_source", "open_bytes", "FORMATS", "Sniffed", "ByteSource"]

Window = tuple[int, int] | None

_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISDIR, "a directory"))


def _reader_at(src: ByteSource, base: int = 0) -> ReadAt:
    return lambda offset, size: src.read_at(base + offset, size)


def sniff_file(path: str, fd: int | ByteSource) -> Sniffed:
    """What the open file is (format, and for qcow2 its crypt_method); see sniff.sniff."""
    src = fd if isinstance(fd, ByteSource) else LocalFile(fd, path)
    return sniff(path, _reader_at(src), src.size)


def detect_format(path: str, fd: int | ByteSource) -> str:
    """The format name of an open file: raw, vhd, vhdx, qcow2, vmdk, vdi, ova or luks (a LUKS2
    image whose primary header is lost included). UnsupportedError for compressed files and for
    the formats qemu-img reads and lukspack does not (sniff.FOREIGN)."""
    return sniff_file(path, fd).format


def check_source_type(path: str, st: os.stat_result) -> None:
    """Refuse what is not a regular file or a block device, in one line, before reading it."""
    for test, what in _SPECIAL:
        if test(st.st_mode):
            raise LukspackError(f"{path}: is {what}, not a disk image (lukspack reads regular "
                                "files and block devices)")
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISBLK(st.st_mode):
        raise LukspackError(f"{path}: is not a regular file or block device")


def open_source(path: str) -> int:
    """A read-only descriptor of a regular file or block device; anything else is refused
    before it is opened (opening a FIFO for reading blocks until a writer comes)."""
    try:
        check_source_type(path, os.stat(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise LukspackError(f"{path}: cannot open: {e.strerror}") from None
    try:
        check_source_type(path, os.fstat(fd))  # replaced between stat and open?
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _reader(found: str, path: str, fd: ByteSource, window: Window) -> DiskImage:
    if found == "raw":
        from lukspack.images.raw import RawImage

        return RawImage(path, fd, window)
    if found == "vhd":
        from lukspack.images.vhd import VhdImage
        from lukspack.images.vhd_crypt import is_encrypted_vhd

        if window is None and is_encrypted_vhd(fd):  # its blocks are ciphertext: never a source
            raise UnsupportedError(f"{path}: is already an encrypted VHD (vhd-util); decrypt "
                                   "it first or use it as it is")
        return VhdImage(path, fd, window)
    if found == "qcow2":
        from lukspack.images.qcow2 import Qcow2Image

        return Qcow2Image(path, fd, window)
    if found == "vmdk":
        from lukspack.images.vmdk import VmdkImage

        return VmdkImage(path, fd, window)
    if found == "vhdx":
        from lukspack.images.vhdx import VhdxImage

        return VhdxImage(path, fd, window)
    if found == "vdi":
        from lukspack.images.vdi import VdiImage

        return VdiImage(path, fd, window)
    if found == "luks":
        raise UnsupportedError(f"{path}: is already a LUKS container; decrypt it first or "
                               "use it as it is")
    raise UnsupportedError(f"{path}: {found} images are not supported")


def _open_ova(path: str, fd: ByteSource, disk: int | None) -> DiskImage:
    from lukspack.images.ova import ova_disks, pick_disk

    size = fd.size
    disks = ova_disks(path, _reader_at(fd), size)
    index = pick_disk(path, disks, disk)
    member = disks[index]
    found = sniff(f"{path}: disk {member.name}", _reader_at(fd, member.offset), member.size,
                  in_archive=True)
    if found.format in ("luks", "ova"):
        raise UnsupportedError(f"{path}: disk {member.name} is a {found.format} image, not a "
                               "plain disk")
    if not member.size:
        raise FormatError(f"{path}: disk {member.name} is empty (0 bytes)")
    image = _reader(found.format, path, fd, (member.offset, member.size))
    image.archive = {"format": "ova", "disk": member.name, "index": index,
                     "disks": [m.name for m in disks], "offset": member.offset,
                     "size": member.size}
    return image


def source_files(image: DiskImage) -> tuple[str, ...]:
    """Every file an image reads (a VMDK descriptor names extent files): none may be an output."""
    return image.files


def open_bytes(path: str, remote: Any = None) -> ByteSource:
    """The ByteSource of a path (a regular file or block device, read-only) or of a remote
    object (cos://REGION/BUCKET/OBJECT, http(s)://...; `remote`: its options, see
    lukspack.remote.open_remote)."""
    from lukspack.remote import is_remote

    if is_remote(path):
        from lukspack.remote import open_remote

        src: ByteSource = open_remote(path, remote)
        return src
    fd = open_source(path)
    try:
        src = LocalFile(fd, path)
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if st.st_size == 0 and stat.S_ISREG(st.st_mode):
        src.close()
        raise FormatError(f"{path}: is empty (0 bytes), not a disk image")
    return src


def announce(image: DiskImage) -> None:
    """Issue the image's notes (image.warnings: a RAW with no partition table) as Python
    warnings, once its checks have passed and before the work starts: a user reads them before
    hours of streaming, not after. Summaries still list them under "warnings"."""
    import warnings

    for note in image.warnings:
        warnings.warn(note, stacklevel=3)


def open_image(path: str, fmt: str | None = None, disk: int | None = None, *,
               remote: Any = None) -> DiskImage:
    """Open a disk image read-only, detecting its format unless fmt names it; `disk` picks a
    disk of an OVA by its index (0 is the first, as --disk counts). path may name a remote
    object (see open_bytes); remote: its options."""
    fd = open_bytes(path, remote)
    path = fd.name  # a remote URL as messages show it (no query string)
    try:
        if fd.size == 0 and fd.fd < 0:
            raise FormatError(f"{fd.name}: is empty (0 bytes), not a disk image")
        found = fmt or detect_format(path, fd)
        if disk is not None and found != "ova":
            raise UnsupportedError(f"{path}: is a {found} image, not an OVA; a disk index "
                                   f"(--disk {disk}) applies only to OVA archives")
        return _open_ova(path, fd, disk) if found == "ova" else _reader(found, path, fd, None)
    except BaseException:
        fd.close()
        raise
