"""The VHDX metadata log ([MS-VHDX] 2.3), found and replayed in memory, never written back.

The log is a circular buffer of 4 KiB sectors. An entry is a 64-byte header (signature `loge`,
CRC-32C over the whole entry with the checksum field zeroed, EntryLength, Tail, SequenceNumber,
DescriptorCount, LogGuid, FlushedFileOffset, LastFileOffset), descriptors of 32 bytes (`desc`: a
4 KiB data sector to write at FileOffset, whose first 8 and last 4 bytes are in the descriptor;
`zero`: ZeroLength bytes of zeros at FileOffset), then one data sector (`data`, SequenceHigh, 4084
bytes, SequenceLow) per `desc` descriptor. Entries only count when their LogGuid is the current
header's. The active sequence is the run of valid entries with consecutive sequence numbers that
ends highest; replaying it in order gives the image as it was meant to be. This follows qemu's
block/vhdx-log.c, so lukspack reads a dirty image as `qemu-img check -r all` would leave it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from lukspack.errors import FormatError
from lukspack.images.crc32c import crc32c_zeroed

SECTOR = 4096
# signature, checksum, entry_length, tail, sequence_number, descriptor_count, reserved, log_guid,
# flushed_file_offset, last_file_offset
ENTRY_HEADER = struct.Struct("<4sIIIQII16sQQ")
# signature, trailing_bytes (desc) | reserved (zero), leading_bytes (desc) | zero_length (zero),
# file_offset, sequence_number
DESCRIPTOR = struct.Struct("<4sIQQQ")
# signature, sequence_high; data[4084]; sequence_low at the end
DATA_HEAD = struct.Struct("<4sI")
MAX_FILE = 1 << 50

Read = Callable[[int, int], bytes]  # (offset in the log, size), wrapping around its end


@dataclass
class LogEntry:
    position: int
    sequence: int
    length: int
    flushed_file_offset: int
    last_file_offset: int
    writes: list[tuple[int, int, bytes | None]] = field(default_factory=list)
    # (file offset, length, 4 KiB of data or None for zeros), in order


def _descriptor_sectors(count: int) -> int:
    return -(-(count + 2) // 128)  # the header takes the room of two descriptors


def parse_entry(read: Read, position: int, log_length: int, guid: bytes) -> LogEntry | None:
    """The entry at position if it is valid for this LogGuid, else None."""
    sig, checksum, length, _tail, seq, count, _, entry_guid, flushed, last = \
        ENTRY_HEADER.unpack(read(position, ENTRY_HEADER.size))
    if sig != b"loge" or entry_guid != guid or seq == 0 or length % SECTOR or \
            not 0 < length <= log_length or count * DESCRIPTOR.size > length:
        return None
    desc_sectors = _descriptor_sectors(count)
    if desc_sectors * SECTOR > length:
        return None
    data = read(position, length)
    if crc32c_zeroed(data, 4) != checksum:
        return None
    entry = LogEntry(position, seq, length, flushed, last)
    next_data = desc_sectors
    for i in range(count):
        kind, a, b, offset, dseq = DESCRIPTOR.unpack_from(data, ENTRY_HEADER.size + i * 32)
        if dseq != seq or offset % SECTOR:
            return None
        if kind == b"zero":
            if b % SECTOR:
                return None
            entry.writes.append((offset, b, None))
        elif kind == b"desc":
            if (next_data + 1) * SECTOR > length:
                return None
            sector = data[next_data * SECTOR : (next_data + 1) * SECTOR]
            next_data += 1
            dsig, high = DATA_HEAD.unpack_from(sector)
            low = struct.unpack_from("<I", sector, SECTOR - 4)[0]
            if dsig != b"data" or (high << 32 | low) != seq:
                return None
            page = struct.pack("<Q", b) + sector[8 : SECTOR - 4] + struct.pack("<I", a)
            entry.writes.append((offset, SECTOR, page))
        else:
            return None
    return entry


def active_sequence(read: Read, log_length: int, guid: bytes) -> list[LogEntry]:
    """The entries to replay, oldest first; empty when the log holds none for this GUID."""
    best: list[LogEntry] = []
    pos = 0
    while pos < log_length:
        first = parse_entry(read, pos, log_length, guid)
        if first is None:
            pos += SECTOR
            continue
        run, covered = [first], first.length
        while covered < log_length:  # a sequence never holds more than the whole log
            nxt = parse_entry(read, (first.position + covered) % log_length, log_length, guid)
            if nxt is None or nxt.sequence != run[-1].sequence + 1 or \
                    covered + nxt.length > log_length:
                break
            run.append(nxt)
            covered += nxt.length
        if not best or run[-1].sequence > best[-1].sequence:
            best = run
        pos += covered  # past this sequence; one that wraps ends the scan
    return best


@dataclass
class Replay:
    """The writes of a replayed log, applied to every read of the file after it."""

    writes: list[tuple[int, int, bytes | None]]
    file_size: int  # the file's size once replayed (qemu extends it to LastFileOffset)
    entries: int

    def apply(self, file_offset: int, view: memoryview) -> None:
        end = file_offset + len(view)
        for off, n, page in self.writes:
            lo, hi = max(off, file_offset), min(off + n, end)
            if lo < hi:
                view[lo - file_offset : hi - file_offset] = \
                    bytes(hi - lo) if page is None else page[lo - off : hi - off]


def replay(entries: list[LogEntry], file_size: int, name: str) -> Replay:
    """Check the entries against the file and collect their writes in order."""
    writes: list[tuple[int, int, bytes | None]] = []
    size = file_size
    for e in entries:
        if e.flushed_file_offset > file_size:
            raise FormatError(f"{name}: VHDX log entry {e.sequence} says the file was flushed up to "
                              f"{e.flushed_file_offset} bytes, but it has {file_size}: the image "
                              "is truncated")
        writes += e.writes
        last = e.last_file_offset
        if last > size:
            size = -(-last // (1 << 20)) * (1 << 20)
    for off, n, _ in writes:
        size = max(size, off + n)
    if size > MAX_FILE:
        raise FormatError(f"{name}: VHDX log writes up to byte {size}, which is absurd")
    return Replay(writes, size, len(entries))
