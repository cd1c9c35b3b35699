"""The records of a Berkeley DB hash database, read from its bytes: what rpm's `Packages` file is
on RHEL 7 and 8 (rpm before 4.16), one record per installed package, the header blob as value.

The layout (Berkeley DB 4.x-5.x, hash version 8-10, as `db_load -t hash` writes it):

- page 0, the hash meta page: magic 0x061561 at offset 12 (its byte order is the file's),
  version at 16, page size at 20, last page at 32, max_bucket at 72, high_mask at 76,
  low_mask at 80, spares[32] at 96;
- every page: pgno at 8, prev at 12, next at 16, the number of entries at 20 (u16), hf_offset
  at 22 (u16), type at 25 (13 P_HASH, 2 P_HASH_UNSORTED, 7 P_OVERFLOW; 8, P_HASHMETA, is
  taken as a hash page too, as rpm's own reader does), entry offsets
  (u16) from 26; entries pair up, key then value;
- an entry: type byte 1 (key/data on the page, its length up to the previous entry) or 3
  (off-page: the first overflow page at +4, the total length at +8);
- bucket b lives on page b + spares[bit length of b], chained through `next`; overflow pages
  hold hf_offset bytes of data from offset 26, chained through `next`.

Read-only, bounded: a chain that comes back to a page it passed is damage, so a damaged file
ends the walk instead of looping.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

HASH_MAGIC = 0x061561
HASH_PAGES = (2, 8, 13)
OVERFLOW_PAGE = 7
KEYDATA, OFFPAGE = 1, 3
PAGE_HEADER = 26


class BdbError(ValueError):
    """Not a Berkeley DB hash database, or a damaged one."""


def records(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every record of the hash database in data, bucket by bucket."""
    if len(data) < 512:
        raise BdbError("too short for a Berkeley DB meta page")
    for order in "<>":
        if struct.unpack_from(order + "I", data, 12)[0] == HASH_MAGIC:
            break
    else:
        raise BdbError("not a Berkeley DB hash database")
    u32 = struct.Struct(order + "I")
    u16 = struct.Struct(order + "H")
    version, pagesize = u32.unpack_from(data, 16)[0], u32.unpack_from(data, 20)[0]
    if not 8 <= version <= 10 or pagesize not in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536):
        raise BdbError(f"hash version {version}, page size {pagesize}: not read")
    last = min(u32.unpack_from(data, 32)[0], len(data) // pagesize - 1)
    max_bucket = u32.unpack_from(data, 72)[0]
    spares = struct.unpack_from(order + "32I", data, 96)

    def page(pgno: int, kinds: tuple[int, ...]) -> memoryview:
        if not 0 < pgno <= last:
            raise BdbError(f"page {pgno} is outside the file")
        p = memoryview(data)[pgno * pagesize:(pgno + 1) * pagesize]
        if u32.unpack_from(p, 8)[0] != pgno or p[25] not in kinds:
            raise BdbError(f"page {pgno} is not a {kinds} page")
        return p

    def overflow(pgno: int, length: int) -> bytes:
        out, left, seen = [], length, set()
        if length == 0:
            raise BdbError("off-page entry of 0 bytes")
        while left > 0:
            if pgno in seen:
                raise BdbError(f"overflow chain loops at page {pgno}")
            seen.add(pgno)
            p = page(pgno, (OVERFLOW_PAGE,))
            n = u16.unpack_from(p, 22)[0]
            if n == 0 or n > min(left, pagesize - PAGE_HEADER):
                raise BdbError(f"overflow page {pgno} holds {n} bytes")
            out.append(bytes(p[PAGE_HEADER:PAGE_HEADER + n]))
            left -= n
            pgno = u32.unpack_from(p, 16)[0]
        return b"".join(out)

    def item(p: memoryview, at: int, end: int) -> bytes:
        if not PAGE_HEADER <= at < end <= pagesize:
            raise BdbError("entry outside its page")
        if p[at] == KEYDATA:
            return bytes(p[at + 1:end])
        if p[at] == OFFPAGE and at + 12 <= pagesize:
            return overflow(u32.unpack_from(p, at + 4)[0], u32.unpack_from(p, at + 8)[0])
        raise BdbError(f"entry type {p[at]} not read")

    if max_bucket > last:
        raise BdbError(f"{max_bucket + 1} buckets in {last} pages")
    for bucket in range(max_bucket + 1):
        pgno, seen = bucket + spares[bucket.bit_length()], set()
        while pgno:
            if pgno in seen:
                raise BdbError(f"bucket {bucket}'s page chain loops at page {pgno}")
            seen.add(pgno)
            p = page(pgno, HASH_PAGES)
            n = u16.unpack_from(p, 20)[0]
            if PAGE_HEADER + 2 * n > pagesize:
                raise BdbError(f"page {pgno} claims {n} entries")
            offs = [u16.unpack_from(p, PAGE_HEADER + 2 * i)[0] for i in range(n)]
            for i in range(0, n - 1, 2):
                key_end = offs[i - 1] if i else pagesize
                yield item(p, offs[i], key_end), item(p, offs[i + 1], offs[i])
            pgno = u32.unpack_from(p, 16)[0]
