"""Microsoft VHDX images ([MS-VHDX] v1.0), dynamic and fixed, little-endian.

Layout: the file type identifier `vhdxfile` at 0; two 4 KiB headers at 64 and 128 KiB (the valid
one with the higher SequenceNumber is current); two 64 KiB region tables at 192 and 256 KiB naming
the BAT and metadata regions; all three kinds carry a CRC-32C with the checksum field zeroed. The
metadata region gives the block size, the virtual size and the logical sector size. The BAT holds
one 64-bit entry per payload block (state in bits 0-2, file offset in MiB in bits 20-63), with a
sector-bitmap entry after every `chunk_ratio` payload entries. Blocks in state FULLY_PRESENT (6)
are read; NOT_PRESENT, UNDEFINED, ZERO and UNMAPPED read as zeros.

The log: when the current header names a LogGuid and the log holds valid entries with that GUID,
the image was not closed cleanly and its metadata may be stale until the log is replayed. lukspack
replays the active sequence in memory (vhdx_log.py) and reads the file as the log leaves it,
without writing to it. Differencing disks (HasParent) are refused.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from lukspack.errors import FormatError, UnsupportedError
from lukspack.images.base import BlockRuns, DiskImage, Extent
from lukspack.images.crc32c import crc32c_zeroed
from lukspack.images.source import ByteSource
from lukspack.images.vhdx_log import Replay, active_sequence, replay

KiB, MiB = 1 << 10, 1 << 20
FILE_SIGNATURE = b"vhdxfile"
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
HEADER_SIZE = 4 * KiB
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
REGION_TABLE_SIZE = 64 * KiB
# signature, checksum, sequence_number, file_write_guid, data_write_guid, log_guid, log_version,
# version, log_length, log_offset
HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
REGION_TABLE_HEADER = struct.Struct("<4sIII")  # signature, checksum, entry_count, reserved
REGION_ENTRY = struct.Struct("<16sQII")  # guid, file_offset, length, required
METADATA_HEADER = struct.Struct("<8sHH20x")  # signature, reserved, entry_count
METADATA_ENTRY = struct.Struct("<16sIII4x")  # item_id, offset, length, flags
MAX_ENTRIES = 2047


def _guid(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


BAT_REGION = _guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = _guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = _guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = _guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
VIRTUAL_DISK_ID = _guid("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = _guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = _guid("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = _guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
KNOWN_METADATA = (FILE_PARAMETERS, VIRTUAL_DISK_SIZE, VIRTUAL_DISK_ID, LOGICAL_SECTOR_SIZE,
                  PHYSICAL_SECTOR_SIZE, PARENT_LOCATOR)
META_IS_REQUIRED = 1 << 2
HAS_PARENT = 1 << 1

NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED, FULLY_PRESENT, PARTIALLY_PRESENT = 0, 1, 2, 3, 6, 7
STATE_NAMES = {0: "not_present", 1: "undefined", 2: "zero", 3: "unmapped", 6: "fully_present",
               7: "partially_present"}
MIN_BLOCK, MAX_BLOCK = 1 * MiB, 256 * MiB
MAX_VIRTUAL_SIZE = 64 << 40
MAX_LOG = 256 * MiB  # Hyper-V and qemu write 1 MiB logs


def _name(guid: bytes) -> str:
    return str(uuid.UUID(bytes_le=guid))


class VhdxImage(DiskImage):
    format_name = "vhdx"

    def __init__(self, path: str, fd: int | ByteSource, window: tuple[int, int] | None = None) -> None:
        super().__init__(path, fd, window)
        self._real_size = self.file_size
        self.replay: Replay | None = None
        if self.file_size < 1 * MiB:
            raise FormatError(f"{path}: too small for a VHDX ({self.file_size} bytes < 1 MiB)")
        sig = self.pread(0, 8, "file type identifier")
        if sig != FILE_SIGNATURE:
            raise FormatError(f"{path}: not a VHDX (file type identifier {sig!r})")
        self.creator = self.pread(8, 512, "creator").decode("utf-16-le", "replace").split("\0")[0]
        self.header = self._current_header()
        self._replay_log()
        regions = self._region_table()
        self._read_metadata(*regions[METADATA_REGION])
        self._read_bat(*regions[BAT_REGION])

    # -- headers and regions -------------------------------------------------------------------
    def _current_header(self) -> dict[str, Any]:
        found: list[dict[str, Any]] = []
        problems: list[str] = []
        for i, off in enumerate(HEADER_OFFSETS):
            raw = self.pread(off, HEADER_SIZE, f"header {i + 1}")
            fields = HEADER.unpack_from(raw)
            if fields[0] != b"head":
                problems.append(f"header {i + 1} signature {fields[0]!r}")
                continue
            if crc32c_zeroed(raw, 4) != fields[1]:
                problems.append(f"header {i + 1} checksum 0x{fields[1]:08x} is wrong (computed "
                                f"0x{crc32c_zeroed(raw, 4):08x})")
                continue
            found.append(dict(zip(("signature", "checksum", "sequence_number", "file_write_guid",
                                   "data_write_guid", "log_guid", "log_version", "version",
                                   "log_length", "log_offset"), fields, strict=True)))
        if not found:
            raise FormatError(f"{self.path}: no valid VHDX header ({'; '.join(problems)})")
        h = max(found, key=lambda x: x["sequence_number"])
        if h["version"] != 1:
            raise UnsupportedError(f"{self.path}: VHDX header version {h['version']} is not 1")
        if h["log_version"] != 0:
            raise UnsupportedError(f"{self.path}: VHDX log version {h['log_version']} is not 0")
        lo, ll = h["log_offset"], h["log_length"]
        if ll and (lo % MiB or ll % MiB or lo < MiB or lo + ll > self.file_size):
            raise FormatError(f"{self.path}: VHDX log (offset {lo}, length {ll}) is not whole MiB "
                              f"inside the file (size {self.file_size})")
        return h

    def _replay_log(self) -> None:
        """Find the log's active sequence and replay it in memory (the file is not written)."""
        h = self.header
        guid, base, size = h["log_guid"], h["log_offset"], h["log_length"]
        if guid == bytes(16) or not size:
            return
        if size > MAX_LOG:
            raise UnsupportedError(f"{self.path}: VHDX log of {size} bytes is larger than "
                                   f"{MAX_LOG} bytes")

        def read(offset: int, n: int) -> bytes:  # the log is circular
            first = min(n, size - offset)
            data = self.pread(base + offset, first, "log")
            return data + self.pread(base, n - first, "log") if first < n else data

        entries = active_sequence(read, size, guid)
        if entries:
            self.replay = replay(entries, self._real_size, self.path)
            self.file_size = self.replay.file_size

    def pread_exact(self, file_offset: int, view: memoryview, what: str = "data") -> None:
        if self.replay is None:
            super().pread_exact(file_offset, view, what)
            return
        # the file as the log leaves it: extended with zeros, log writes on top
        avail = max(0, min(len(view), self._real_size - file_offset))
        super().pread_exact(file_offset, view[:avail], what)
        if avail < len(view):
            if file_offset + len(view) > self.file_size:
                raise FormatError(f"{self.path}: {what} at offset {file_offset} is past the end "
                                  f"of the file (size {self.file_size} after the log)")
            view[avail:] = bytes(len(view) - avail)
        self.replay.apply(file_offset, view)

    def _region_table(self) -> dict[bytes, tuple[int, int]]:
        problems = []
        for i, off in enumerate(REGION_TABLE_OFFSETS):
            raw = self.pread(off, REGION_TABLE_SIZE, f"region table {i + 1}")
            sig, checksum, count, _ = REGION_TABLE_HEADER.unpack_from(raw)
            if sig != b"regi":
                problems.append(f"region table {i + 1} signature {sig!r}")
            elif crc32c_zeroed(raw, 4) != checksum:
                problems.append(f"region table {i + 1} checksum 0x{checksum:08x} is wrong "
                                f"(computed 0x{crc32c_zeroed(raw, 4):08x})")
            elif count > MAX_ENTRIES:
                problems.append(f"region table {i + 1} entry count {count} > {MAX_ENTRIES}")
            else:
                return self._regions(raw, count, i + 1)
        raise FormatError(f"{self.path}: no valid VHDX region table ({'; '.join(problems)})")

    def _regions(self, raw: bytes, count: int, which: int) -> dict[bytes, tuple[int, int]]:
        regions: dict[bytes, tuple[int, int]] = {}
        for k in range(count):
            guid, off, length, required = REGION_ENTRY.unpack_from(
                raw, REGION_TABLE_HEADER.size + k * REGION_ENTRY.size)
            what = f"VHDX region {_name(guid)} (region table {which}, entry {k})"
            if guid not in (BAT_REGION, METADATA_REGION):
                if required & 1:
                    raise UnsupportedError(f"{self.path}: {what} is required but unknown")
                continue
            if off % MiB or length % MiB or off < MiB or not length or \
                    off + length > self.file_size:
                raise FormatError(f"{self.path}: {what} (offset {off}, length {length}) is not "
                                  f"whole MiB inside the file (size {self.file_size})")
            regions[guid] = (off, length)
        for guid, label in ((BAT_REGION, "BAT"), (METADATA_REGION, "metadata")):
            if guid not in regions:
                raise FormatError(f"{self.path}: VHDX region table {which} has no {label} region")
        (a, al), (b, bl) = regions[BAT_REGION], regions[METADATA_REGION]
        if a < b + bl and b < a + al:
            raise FormatError(f"{self.path}: VHDX BAT region (offset {a}) and metadata region "
                              f"(offset {b}) overlap")
        return regions

    # -- metadata ------------------------------------------------------------------------------
    def _read_metadata(self, offset: int, length: int) -> None:
        head = self.pread(offset, 64 * KiB, "metadata table")
        sig, _, count = METADATA_HEADER.unpack_from(head)
        if sig != b"metadata":
            raise FormatError(f"{self.path}: VHDX metadata table signature is {sig!r}")
        if count > MAX_ENTRIES:
            raise FormatError(f"{self.path}: VHDX metadata entry count {count} > {MAX_ENTRIES}")
        items: dict[bytes, bytes] = {}
        for k in range(count):
            item, off, size, flags = METADATA_ENTRY.unpack_from(head, 32 + k * 32)
            if item not in KNOWN_METADATA:
                if flags & META_IS_REQUIRED:
                    raise UnsupportedError(f"{self.path}: VHDX metadata item {_name(item)} is "
                                           "required but unknown")
                continue
            if size and (off < 64 * KiB or off + size > length):
                raise FormatError(f"{self.path}: VHDX metadata item {_name(item)} (offset {off}, "
                                  f"length {size}) is outside the metadata region ({length} "
                                  "bytes)")
            items[item] = self.pread(offset + off, min(size, 64 * KiB), "metadata item")
        need = ((FILE_PARAMETERS, 8, "file parameters"), (VIRTUAL_DISK_SIZE, 8, "virtual disk size"),
                (LOGICAL_SECTOR_SIZE, 4, "logical sector size"))
        for item, size, label in need:
            if len(items.get(item, b"")) < size:
                raise FormatError(f"{self.path}: VHDX metadata has no valid {label} item")
        self.block_size, flags = struct.unpack_from("<II", items[FILE_PARAMETERS])
        self.leave_blocks_allocated = bool(flags & 1)
        (self.virtual_size,) = struct.unpack_from("<Q", items[VIRTUAL_DISK_SIZE])
        (self.logical_sector_size,) = struct.unpack_from("<I", items[LOGICAL_SECTOR_SIZE])
        phys = items.get(PHYSICAL_SECTOR_SIZE, b"")
        self.physical_sector_size = struct.unpack_from("<I", phys)[0] if len(phys) >= 4 else 0
        vid = items.get(VIRTUAL_DISK_ID, b"")
        self.disk_id = _name(vid[:16]) if len(vid) >= 16 else ""
        if flags & HAS_PARENT or PARENT_LOCATOR in items:
            raise UnsupportedError(f"{self.path}: is a differencing VHDX (it needs its parent); "
                                   "merge it first (qemu-img convert -O vhdx, or Hyper-V's "
                                   "Edit Disk)")
        bs = self.block_size
        if bs < MIN_BLOCK or bs > MAX_BLOCK or bs & (bs - 1):
            raise FormatError(f"{self.path}: VHDX block size {bs} is not a power of two between "
                              f"1 MiB and 256 MiB")
        if self.logical_sector_size not in (512, 4096):
            raise FormatError(f"{self.path}: VHDX logical sector size {self.logical_sector_size} "
                              "is not 512 or 4096")
        if self.virtual_size % self.logical_sector_size or self.virtual_size > MAX_VIRTUAL_SIZE:
            raise FormatError(f"{self.path}: VHDX virtual disk size {self.virtual_size} is not a "
                              "multiple of the logical sector size up to 64 TiB")

    # -- BAT -----------------------------------------------------------------------------------
    def _read_bat(self, offset: int, length: int) -> None:
        bs = self.block_size
        self.chunk_ratio = (1 << 23) * self.logical_sector_size // bs
        blocks = -(-self.virtual_size // bs)
        entries = blocks + (blocks - 1) // self.chunk_ratio if blocks else 0
        if entries * 8 > length:
            raise FormatError(f"{self.path}: VHDX BAT region ({length} bytes) is too small for "
                              f"{entries} entries")
        raw = np.frombuffer(self.pread(offset, entries * 8, "BAT"), dtype="<u8")
        index = np.arange(blocks, dtype=np.int64)
        payload = raw[index + index // self.chunk_ratio].astype(np.uint64)
        self.states = (payload & np.uint64(7)).astype(np.uint8)
        self.offsets = ((payload >> np.uint64(20)) << np.uint64(20)).astype(np.int64)
        bad = np.flatnonzero(~np.isin(self.states, (NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED,
                                                    FULLY_PRESENT, PARTIALLY_PRESENT)))
        if bad.size:
            i = int(bad[0])
            raise FormatError(f"{self.path}: VHDX BAT entry of block {i} has invalid state "
                              f"{int(self.states[i])}")
        bad = np.flatnonzero(self.states == PARTIALLY_PRESENT)
        if bad.size:
            raise FormatError(f"{self.path}: VHDX block {int(bad[0])} is PARTIALLY_PRESENT, which "
                              "only a differencing disk may use")
        present = self.states == FULLY_PRESENT
        ends = self.offsets + np.minimum(bs, self.virtual_size - index * bs)
        bad = np.flatnonzero(present & ((self.offsets < MiB) | (ends > self.file_size)))
        if bad.size:
            i = int(bad[0])
            raise FormatError(f"{self.path}: VHDX block {i} at offset {int(self.offsets[i])} is "
                              f"outside the file (size {self.file_size})")
        self.present = present
        self._runs: BlockRuns | None = None

    # -- reading -------------------------------------------------------------------------------
    def extents(self, start: int = 0, end: int | None = None) -> Iterator[Extent]:
        end = self.virtual_size if end is None else min(end, self.virtual_size)
        if start >= end:
            return
        if self._runs is None:
            self._runs = BlockRuns(self.present, self.block_size)
        yield from self._runs.extents(start, end)

    def _read_allocated(self, offset: int, view: memoryview) -> None:
        bs, done = self.block_size, 0
        while done < len(view):
            i, within = divmod(offset + done, bs)
            n = min(bs - within, len(view) - done)
            if not self.present[i]:
                view[done : done + n] = bytes(n)
                done += n
                continue
            # blocks stored back to back (fixed VHDX) are read in one call
            j = i
            while done + n < len(view) and j + 1 < len(self.present) and self.present[j + 1] \
                    and self.offsets[j + 1] == self.offsets[j] + bs:
                j += 1
                n = min(n + bs, len(view) - done)
            self.pread_exact(int(self.offsets[i]) + within, view[done : done + n],
                             f"VHDX block {i}")
            done += n

    def info(self) -> dict[str, Any]:
        out = super().info()
        h = self.header
        counts = np.bincount(self.states, minlength=8)
        out["vhdx"] = {
            "creator": self.creator,
            "type": "fixed" if self.leave_blocks_allocated else "dynamic",
            "block_size": self.block_size,
            "logical_sector_size": self.logical_sector_size,
            "physical_sector_size": self.physical_sector_size,
            "virtual_disk_id": self.disk_id,
            "sequence_number": h["sequence_number"],
            "log_guid": _name(h["log_guid"]),
            "log_entries_replayed": self.replay.entries if self.replay else 0,
            "blocks": {STATE_NAMES[k]: int(counts[k]) for k in STATE_NAMES if counts[k]},
        }
        return out
