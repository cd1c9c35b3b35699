"""Format detection by content: the one place that decides what a source file is.

`sniff(path, read_at, size)` looks at a few fixed places of a file (or of a byte range of one: an
OVA's member) and names its format: raw, vhd, vhdx, qcow2, vmdk, vdi, ova or luks. Files that are
never read as disk images are refused here with one line: compressed files (gzip, xz, zstd, bzip2,
zip, lz4, 7z), naming the compression and the command that undoes it; tar archives that are not
OVAs; and the image formats qemu-img reads and lukspack does not (qcow version 1, QED, Parallels,
Bochs, cloop, DMG: see FOREIGN), naming the format and the `qemu-img convert` command that makes a
qcow2 of it. A file is RAW only when it is none of these.
`disk_signature()` says whether a RAW disk starts with a partition table or a file system (a RAW
source without either gets a warning, see raw.py). This module imports no reader and no LUKS code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lukspack.errors import UnsupportedError
from lukspack.images.vhd import FOOTER_COOKIE, FOOTER_SIZE, parse_footer

ReadAt = Callable[[int, int], bytes]  # (offset, length) -> bytes; short at the end of the file

FORMATS = ("raw", "vhd", "qcow2", "vmdk", "vhdx", "vdi", "ova")  # what --input-format may name

# -- signatures at offset 0 ---------------------------------------------------------------------
QCOW2_MAGIC = b"QFI\xfb"
QCOW2_CRYPT_METHOD_AT = 32  # be32: 0 none, 1 AES (legacy), 2 LUKS
HEAD_SIGNATURES = (
    (QCOW2_MAGIC, "qcow2"),
    (b"KDMV", "vmdk"),
    (b"COWD", "vmdk"),
    (b"# Disk DescriptorFile", "vmdk"),
    (b"vhdxfile", "vhdx"),
    (FOOTER_COOKIE, "vhd"),  # a dynamic VHD's footer copy
    (b"LUKS\xba\xbe", "luks"),
    (b"LUKS\xde\xad", "luks"),  # a LUKS1 header cryptsetup-reencrypt left mid-way
)
VDI_SIGNATURE_AT, VDI_SIGNATURE = 0x40, b"\x7f\x10\xda\xbe"  # 0xbeda107f, little-endian (vdi.py)

# -- formats qemu-img reads and lukspack does not: (offset, magic, qemu-img's name, what) --------
# Their magics are those of qemu's block/*.c probe functions; an offset < 0 counts from the end.
FOREIGN = (
    (0, b"QED\x00", "qed", "QED (QEMU enhanced disk)"),
    (0, b"WithoutFreeSpace", "parallels", "Parallels"),
    (0, b"WithouFreSpacExt", "parallels", "Parallels"),
    (0, b"Bochs Virtual HD Image\x00", "bochs", "Bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0", "cloop", "cloop (compressed loop)"),
    (-512, b"koly\x00\x00\x00\x04\x00\x00\x02\x00", "dmg", "Apple DMG (UDIF)"),
)
QCOW1_VERSION = 1  # "QFI\xfb" then be32 version: 1 is qcow (qemu's qcow driver), 2 and 3 qcow2
# A LUKS2 image whose primary header is lost: the secondary header's magic and version 2 sit at
# the primary's size, one of 16 KiB .. 4 MiB (the same table as luks/luks2_json.METADATA_SIZES).
LUKS2_SECONDARY = b"SKUL\xba\xbe\x00\x02"
LUKS2_SECONDARY_AT = tuple(0x4000 << i for i in range(9))

# -- compressed files: (magic, name, the command that undoes it) --------------------------------
COMPRESSIONS = (
    (b"\x1f\x8b\x08", "gzip", "gunzip"),
    (b"\xfd7zXZ\x00", "xz", "unxz"),
    (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
    (b"PK\x03\x04", "zip", "unzip"),
    (b"PK\x05\x06", "zip", "unzip"),
    (b"\x04\x22\x4d\x18", "lz4", "unlz4"),
    (b"7z\xbc\xaf\x27\x1c", "7z", "7z x"),
)
BZIP2_MAGIC = b"BZh"
BZIP2_BLOCK = (b"1AY&SY", b"\x17rE8P\x90")  # first block, or the end of an empty stream

# -- tar (POSIX ustar, GNU, v7) -----------------------------------------------------------------
TAR_BLOCK = 512
TAR_CHKSUM = slice(148, 156)

# -- what a RAW disk starts with: (offset, bytes, what) -----------------------------------------
DISK_SIGNATURES = (
    (510, b"\x55\xaa", "an MBR or boot sector"),
    (512, b"EFI PART", "a GPT"),
    (4096, b"EFI PART", "a GPT (4 KiB sectors)"),
    (1080, b"\x53\xef", "an ext2/3/4 file system"),
    (0, b"XFSB", "an XFS file system"),
    (65600, b"_BHRfS_M", "a Btrfs file system"),
    (4086, b"SWAPSPACE2", "Linux swap"),
    (4086, b"SWAP-SPACE", "Linux swap"),
    (65526, b"SWAPSPACE2", "Linux swap (64 KiB pages)"),
    (0, b"LABELONE", "an LVM2 physical volume"),
    (512, b"LABELONE", "an LVM2 physical volume"),
    (1024, b"LABELONE", "an LVM2 physical volume"),
    (1536, b"LABELONE", "an LVM2 physical volume"),
    (32769, b"CD001", "an ISO 9660 file system"),
    (0, b"LUKS\xba\xbe", "a LUKS header"),
    (0, b"hsqs", "a SquashFS file system"),
    (1024, b"\x10\x20\xf5\xf2", "an F2FS file system"),
)


@dataclass(frozen=True)
class Sniffed:
    format: str  # raw, vhd, vhdx, qcow2, vmdk, vdi, ova or luks
    qcow2_crypt_method: int | None = None  # qcow2 only: 0 none, 1 AES, 2 LUKS
    luks_primary_lost: bool = False  # luks only: only the LUKS2 secondary header is there

    @property
    def encrypted(self) -> bool:
        return self.format == "luks" or bool(self.qcow2_crypt_method)


def compression(head: bytes) -> tuple[str, str] | None:
    """(name, decompressing command) when head starts a compressed file."""
    for magic, name, tool in COMPRESSIONS:
        if head.startswith(magic):
            return name, tool
    if head.startswith(BZIP2_MAGIC) and head[3:4] in b"123456789" and len(head) >= 10 \
            and head[4:10] in BZIP2_BLOCK:
        return "bzip2", "bunzip2"
    return None


def is_tar_header(block: bytes) -> bool:
    """A tar header block: its checksum matches (ustar, GNU and v7 headers all carry one)."""
    if len(block) < TAR_BLOCK or not any(block[:100]):
        return False
    field = block[TAR_CHKSUM].replace(b"\x00", b" ").strip()
    if not field or any(c not in b"01234567" for c in field):
        return False
    stored = int(field, 8)
    rest = block[:148] + b" " * 8 + block[156:TAR_BLOCK]
    return stored in (sum(rest), sum(b - 256 if b > 127 else b for b in rest))


def sniff(path: str, read_at: ReadAt, size: int, *, in_archive: bool = False) -> Sniffed:
    """Name the format of the file (or member) of `size` bytes that read_at reads.

    The name only breaks the raw/VHD tie: a file ending in a valid VHD footer whose name says it
    is raw (`qemu-img convert -O raw` of a fixed VHD without -f vpc) is raw; a damaged footer is a
    damaged VHD (the VHD reader refuses it) whatever the name says."""
    head = read_at(0, TAR_BLOCK) if size else b""
    foreign = foreign_format(read_at, size, head)
    if foreign is not None:
        raise UnsupportedError(foreign_message(path, *foreign, in_archive=in_archive))
    if head[VDI_SIGNATURE_AT : VDI_SIGNATURE_AT + 4] == VDI_SIGNATURE:
        return Sniffed("vdi")
    for magic, name in HEAD_SIGNATURES:
        if head.startswith(magic):
            if name == "qcow2" and len(head) >= QCOW2_CRYPT_METHOD_AT + 4:
                at = QCOW2_CRYPT_METHOD_AT
                return Sniffed(name, qcow2_crypt_method=int.from_bytes(head[at : at + 4], "big"))
            return Sniffed(name)
    packed = compression(head)
    if packed is not None:
        name, tool = packed
        raise UnsupportedError(f"{path}: is {name}-compressed; decompress it first ({tool})")
    if is_tar_header(head):
        if in_archive:
            raise UnsupportedError(f"{path}: is a tar archive inside the archive; extract it first")
        return Sniffed("ova")  # the OVA reader refuses a tar that holds no .ovf descriptor
    for off in LUKS2_SECONDARY_AT:
        if off + len(LUKS2_SECONDARY) <= size and \
                read_at(off, len(LUKS2_SECONDARY)) == LUKS2_SECONDARY:
            return Sniffed("luks", luks_primary_lost=True)
    if size >= FOOTER_SIZE:
        tail = read_at(size - FOOTER_SIZE, FOOTER_SIZE)
        if tail.startswith(FOOTER_COOKIE):
            footer = parse_footer(tail)
            if footer is not None and footer["checksum_ok"] and \
                    path.lower().endswith(RAW_SUFFIXES):
                return Sniffed("raw")
            return Sniffed("vhd")
    return Sniffed("raw")


RAW_SUFFIXES = (".raw", ".img", ".bin", ".dd")


def foreign_format(read_at: ReadAt, size: int, head: bytes) -> tuple[str, str] | None:
    """(qemu-img's format name, what it is) of a format lukspack does not read, else None."""
    if head.startswith(QCOW2_MAGIC) and int.from_bytes(head[4:8], "big") == QCOW1_VERSION:
        return "qcow", "qcow (version 1)"
    for off, magic, name, what in FOREIGN:
        at = size + off if off < 0 else off
        if at < 0 or at + len(magic) > size:
            continue
        got = head[at : at + len(magic)] if at + len(magic) <= len(head) else \
            read_at(at, len(magic))
        if got == magic:
            return name, what
    return None


def convert_command(path: str, qemu_format: str) -> str:
    """The qemu-img command that writes a qcow2 lukspack reads from a file qemu-img reads."""
    import os
    import shlex

    stem, ext = os.path.splitext(path)
    out = f"{stem}-converted.qcow2" if ext.lower() == ".qcow2" else f"{stem}.qcow2"
    return f"qemu-img convert -f {qemu_format} -O qcow2 {shlex.quote(path)} {shlex.quote(out)}"


def foreign_message(path: str, qemu_format: str, what: str, *, in_archive: bool = False) -> str:
    if in_archive:
        return (f"{path}: is a {what} image (qemu-img format {qemu_format}), which lukspack does "
                f"not read; extract it and convert it with `qemu-img convert -f {qemu_format} "
                "-O qcow2`")
    return (f"{path}: is a {what} image (qemu-img format {qemu_format}), which lukspack does not "
            f"read; convert it first: {convert_command(path, qemu_format)}")


def disk_signature(read_at: ReadAt, size: int) -> str | None:
    """What the start of a RAW disk holds (a partition table, a file system), None if nothing
    lukspack knows."""
    for off, magic, what in DISK_SIGNATURES:
        if off + len(magic) <= size and read_at(off, len(magic)) == magic:
            return what
    return None


def no_signature_warning(path: str) -> str:
    return (f"{path}: has no partition table (MBR, GPT) and no file system signature at its start; "
            "it is read as a RAW disk, check it is the disk you mean")
