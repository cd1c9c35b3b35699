"""The checks `vhd-util check -n FILE` runs on a dynamic tapdisk VHD (blktap vhd/lib/vhd-util-check.c:
vhd_util_check_validate_footer, _header, _batmap, vhd_util_check_bat, vhd_util_check_batmap),
written again here from that source with struct only, so tests can hold lukspack's output to them
without vhd-util. Returns the first problem as vhd-util words it, or None ("FILE is valid")."""

from __future__ import annotations

import struct
import time
from pathlib import Path

SECTOR = 512
VHD_EPOCH = 946684800


def _checksum(data: bytes, at: int) -> int:
    return ~(sum(data) - sum(data[at : at + 4])) & 0xFFFFFFFF


def _chs(size: int) -> int:
    secs = min(max(1, -(-size // SECTOR)), 65535 * 16 * 255)
    if secs >= 65535 * 16 * 63:
        spt, heads, cth = 255, 16, secs // 255
    else:
        spt, cth = 17, secs // 17
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads, cth = 31, 16, secs // 31
        if cth >= heads * 1024:
            spt, heads, cth = 63, 16, secs // 63
    return ((cth // heads) << 16) | (heads << 8) | spt


def check(path: Path) -> str | None:
    d = path.read_bytes()
    eof = len(d)
    f = d[-SECTOR:]
    if f[:8] != b"conectix":
        return "footer is invalid: invalid cookie"
    features, ff_version, data_offset, ts = struct.unpack_from(">IIQI", f, 8)
    crtr_app, crtr_ver = f[28:32], struct.unpack_from(">I", f, 32)[0]
    curr_size, geometry, dtype = struct.unpack_from(">8xQII", f, 40)
    if _checksum(f, 64) != struct.unpack_from(">I", f, 64)[0]:
        return "footer is invalid: invalid checksum"
    if not features & 2 or features & ~3:
        return "footer is invalid: invalid features"
    if ff_version != 0x00010000:
        return "footer is invalid: invalid file format version"
    if ts > int(time.time()) - VHD_EPOCH + 120:
        return "footer is invalid: creation time in future"
    if crtr_app[:3] == b"tap" and crtr_ver > 0x00010003:
        return "footer is invalid: unsupported tap creator version"
    if _chs(curr_size) < geometry:
        return "footer is invalid: geometry too large"
    if dtype != 3:
        return "footer is invalid: not dynamic"
    if f[84] not in (0, 1) or f[85] not in (0, 1) or any(f[86:]):
        return "footer is invalid: invalid 'saved'/'hidden' state or reserved bits"
    if not any(f[68:84]):
        return "footer is invalid: invalid (NULL) uuid"
    if d[:SECTOR] != f:
        return "primary and backup footers differ"
    h = d[data_offset : data_offset + 1024]
    if h[:8] != b"cxsparse" or _checksum(h, 36) != struct.unpack_from(">I", h, 36)[0]:
        return "header is invalid: invalid cookie or checksum"
    hdr_data_offset, table, hdr_ver, entries, block_size = struct.unpack_from(">QQIII", h, 8)
    if hdr_ver != 0x00010000 or hdr_data_offset != (1 << 64) - 1:
        return "header is invalid: invalid header version or data offset"
    if table <= 0 or table % SECTOR or table + entries * 4 > eof - SECTOR:
        return "header is invalid: invalid table offset"
    if bin(block_size).count("1") != 1:
        return "header is invalid: invalid block size"
    if any(h[60:64]) or any(h[768:1024]) or any(h[64:768]):
        return "header is invalid: non-zero parent fields or reserved bits"
    spb = block_size // SECTOR
    bm_secs = max(1, -(-(spb // 8) // SECTOR))
    bat = struct.unpack_from(f">{entries}I", d, table)
    hdr_at = table + max(1, -(-(entries * 4) // SECTOR)) * SECTOR
    bh = d[hdr_at : hdr_at + SECTOR]
    if bh[:8] != b"tdbatmap":
        return "batmap is invalid: invalid cookie"
    bm_off, bm_size, bm_ver, bm_sum = struct.unpack_from(">QIII", bh, 8)
    if bm_ver > 0x00010002:
        return "batmap is invalid: unsupported batmap version"
    map_bytes = max(1, -(-(curr_size >> 24) // SECTOR)) * SECTOR
    if ~sum(d[bm_off : bm_off + map_bytes]) & 0xFFFFFFFF != bm_sum:
        return "batmap is invalid: invalid checksum"
    if not bm_size:
        return "batmap is invalid: invalid size zero"
    if bm_size << 12 < entries:
        return "batmap is invalid: batmap-BAT size mismatch"
    if not bm_off or bm_off % SECTOR:
        return "batmap is invalid: invalid batmap offset"
    if bm_off + bm_size * SECTOR > eof - SECTOR:
        return "batmap is invalid: invalid batmap size"
    eoh = max(data_offset + 1024, table + max(1, -(-(entries * 4) // SECTOR)) * SECTOR,
              hdr_at + SECTOR, bm_off + bm_size * SECTOR) // SECTOR
    last = (eof - SECTOR) // SECTOR
    blocks = curr_size >> 21 if block_size == 1 << 21 else -(-curr_size // block_size)
    if blocks > entries:
        return f"VHD size ({blocks} blocks) exceeds BAT size ({entries})"
    used = sorted((off, i) for i, off in enumerate(bat[:blocks]) if off != 0xFFFFFFFF)
    for n, (off, i) in enumerate(used):
        if off < eoh:
            return f"block {i} (offset 0x{off:x}) clobbers headers"
        if off + spb + bm_secs > last:
            return f"block {i} (offset 0x{off:x}) clobbers footer"
        if n and off < used[n - 1][0] + spb + bm_secs:
            return f"block {i} (offset 0x{off:x}) clobbers block {used[n - 1][1]}"
    for i in range(blocks):
        if d[bm_off + i // 8] & (0x80 >> (i % 8)) and bat[i] == 0xFFFFFFFF:
            return f"batmap shows unallocated block {i} full"
    return None
