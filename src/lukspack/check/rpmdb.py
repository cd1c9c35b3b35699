"""The rpm package database, for the version of an installed package on rpm distributions.

rpm 4.16 and later (RHEL 9, Fedora, SUSE) keep it in SQLite: `rpmdb.sqlite` in /var/lib/rpm or
/usr/lib/sysimage/rpm, a table `Packages (hnum, blob)` holding each package's header and index
tables such as `Name (key, hnum)`. A header blob (rpm's headerImport without the magic) is:

    be32 il (index entries), be32 dl (data bytes), il x (be32 tag, type, offset, count), data

Tags: 1000 NAME, 1001 VERSION, 1002 RELEASE (STRING, type 6: NUL-terminated), 1003 EPOCH
(INT32, type 4). Before 4.16 (RHEL 7 and 8) the headers sit in a Berkeley DB hash database,
`/var/lib/rpm/Packages`, one record per package keyed by its header number (check/bdb.py reads
it). SUSE's NDB (`Packages.db`) is not read: the caller falls back to cloud-init's version.py.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import tempfile
from collections.abc import Iterable

from lukspack.check.bdb import BdbError, records
from lukspack.check.guest import Guest

RPMDB_PATHS = ("/var/lib/rpm/rpmdb.sqlite", "/usr/lib/sysimage/rpm/rpmdb.sqlite")
BDB_PATH = "/var/lib/rpm/Packages"
MAX_DB = 512 << 20
TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH = 1000, 1001, 1002, 1003
TYPE_INT32, TYPE_STRING = 4, 6
_ENTRY = struct.Struct(">iIiI")  # tag, type, offset, count


def header_fields(blob: bytes) -> dict[int, str | int]:
    """NAME, VERSION, RELEASE and EPOCH of one header blob; {} when it does not parse."""
    if len(blob) < 8:
        return {}
    il, dl = struct.unpack_from(">II", blob)
    store = 8 + il * _ENTRY.size
    if il > 0xFFFF or store + dl > len(blob):
        return {}
    out: dict[int, str | int] = {}
    for i in range(il):
        tag, typ, offset, count = _ENTRY.unpack_from(blob, 8 + i * _ENTRY.size)
        if tag not in (TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH) or not 0 <= offset < dl:
            continue
        at = store + offset
        if typ == TYPE_STRING:
            end = blob.find(b"\0", at, store + dl)
            if end >= 0:
                out[tag] = blob[at:end].decode("utf-8", "replace")
        elif typ == TYPE_INT32 and count >= 1 and at + 4 <= store + dl:
            out[tag] = struct.unpack_from(">i", blob, at)[0]
    return out


def rpm_version(guest: Guest, package: str) -> tuple[str, str] | None:
    """(database path, "[EPOCH:]VERSION-RELEASE") of an installed package, or None."""
    for path in RPMDB_PATHS:
        data = guest.read(path, limit=MAX_DB)
        if not data or not data.startswith(b"SQLite format 3\0"):
            continue
        found = _query(data, package)
        if found is not None:
            return path, found
    data = guest.read(BDB_PATH, limit=MAX_DB)
    if data:
        try:
            found = _evr((value for _, value in records(data)), package)
        except BdbError:
            found = None
        if found is not None:
            return BDB_PATH, found
    return None


def _query(data: bytes, package: str) -> str | None:
    """Open a copy of the database read-only (sqlite needs a file) and look the package up."""
    fd, tmp = tempfile.mkstemp(prefix="lukspack-rpmdb-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        db = sqlite3.connect(f"file:{tmp}?mode=ro&immutable=1", uri=True)
        try:
            try:
                rows = db.execute("SELECT p.blob FROM Name n JOIN Packages p ON p.hnum = n.hnum "
                                  "WHERE n.key = ?", (package,)).fetchall()
            except sqlite3.DatabaseError:
                rows = db.execute("SELECT blob FROM Packages").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return None
    finally:
        os.unlink(tmp)
    return _evr((bytes(blob) for (blob,) in rows), package)


def _evr(blobs: Iterable[bytes], package: str) -> str | None:
    """"[EPOCH:]VERSION-RELEASE" of the first header blob that is package."""
    for blob in blobs:
        h = header_fields(blob)
        if h.get(TAG_NAME) == package and TAG_VERSION in h:
            evr = f"{h[TAG_VERSION]}-{h.get(TAG_RELEASE, '')}".rstrip("-")
            epoch = h.get(TAG_EPOCH)
            return f"{epoch}:{evr}" if isinstance(epoch, int) and epoch else evr
    return None
