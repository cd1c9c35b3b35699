"""Encrypted VHDs as XenServer's blktap writes them (`vhd-util copy -k KEY`, IBM Cloud classic).

A dynamic VHD (`images.vhd` parses its footer, header and BAT) whose footer names creator `tap`
and whose BAT is followed by tapdisk's batmap header (include/vhd.h `struct dd_batmap_hdr`):

    cookie "tdbatmap" | batmap_offset u64 (bytes) | batmap_size u32 (sectors) | batmap_version u32
    | checksum u32 (one's complement of the byte sum of the map) | marker u8
    | keyhash: flag u8 (1 = set) | nonce 32 bytes | hash 32 bytes = SHA-256(nonce || key) | zeros

then the batmap itself (one bit per block, most significant bit first, set when every sector of
the block is present). Data sectors are AES-XTS, one 512-byte sector per data unit (64-byte key:
AES-256-XTS; 32: AES-128-XTS), the tweak being the guest's virtual sector number truncated to 32
bits, little-endian (dm-crypt `plain`). Footer, headers, BAT, batmap and sector bitmaps are
plaintext.

Reading follows tapdisk (drivers/block-vhd.c, drivers/block-crypto.c): a sector present in its
block (batmap bit set, else the block's sector bitmap) is decrypted; an absent one reads as zeros.
vhd-util's copy marks every sector of a copied block present but encrypts only those present in
its source: such sectors hold all-zero ciphertext (tapdisk decrypts them to noise). They are
counted in `quirk_sectors` / `quirk_blocks` as they are read (describe().quirks).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from typing import Any, NamedTuple

import numpy as np

from lukspack.crypto.sector import SectorCipher
from lukspack.errors import FormatError, UnsupportedError, WrongKeyError
from lukspack.images.encrypted import (
    CipherRuns,
    EncryptedImage,
    Encryption,
    Quirks,
    ThreadCipher,
)
from lukspack.images.source import ByteSource, LocalFile
from lukspack.images.vhd import (
    BAT_UNUSED,
    DISK_DYNAMIC,
    FOOTER_SIZE,
    SECTOR,
    VhdImage,
    parse_footer,
)
from lukspack.structs import Layout


class BatmapHeader(NamedTuple):
    """include/vhd.h struct dd_batmap_hdr, its struct vhd_keyhash flattened (keyhash_*)."""

    cookie: bytes
    batmap_offset: int  # bytes
    batmap_size: int  # sectors
    batmap_version: int
    checksum: int
    marker: int
    keyhash_cookie: int  # 1: the key hash is set
    keyhash_nonce: bytes
    keyhash_hash: bytes


class _DynHeaderStart(NamedTuple):
    """The first fields of the dynamic header (images.vhd.DynHeader), enough to find the BAT."""

    cookie: bytes
    data_offset: int
    table_offset: int
    header_version: int
    max_table_entries: int


BATMAP_HEADER = Layout(">8sQIIIBB32s32s418x", BatmapHeader)
_DYN_HEADER_START = Layout(">8sQQII", _DynHeaderStart)
BATMAP_COOKIE = b"tdbatmap"
BATMAP_VERSION = 0x00010002  # VHD_BATMAP_CURRENT_VERSION (1.2): unsigned checksum bytes
BATMAP_VERSION_1_1 = 0x00010001  # signed-char checksum
TAP_CREATOR = b"tap\x00"
TAP_VERSION = 0x00010003  # VHD_CURRENT_VERSION (1.3)
TAP_VERSION_WITH_BATMAP = 0x00010002  # libvhd vhd_has_batmap(): 1.2 and later always have one
BLOCK_SHIFT = 21  # VHD_BLOCK_SHIFT: vhd-util's 2 MiB blocks
MAX_PLAIN_IV_SIZE = 2 << 40  # 32-bit sector numbers: 2 TiB
CIPHER_NAME, CIPHER_MODE = "aes", "xts-plain"
NONCE_BYTES = HASH_BYTES = 32
MAX_BATMAP_SECTORS = 1 << 16


def key_hash(key: bytes | bytearray, nonce: bytes = bytes(NONCE_BYTES)) -> bytes:
    """SHA-256(nonce || key): block-crypto.c vhd_calculate_keyhash(). (No copy of the key.)"""
    h = hashlib.sha256(nonce)
    h.update(key)
    return h.digest()


def batmap_map_bytes(current_size: int) -> int:
    """Bytes of map that libvhd reads and checksums (vhd_read_batmap_map): whole sectors of
    current_size >> 24, at least one."""
    return max(1, -(-(current_size >> (BLOCK_SHIFT + 3)) // SECTOR)) * SECTOR


def batmap_checksum(bitmap: bytes, version: int = BATMAP_VERSION) -> int:
    """One's complement of the byte sum (version 1.1 summed signed chars)."""
    arr = np.frombuffer(bitmap, dtype=np.int8 if version == BATMAP_VERSION_1_1 else np.uint8)
    return ~int(arr.sum(dtype=np.int64)) & 0xFFFFFFFF


