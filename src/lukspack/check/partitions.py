"""Partition tables: MBR (with extended partitions) and GPT (both headers, both CRCs).

Own code: an MBR is four 16-byte entries, a GPT a 92-byte header and a table of 128-byte entries;
libvsgpt would add a dependency for less than this file checks (it does not report which of the
two headers was damaged). 512-byte logical sectors, as every IBM Cloud image has.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

from lukspack.check.blockio import DiskFile

SECTOR = 512
MBR_SIGNATURE = b"\x55\xaa"
MBR_ENTRY = struct.Struct("<B3sB3sII")  # status, CHS first, type, CHS last, LBA first, sectors
MBR_TABLE_OFFSET = 446
MBR_EXTENDED = {0x05, 0x0F, 0x85}
MBR_PROTECTIVE = 0xEE
GPT_SIGNATURE = b"EFI PART"
# signature, revision, header size, header CRC, reserved, this LBA, other LBA, first usable,
# last usable, disk GUID, entries LBA, entry count, entry size, entries CRC
GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
GPT_ENTRY = struct.Struct("<16s16sQQQ72s")
MAX_LOGICAL = 64

MBR_TYPES = {0x06: "FAT16", 0x0B: "FAT32", 0x0C: "FAT32 LBA", 0x0E: "FAT16 LBA", 0x82: "Linux swap",
             0x83: "Linux", 0x8E: "Linux LVM", 0xEF: "EFI System", 0xFD: "Linux RAID"}
GPT_TYPES = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": "Linux extended boot",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
}
ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"


@dataclass
class Partition:
    number: int  # as Linux names it: /dev/vdaN
    start: int  # bytes
    size: int
    type: str  # "0x83" or a GPT type GUID
    type_name: str
    scheme: str  # mbr | gpt
    bootable: bool = False
    uuid: str = ""  # GPT unique GUID, or the MBR PARTUUID form "xxxxxxxx-NN"
    name: str = ""

    @property
    def is_esp(self) -> bool:
        return self.type in ("0xef", ESP_GUID)

    @property
    def is_bios_boot(self) -> bool:
        return self.type == BIOS_BOOT_GUID

    def describe(self) -> str:
        return (f"#{self.number} {self.type_name} ({self.type}) at {self.start} size {self.size}"
                + (" bootable" if self.bootable else ""))


@dataclass
class PartitionTable:
    scheme: str  # mbr | gpt | none
    partitions: list[Partition] = field(default_factory=list)
    disk_id: str = ""
    notes: list[tuple[str, str, str]] = field(default_factory=list)  # (status, what, evidence)
    mbr_boot_code: bytes = b""


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]]:
    out = []
    for i in range(4):
        status, _c1, ptype, _c2, lba, count = MBR_ENTRY.unpack_from(sector, MBR_TABLE_OFFSET + 16 * i)
        out.append((status, ptype, lba, count))
    return out


def read_table(disk: DiskFile) -> PartitionTable:
    mbr = disk.pread(0, SECTOR)
    if len(mbr) < SECTOR or mbr[510:512] != MBR_SIGNATURE:
        return PartitionTable("none", notes=[("WARN", "partition table",
                                               "no MBR signature 55aa at offset 510")])
    entries = _mbr_entries(mbr)
    boot_code = mbr[:440]
    if any(ptype == MBR_PROTECTIVE for _s, ptype, _l, _c in entries):
        table = _read_gpt(disk)
        table.mbr_boot_code = boot_code
        return table
    disk_id = f"{struct.unpack_from('<I', mbr, 440)[0]:08x}"
    table = PartitionTable("mbr", disk_id=disk_id, mbr_boot_code=boot_code)
    for i, (status, ptype, lba, count) in enumerate(entries, start=1):
        if ptype == 0 or count == 0:
            continue
        if ptype in MBR_EXTENDED:
            _read_logical(disk, lba, table)
            continue
        table.partitions.append(_mbr_partition(i, status, ptype, lba, count, disk_id))
    table.notes.append(("PASS", "partition table",
                        f"MBR, disk identifier 0x{disk_id}, {len(table.partitions)} partition(s)"))
    return table


def _mbr_partition(number: int, status: int, ptype: int, lba: int, count: int,
                   disk_id: str) -> Partition:
    return Partition(number, lba * SECTOR, count * SECTOR, f"0x{ptype:02x}",
                     MBR_TYPES.get(ptype, "unknown"), "mbr", bootable=status == 0x80,
                     uuid=f"{disk_id}-{number:02x}")


def _read_logical(disk: DiskFile, ext_lba: int, table: PartitionTable) -> None:
    """Logical partitions: a chain of EBRs, each relative to the extended partition's start."""
    ebr_lba, number = ext_lba, 5
    seen = set()
    while number < 5 + MAX_LOGICAL and ebr_lba not in seen:
        seen.add(ebr_lba)
        ebr = disk.pread(ebr_lba * SECTOR, SECTOR)
        if len(ebr) < SECTOR or ebr[510:512] != MBR_SIGNATURE:
            table.notes.append(("WARN", "extended partition",
                                f"EBR at sector {ebr_lba} has no 55aa signature"))
            return
        (status, ptype, lba, count), nxt = _mbr_entries(ebr)[:2]
        if ptype and count:
            table.partitions.append(_mbr_partition(number, status, ptype, ebr_lba + lba, count,
                                                   table.disk_id))
            number += 1
        if nxt[1] not in MBR_EXTENDED or nxt[3] == 0:
            return
        ebr_lba = ext_lba + nxt[2]


