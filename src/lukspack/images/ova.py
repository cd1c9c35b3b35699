"""OVA archives (DMTF OVF 1.x/2.x, DSP0243): a tar holding an .ovf descriptor and the disks.

VMware and VirtualBox export a tar whose first member is the .ovf, then a .mf manifest, then
streamOptimized VMDKs. The disk is read in place: the image reader gets the member's byte range
of the tar (a `window`), nothing is extracted. The disks are the files the OVF's DiskSection
names (`Disk/@fileRef` -> `References/File/@href`), in DiskSection order; an OVF that names none
falls back to the members whose names end in .vmdk. A disk is picked by its index (0 is the
first, as `--disk` counts) when the OVA holds more than one.

The tar reader here knows POSIX ustar, pax (`path` and `size` records) and GNU long names; it
checks every header checksum and every bound, and reads at most MAX_MEMBERS headers. Refused:
members stored as GNU sparse files, OVF files split in chunks (`ovf:chunkSize`) or compressed
(`ovf:compression`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from lukspack.errors import FormatError, UnsupportedError
from lukspack.images.sniff import TAR_BLOCK, ReadAt, is_tar_header

MAX_MEMBERS = 10000
MAX_LONG_NAME = 64 << 10  # GNU 'L' and pax headers are read whole: bounded
MAX_OVF = 4 << 20
TAR_NAME = slice(0, 100)
TAR_SIZE = slice(124, 136)
TAR_TYPE = slice(156, 157)
TAR_USTAR = slice(257, 263)
TAR_PREFIX = slice(345, 500)
POSIX_MAGIC = b"ustar\x00"
REGULAR = (b"0", b"\x00", b"7")
GNU_LONGNAME, GNU_SPARSE, PAX_LOCAL, PAX_GLOBAL = b"L", b"S", b"x", b"g"
DISK_SUFFIX = ".vmdk"


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of its data in the tar
    size: int
    regular: bool
    sparse: bool = False


def _cstr(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "replace")


def _number(field: bytes, path: str, at: int) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        if field[0] != 0x80:
            raise FormatError(f"{path}: tar header at offset {at} has a negative or huge size")
        return int.from_bytes(field[1:], "big")
    text = field.replace(b"\x00", b" ").strip()
    if text and any(c not in b"01234567" for c in text):
        raise FormatError(f"{path}: tar header at offset {at} has a size that is not octal")
    return int(text, 8) if text else 0


def _pax(data: bytes, path: str, at: int) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\x00":
        space = data.find(b" ", pos)
        length = data[pos:space]
        if space < 0 or not length.isdigit() or len(length) > 12 or \
                int(length) <= space - pos + 1 or \
                pos + int(length) > len(data):
            raise FormatError(f"{path}: pax header at offset {at} has a bad record at {pos}")
        record = data[space + 1 : pos + int(length)].rstrip(b"\n")
        key, eq, value = record.partition(b"=")
        if not eq:
            raise FormatError(f"{path}: pax header at offset {at} has a record without '='")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += int(length)
    return out


def tar_members(path: str, read_at: ReadAt, size: int) -> list[Member]:
    """The members of a tar archive of `size` bytes, with the offsets of their data."""
    members: list[Member] = []
    pos = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while pos + TAR_BLOCK <= size:
        block = read_at(pos, TAR_BLOCK)
        if not any(block):
            break  # end-of-archive blocks
        if not is_tar_header(block):
            raise FormatError(f"{path}: tar header at offset {pos} is damaged (its checksum is "
                              "wrong)")
        kind = block[TAR_TYPE]
        msize = _number(block[TAR_SIZE], path, pos)
        if kind not in (GNU_LONGNAME, PAX_LOCAL, PAX_GLOBAL) and "size" in pax:
            if not (pax["size"].isascii() and pax["size"].isdigit()) or len(pax["size"]) > 20:
                raise FormatError(f"{path}: pax size {pax['size'][:40]!r} at offset {pos} is not "
                                  "a number")
            msize = int(pax["size"])
        data = pos + TAR_BLOCK
        if data + msize > size:
            raise FormatError(f"{path}: tar member at offset {pos} ({msize} bytes) runs past the "
                              f"end of the file (size {size}): the archive is truncated")
        following = data + -(-msize // TAR_BLOCK) * TAR_BLOCK
        if kind in (GNU_LONGNAME, PAX_LOCAL, PAX_GLOBAL):
            if msize > MAX_LONG_NAME:
                raise FormatError(f"{path}: tar extended header at offset {pos} is {msize} "
                                  f"bytes (more than {MAX_LONG_NAME})")
            body = read_at(data, msize)
            if kind == GNU_LONGNAME:
                long_name = _cstr(body)
            elif kind == PAX_LOCAL:
                pax = _pax(body, path, pos)
            pos = following
            continue
        name = _cstr(block[TAR_NAME])
        if block[TAR_USTAR] == POSIX_MAGIC and block[345]:
            name = f"{_cstr(block[TAR_PREFIX])}/{name}"
        name = pax.get("path", long_name or name)
        sparse = kind == GNU_SPARSE or any(k.startswith("GNU.sparse.") for k in pax)
        members.append(Member(name, data, msize, kind in REGULAR or sparse, sparse))
        if len(members) > MAX_MEMBERS:
            raise FormatError(f"{path}: tar archive has more than {MAX_MEMBERS} members")
        long_name, pax = None, {}
        pos = following
    return members


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


def ovf_disk_files(text: bytes, name: str) -> list[tuple[str, dict[str, str]]]:
    """(href, File attributes) of each disk the OVF's DiskSection names, in order."""
    try:
        root = ET.fromstring(text)
    except (ET.ParseError, ValueError, LookupError) as e:
        raise FormatError(f"{name}: OVF descriptor is not valid XML ({e})") from None
    files: dict[str, dict[str, str]] = {}
    refs: list[str] = []
    for el in root.iter():
        tag = _local(str(el.tag))
        attrs = {_local(k): v for k, v in el.attrib.items()}
        if tag == "File" and "id" in attrs and "href" in attrs:
            files[attrs["id"]] = attrs
        elif tag == "Disk" and attrs.get("fileRef"):
            refs.append(attrs["fileRef"])
    out = []
    for ref in refs:
        if ref not in files:
            raise FormatError(f"{name}: OVF disk fileRef {ref[:80]!r} names no File in References")
        out.append((files[ref]["href"], files[ref]))
    return out