def batmap_header_offset(table_offset: int, bat_entries: int) -> int:
    """Where the batmap header starts: after the BAT rounded up to a whole sector (at least one)."""
    return table_offset + max(1, -(-(bat_entries * 4) // SECTOR)) * SECTOR


def pack_batmap_header(batmap_offset: int, batmap_sectors: int, checksum: int, nonce: bytes,
                       hash_: bytes, encrypted: bool = True) -> bytes:
    return BATMAP_HEADER.pack(BatmapHeader(
        cookie=BATMAP_COOKIE, batmap_offset=batmap_offset, batmap_size=batmap_sectors,
        batmap_version=BATMAP_VERSION, checksum=checksum, marker=0,
        keyhash_cookie=1 if encrypted else 0, keyhash_nonce=nonce, keyhash_hash=hash_))


def parse_batmap(path: str, header: bytes, file_size: int, header_offset: int,
                 current_size: int, bat_entries: int, read_map: Any) -> dict[str, Any]:
    """The batmap header's fields and its map, validated; read_map(offset, size) -> bytes.

    FormatError (one line naming the file, the field and the value) on any inconsistency.
    """
    if len(header) < BATMAP_HEADER.size:
        raise FormatError(f"{path}: batmap header at offset {header_offset} is past the end of the "
                          f"file (size {file_size})")
    h = BATMAP_HEADER.unpack(header)
    cookie, off, sectors, version, checksum = (h.cookie, h.batmap_offset, h.batmap_size,
                                               h.batmap_version, h.checksum)
    marker, flag, nonce, hash_ = h.marker, h.keyhash_cookie, h.keyhash_nonce, h.keyhash_hash
    if cookie != BATMAP_COOKIE:
        raise FormatError(f"{path}: batmap header cookie at offset {header_offset} is {cookie!r}, "
                          "not 'tdbatmap'")
    if version not in (BATMAP_VERSION, BATMAP_VERSION_1_1):
        raise FormatError(f"{path}: batmap_version 0x{version:08x} is not 0x00010001 or 0x00010002")
    need = max(1, -(-((bat_entries + 7) // 8) // SECTOR))
    if not need <= sectors <= MAX_BATMAP_SECTORS:
        raise FormatError(f"{path}: batmap_size {sectors} sectors does not fit {bat_entries} "
                          f"blocks (needs {need})")
    map_bytes = batmap_map_bytes(current_size)
    if off % SECTOR or off < header_offset + SECTOR:
        raise FormatError(f"{path}: batmap_offset {off} is not a sector after the batmap header "
                          f"(at {header_offset})")
    if off + max(sectors * SECTOR, map_bytes) > file_size - FOOTER_SIZE:
        raise FormatError(f"{path}: batmap (batmap_offset {off}, {sectors} sectors) is past the "
                          f"end of the file (size {file_size})")
    bitmap = read_map(off, max(sectors * SECTOR, map_bytes))
    want = batmap_checksum(bitmap[:map_bytes], version)
    if want != checksum:
        raise FormatError(f"{path}: batmap checksum 0x{checksum:08x} is wrong (computed "
                          f"0x{want:08x})")
    if flag not in (0, 1):
        raise FormatError(f"{path}: batmap keyhash flag is {flag}, not 0 or 1")
    if flag == 1 and hash_ == bytes(HASH_BYTES):
        raise FormatError(f"{path}: batmap keyhash flag is 1 but the key hash is all zeros")
    return {"batmap_offset": off, "batmap_size": sectors, "batmap_version": version,
            "checksum": checksum, "marker": marker, "encrypted": flag == 1, "nonce": nonce,
            "key_hash": hash_, "map": bitmap[: (bat_entries + 7) // 8]}


def _batmap_header_offset_of(src: ByteSource, size: int) -> int | None:
    """The batmap header offset of a dynamic VHD file, from its footer and header, or None."""
    if size < 3 * SECTOR:
        return None
    footer = parse_footer(src.read_at(size - FOOTER_SIZE, FOOTER_SIZE))
    if footer is None or not footer["checksum_ok"]:
        footer = parse_footer(src.read_at(0, FOOTER_SIZE))
    if footer is None or not footer["checksum_ok"] or footer["disk_type"] != DISK_DYNAMIC:
        return None
    dyn = src.read_at(footer["data_offset"], 40) if footer["data_offset"] < size else b""
    if len(dyn) < 40 or dyn[:8] != b"cxsparse":
        return None
    start = _DYN_HEADER_START.unpack(dyn)
    return batmap_header_offset(start.table_offset, start.max_table_entries)


def is_encrypted_vhd(path_or_fd: str | int | ByteSource) -> bool:
    """True when the file is a dynamic VHD whose batmap header carries a key hash (flag set),
    whatever else is wrong with it: opening it then says what."""
    if isinstance(path_or_fd, ByteSource):
        return _is_encrypted(path_or_fd)
    fd = os.open(path_or_fd, os.O_RDONLY) if isinstance(path_or_fd, str) else path_or_fd
    try:
        return _is_encrypted(LocalFile(fd, str(path_or_fd)))
    except OSError:
        return False
    finally:
        if isinstance(path_or_fd, str):
            os.close(fd)


def _is_encrypted(src: ByteSource) -> bool:
    try:
        size = src.size
        off = _batmap_header_offset_of(src, size)
        if off is None or off + SECTOR > size:
            return False
        head = src.read_at(off, BATMAP_HEADER.size)
        return head[:8] == BATMAP_COOKIE and head[29] != 0
    except OSError:
        return False


class EncryptedVhdImage(EncryptedImage, VhdImage):
    """A vhd-util encrypted VHD read as the plaintext disk tapdisk presents (with a key), or
    parsed and validated only (key None: info). The EncryptedImage interface (read_ciphertext,
    new_cipher, decrypt_runs) serves the streaming decrypt path; read_into decrypts."""

    format_name = "vhd"
    unit = SECTOR
    cipher = f"{CIPHER_NAME}-{CIPHER_MODE}"
    bat: np.ndarray  # always there: an encrypted VHD is dynamic (checked below)

    def __init__(self, path: str, fd: int | ByteSource,
                 key: bytes | bytearray | None = None) -> None:
        super().__init__(path, fd)  # EncryptedImage -> VhdImage: footer, header, BAT
        f = self.footer
        if self.disk_type != DISK_DYNAMIC:
            raise FormatError(f"{path}: disk_type {self.disk_type} is not 3 (dynamic): only "
                              "dynamic VHDs carry a batmap and a key hash")
        creator = f["creator_application"]
        if creator[:3] != b"tap":
            raise FormatError(f"{path}: creator_application {creator.decode('latin-1')!r} is not "
                              "'tap': tapdisk ignores the batmap and key hash of other creators")
        if f["creator_version"] < TAP_VERSION_WITH_BATMAP:
            raise FormatError(f"{path}: creator_version 0x{f['creator_version']:08x} is older "
                              "than 0x00010002 (1.2), the first with a batmap")
        if self.virtual_size > MAX_PLAIN_IV_SIZE:
            raise UnsupportedError(f"{path}: current_size {self.virtual_size} is over 2 TiB: the "
                                   "32-bit sector tweak of aes-xts-plain would repeat")
        entries = self.dyn_header["max_table_entries"]
        self.batmap_header_offset = batmap_header_offset(self.dyn_header["table_offset"], entries)
        raw = b""
        if self.batmap_header_offset + BATMAP_HEADER.size <= self.file_size:
            raw = self.pread(self.batmap_header_offset, BATMAP_HEADER.size, "batmap header")
        self.batmap = parse_batmap(path, raw, self.file_size, self.batmap_header_offset,
                                   self.virtual_size, entries,
                                   lambda off, n: self.pread(off, n, "batmap"))
        if not self.batmap["encrypted"]:
            raise FormatError(f"{path}: batmap keyhash flag is 0: this tapdisk VHD is not "
                              "encrypted (read it as a plain VHD)")
        meta_end = self.batmap["batmap_offset"] + self.batmap["batmap_size"] * SECTOR
        used = self.bat != BAT_UNUSED
        if used.any() and int(self.bat[used].min()) * SECTOR < meta_end:
            bad = int(np.flatnonzero(used & (self.bat * SECTOR < meta_end))[0])
            raise FormatError(f"{path}: VHD block {bad} at offset {int(self.bat[bad]) * SECTOR} "
                              f"overlaps the batmap (which ends at {meta_end})")
        self.nonce: bytes = self.batmap["nonce"]
        self.key_hash: bytes = self.batmap["key_hash"]
        self.spb = self.block_size // SECTOR
        self.quirk_sectors = 0
        self.quirk_blocks: set[int] = set()
        self._bitmaps: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # reads may run in several threads (one cipher each)
        self.key: bytearray | None = None
        self.key_bits = 0
        if key is not None:
            self._check_key(key)

    def _check_key(self, key: bytes | bytearray) -> None:
        if len(key) not in (32, 64):
            raise WrongKeyError(f"{self.path}: a {len(key)}-byte key cannot open an encrypted VHD "
                                "(vhd-util keys are 32 or 64 bytes)")
        if not hmac.compare_digest(key_hash(key, self.nonce), self.key_hash):
            raise WrongKeyError(f"{self.path}: the key does not match the image's key hash "
                                f"{self.key_hash.hex()}")
        self.key = bytearray(key)
        self.key_bits = len(key) * 8
        self._cipher()  # this thread's: OpenSSL takes the key now or says why not

    def describe(self) -> Encryption:
        """aes-xts-plain, the VHD's notes, and the quirk sectors the reads found so far."""
        with self._lock:
            quirks = Quirks(self.quirk_sectors, tuple(sorted(self.quirk_blocks))) \
                if self.quirk_sectors else None
        return Encryption(self.format_name, self.cipher, None, tuple(self.notes), quirks)

    def new_cipher(self) -> SectorCipher:
        from lukspack.crypto.sector import make_sector_cipher

        if self.key is None:
            raise WrongKeyError(f"{self.path}: reading an encrypted VHD needs its key")
        return make_sector_cipher(CIPHER_NAME, CIPHER_MODE, self.key)

    def close(self) -> None:
        if self.key is not None:
            self.key[:] = bytes(len(self.key))
            self.key = None
        self._local = ThreadCipher()
        super().close()

    # -- reading ---------------------------------------------------------------------------------
    def _present(self, block: int) -> np.ndarray:
        """The block's sectors present (bool per sector): all when its batmap bit is set."""
        got = self._bitmaps.get(block)
        if got is not None:
            return got
        bm = self.batmap["map"]
        if block // 8 < len(bm) and bm[block // 8] & (0x80 >> (block % 8)):
            present = np.ones(self.spb, dtype=bool)
        else:
            raw = self.pread(int(self.bat[block]) * SECTOR, self.bitmap_bytes,
                             f"sector bitmap of block {block}")
            present = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[: self.spb].astype(bool)
        with self._lock:
            if len(self._bitmaps) > 256:
                self._bitmaps.clear()
            self._bitmaps[block] = present
        return present

    def read_ciphertext(self, offset: int, view: memoryview) -> CipherRuns:
        """Fill view (whole sectors at a sector offset) with the stored ciphertext of present
        sectors and zeros elsewhere; return the runs of present sectors (start, length, IV)."""
        if offset % SECTOR or len(view) % SECTOR:
            raise ValueError("encrypted VHD reads are whole 512-byte sectors")
        runs: CipherRuns = []
        end = min(offset + len(view), self.virtual_size)
        pos = offset
        while pos < end:
            block = pos // self.block_size
            inside = pos - block * self.block_size
            n = min(self.block_size - inside, end - pos)
            part = view[pos - offset : pos - offset + n]
            if self.bat[block] == BAT_UNUSED:
                part[:] = bytes(n)
            else:
                for s, length in self._read_present(block, inside, part):
                    runs.append((pos - offset + s, length, (pos + s) // SECTOR))
            pos += n
        if end - offset < len(view):
            view[max(0, end - offset) :] = bytes(len(view) - max(0, end - offset))
        return runs

    def _read_present(self, block: int, inside: int, part: memoryview) -> list[tuple[int, int]]:
        """Read a block's bytes [inside, inside + len(part)) as stored, zero its absent sectors;
        the runs (start in part, length) of present ones."""
        data_at = int(self.bat[block]) * SECTOR + self.bitmap_bytes
        self.pread_exact(data_at + inside, part, f"VHD block {block}")
        present = self._present(block)[inside // SECTOR : (inside + len(part)) // SECTOR]
        sectors = np.frombuffer(part, dtype=np.uint64).reshape(-1, SECTOR // 8)
        quirks = int((present & ~sectors.any(axis=1)).sum())
        if quirks:  # present, yet all-zero ciphertext: what vhd-util's copy leaves
            with self._lock:
                self.quirk_sectors += quirks
                self.quirk_blocks.add(block)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], present.view(np.int8), [0]))))
        runs, prev = [], 0
        for s, e in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
            if s > prev:
                part[prev * SECTOR : s * SECTOR] = bytes((s - prev) * SECTOR)
            runs.append((s * SECTOR, (e - s) * SECTOR))
            prev = e
        if prev < len(present):
            part[prev * SECTOR :] = bytes((len(present) - prev) * SECTOR)
        return runs

    # -- description -----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        out = super().info()
        out["encrypted_vhd"] = encrypted_vhd_fields(self)
        return out


def encrypted_vhd_fields(image: EncryptedVhdImage) -> dict[str, Any]:
    b = image.batmap
    bits = np.unpackbits(np.frombuffer(b["map"], dtype=np.uint8))
    out: dict[str, Any] = {
        "encrypted": True,
        "cipher": f"{CIPHER_NAME}-{CIPHER_MODE}",
        "nonce": image.nonce.hex(),
        "key_hash": image.key_hash.hex(),
        "batmap_header_offset": image.batmap_header_offset,
        "batmap_offset": b["batmap_offset"],
        "batmap_size": b["batmap_size"],
        "batmap_version": f"0x{b['batmap_version']:08x}",
        "batmap_checksum": f"0x{b['checksum']:08x}",
        "marker": b["marker"],
        "full_blocks": int(bits[: len(image.bat)].sum()),
        "allocated_blocks": int((image.bat != BAT_UNUSED).sum()),
    }
    if image.key_bits:
        out["key_bits"] = image.key_bits
    if image.quirk_sectors:
        out["quirk_sectors"] = image.quirk_sectors
        out["quirk_blocks"] = sorted(image.quirk_blocks)
    return out


def open_encrypted_vhd_with_key(path: str, key: bytes | bytearray | None) -> EncryptedVhdImage:
    """Open path with the decoded key (None: parse and validate only, for info)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise FormatError(f"{path}: cannot open: {e.strerror}") from None
    try:
        return EncryptedVhdImage(path, fd, key)
    except BaseException:
        os.close(fd)
        raise


def open_encrypted_vhd(path: str, passphrase: bytes | bytearray) -> EncryptedVhdImage:
    """Open path with a key file's content (base64 DEK or raw 32/64 bytes): the key is checked
    against the stored key hash before anything is decrypted (WrongKeyError)."""
    from lukspack.keys import decode_vhd_key, wipe

    key = decode_vhd_key(passphrase)
    try:
        return open_encrypted_vhd_with_key(path, key)
    finally:
        wipe(key)


def encrypted_vhd_info(path: str, scan_quirks: bool = False) -> dict[str, Any]:
    """What `lukspack info` shows of an encrypted VHD: its VHD fields, nonce, key hash, batmap;
    with scan_quirks, also vhd-util's quirk sectors (reads every allocated block, no key)."""
    image = open_encrypted_vhd_with_key(path, None)
    with image:
        out = image.info()
        if scan_quirks:
            count, blocks = scan_quirk_sectors(image)
            out["encrypted_vhd"]["quirk_sectors"] = count
            out["encrypted_vhd"]["quirk_blocks"] = blocks
        return out


def scan_quirk_sectors(image: EncryptedVhdImage) -> tuple[int, list[int]]:
    """Count present sectors whose ciphertext is all zeros (vhd-util's quirk) without a key."""
    count, blocks = 0, []
    buf = bytearray(image.block_size)
    for block in np.flatnonzero(image.bat != BAT_UNUSED).tolist():
        image.pread_exact(int(image.bat[block]) * SECTOR + image.bitmap_bytes, memoryview(buf),
                          f"VHD block {block}")
        zero = ~np.frombuffer(buf, dtype=np.uint64).reshape(-1, SECTOR // 8).any(axis=1)
        n = int((zero & image._present(block)).sum())
        if n:
            count += n
            blocks.append(block)
    return count, blocks