def _gpt_header(disk: DiskFile, lba: int) -> tuple[tuple[Any, ...] | None, str]:
    raw = disk.pread(lba * SECTOR, SECTOR)
    if len(raw) < GPT_HEADER.size or raw[:8] != GPT_SIGNATURE:
        return None, f"no 'EFI PART' signature at LBA {lba}"
    h = GPT_HEADER.unpack_from(raw)
    hsize = h[2]
    if not GPT_HEADER.size <= hsize <= SECTOR:
        return None, f"header size {hsize} at LBA {lba}"
    body = bytearray(raw[:hsize])
    body[16:20] = b"\0\0\0\0"
    crc = zlib.crc32(body)
    if crc != h[3]:
        return None, f"header CRC at LBA {lba} is 0x{h[3]:08x}, computed 0x{crc:08x}"
    if h[5] != lba:
        return None, f"header at LBA {lba} says it is at LBA {h[5]}"
    if not 0 < h[12] <= 4096 or h[12] % 8 or h[11] > 1024:
        return None, f"entry size {h[12]} x count {h[11]} at LBA {lba}"
    entries = disk.pread(h[10] * SECTOR, h[11] * h[12])
    ecrc = zlib.crc32(entries)
    if ecrc != h[13]:
        return None, (f"partition entries CRC (LBA {h[10]}) is 0x{h[13]:08x}, "
                      f"computed 0x{ecrc:08x}")
    return h + (entries,), f"LBA {lba}, header CRC 0x{h[3]:08x}, entries CRC 0x{h[13]:08x}"


def _read_gpt(disk: DiskFile) -> PartitionTable:
    table = PartitionTable("gpt")
    primary, p_ev = _gpt_header(disk, 1)
    last_lba = disk.size // SECTOR - 1
    backup_lba = primary[6] if primary else last_lba
    backup, b_ev = _gpt_header(disk, backup_lba)
    table.notes.append(("PASS" if primary else "FAIL", "GPT primary header", p_ev))
    table.notes.append(("PASS" if backup else "FAIL", "GPT backup header", b_ev))
    if primary and backup_lba != last_lba:
        table.notes.append(("WARN", "GPT backup header",
                            f"at LBA {backup_lba}, not the disk's last LBA {last_lba} "
                            "(the image was resized without moving it)"))
    h = primary or backup
    if h is None:
        return table
    table.disk_id = str(uuid.UUID(bytes_le=h[9]))
    entries = h[14]
    for i in range(h[11]):
        tguid, uguid, first, last, attrs, name = GPT_ENTRY.unpack_from(entries, i * h[12])
        if tguid == bytes(16):
            continue
        t = str(uuid.UUID(bytes_le=tguid))
        table.partitions.append(Partition(
            i + 1, first * SECTOR, (last - first + 1) * SECTOR, t, GPT_TYPES.get(t, "unknown"),
            "gpt", bootable=bool(attrs & 4), uuid=str(uuid.UUID(bytes_le=uguid)),
            name=name.decode("utf-16-le", "replace").rstrip("\0")))
    table.notes.append(("PASS", "partition table",
                        f"GPT, disk GUID {table.disk_id}, {len(table.partitions)} partition(s)"))
    return table