def ova_disks(path: str, read_at: ReadAt, size: int) -> list[Member]:
    """The disk members of an OVA, in the order its OVF lists them."""
    members = tar_members(path, read_at, size)
    ovfs = [m for m in members if m.regular and m.name.lower().endswith(".ovf")]
    if not ovfs:
        raise UnsupportedError(f"{path}: is a tar archive with no .ovf descriptor, not an OVA; "
                               "extract the disk image from it first (tar xf)")
    ovf = ovfs[0]
    if ovf.size > MAX_OVF:
        raise FormatError(f"{path}: OVF descriptor {ovf.name} is {ovf.size} bytes (more than "
                          f"{MAX_OVF})")
    by_name = {m.name: m for m in members if m.regular}
    by_base = {m.name.rsplit("/", 1)[-1]: m for m in members if m.regular}
    disks: list[Member] = []
    for href, attrs in ovf_disk_files(read_at(ovf.offset, ovf.size), f"{path}: {ovf.name}"):
        if attrs.get("compression"):
            raise UnsupportedError(f"{path}: disk {href} is stored {attrs['compression']}-"
                                   "compressed (ovf:compression); extract and decompress it first")
        if attrs.get("chunkSize"):
            raise UnsupportedError(f"{path}: disk {href} is split in chunks (ovf:chunkSize); "
                                   "extract and join it first")
        m = by_name.get(href) or by_base.get(href.rsplit("/", 1)[-1])
        if m is None:
            raise FormatError(f"{path}: its OVF names disk file {href[:120]!r}, which is not in "
                              "the archive")
        disks.append(m)
    if not disks:
        disks = [m for m in members if m.regular and m.name.lower().endswith(DISK_SUFFIX)]
    if not disks:
        raise FormatError(f"{path}: OVA holds no disk (its OVF {ovf.name} names none and no "
                          "member is a .vmdk)")
    for m in disks:
        if m.sparse:
            raise UnsupportedError(f"{path}: disk {m.name} is stored as a GNU sparse tar member; "
                                   "extract the archive first")
    return disks


def pick_disk(path: str, disks: list[Member], disk: int | None) -> int:
    """The index in disks of disk `disk` (0 is the first, as --disk counts); None picks the
    only disk."""
    listing = ", ".join(f"{i} {m.name} ({m.size} bytes)" for i, m in enumerate(disks))
    if disk is None:
        if len(disks) > 1:
            raise UnsupportedError(f"{path}: OVA holds {len(disks)} disks: {listing}; pick one "
                                   "with --disk N")
        return 0
    if not 0 <= disk < len(disks):
        raise UnsupportedError(f"{path}: has no disk {disk}; its disks are {listing}")
    return disk
