"""EncryptedVhd: the container that writes the vhd-util / blktap encrypted VHD (IBM Cloud classic).

The layout is what `vhd-util copy -k KEY` writes (vhd/lib/libvhd.c __vhd_create,
vhd_initialize_header, vhd_create_batmap, __vhd_io_allocate_block):

    0      footer copy (creator 'tap' 1.3, creator OS 0, dynamic, data_offset 512)
    512    dynamic header (table_offset 1536, max_table_entries = blocks, block_size 2 MiB)
    1536   BAT (big-endian sector numbers, 0xFFFFFFFF unallocated), padded to a whole sector
    ...    batmap header 'tdbatmap' (version 1.2, nonce all zeros, keyhash flag 1,
           SHA-256(nonce || key)), then the batmap (one bit per fully populated block)
    ...    blocks in guest order: a 512-byte sector bitmap, then 2 MiB of AES-XTS ciphertext; each
           block's data starts on a 4 KiB boundary (zeros fill the gap, as libvhd leaves it)
    end    footer

The virtual size is rounded up to whole 2 MiB blocks (vhd_create does the same; the tail reads as
zeros). Blocks whose source extents are unallocated, or that hold only zeros, stay unallocated.
Every sector of an allocated block is marked present *and* encrypted: vhd-util's copy marks them
all present but leaves sectors absent from its source as plaintext zeros (its quirk); this
container never does. The prefix (footer copy, header, BAT, batmap) is only known at the end.

Key material: there are no key slots, but the footer (time stamp and unique id, chosen when the
output starts) is what a resumed upload must reuse to be byte-identical to the first run:
build_key_material returns it (512 bytes, saved in the upload journal), recover_volume_key
checks it (cookie, checksum, and every field but those two as this disk's) and takes its time
stamp and unique id. Empty saved material (a journal from before the footer was saved) is
accepted: that resume gets a new footer.
"""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any

import numpy as np

from lukspack.containers.base import ChunkPlan, Finished, Run
from lukspack.errors import FormatError, OutputError, UnsupportedError, VerifyError, WrongKeyError
from lukspack.images.vhd import (
    BAT_UNUSED,
    DISK_DYNAMIC,
    DYN_CHECKSUM_AT,
    DYN_HEADER,
    DYNAMIC_COOKIE,
    FOOTER_COOKIE,
    SECTOR,
    Footer,
    chs_geometry,
    make_dynamic_header,
    pack_footer,
    parse_footer,
    vhd_checksum,
)
from lukspack.images.vhd_crypt import (
    BATMAP_HEADER,
    BLOCK_SHIFT,
    CIPHER_MODE,
    CIPHER_NAME,
    MAX_PLAIN_IV_SIZE,
    NONCE_BYTES,
    TAP_CREATOR,
    TAP_VERSION,
    batmap_checksum,
    batmap_header_offset,
    batmap_map_bytes,
    key_hash,
    pack_batmap_header,
    parse_batmap,
)
from lukspack.keys import decode_vhd_key

BLOCK = 1 << BLOCK_SHIFT  # VHD_BLOCK_SIZE
SPB = BLOCK // SECTOR  # sectors per block
BITMAP_SECTORS = 1  # 4096 bits, one sector
FULL_BITMAP = b"\xff" * (BITMAP_SECTORS * SECTOR)
PAGE_SECTORS = 8  # libvhd starts each block's data on a page (4096-byte) boundary
TABLE_OFFSET = 3 * SECTOR  # 1 footer copy + 2 header sectors
VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z, the VHD timestamp origin
MAX_SECTOR = 0xFFFFFFFF  # BAT entries are 32-bit sector numbers
FOOTER_FEATURES, FOOTER_FORMAT_VERSION, FOOTER_HOST_OS = 2, 0x00010000, b"\0\0\0\0"


def make_tap_footer(size: int, timestamp: int, unique_id: bytes) -> bytes:
    """The footer libvhd writes (vhd_initialize_footer): creator 'tap' 1.3, OS 0, dynamic."""
    cyl, heads, spt = chs_geometry(size // SECTOR)
    return pack_footer(Footer(
        cookie=FOOTER_COOKIE, features=FOOTER_FEATURES, file_format_version=FOOTER_FORMAT_VERSION,
        data_offset=SECTOR, time_stamp=timestamp, creator_application=TAP_CREATOR,
        creator_version=TAP_VERSION, creator_host_os=FOOTER_HOST_OS, original_size=size,
        current_size=size, cylinders=cyl, heads=heads, sectors_per_track=spt,
        disk_type=DISK_DYNAMIC, checksum=0, unique_id=unique_id, saved_state=0))


def _slot_at_or_after(sector: int) -> int:
    """The first block position >= sector whose data (after the bitmap) starts on a page."""
    return sector + (-(sector + BITMAP_SECTORS)) % PAGE_SECTORS


class _Layout:
    """Offsets of the metadata for a disk of `blocks` 2 MiB blocks."""

    def __init__(self, blocks: int) -> None:
        self.blocks = blocks
        self.batmap_header_offset = batmap_header_offset(TABLE_OFFSET, blocks)
        self.batmap_offset = self.batmap_header_offset + BATMAP_HEADER.size
        self.batmap_sectors = max(1, -(-((blocks + 7) // 8) // SECTOR))
        self.headers_end = self.batmap_offset + self.batmap_sectors * SECTOR
        first = _slot_at_or_after(self.headers_end // SECTOR)
        self.first_block_sector = first
        # every later block: bitmap + data, then the gap back to a page boundary
        self.block_stride = _slot_at_or_after(first + BITMAP_SECTORS + SPB) - first

    def end_if_all_allocated(self) -> int:
        if not self.blocks:
            return self.headers_end
        return (self.first_block_sector + (self.blocks - 1) * self.block_stride
                + BITMAP_SECTORS + SPB) * SECTOR


def encrypted_vhd_size(virtual_size: int) -> dict[str, int]:
    """Sizes of the encrypted VHD of a disk of virtual_size bytes (`lukspack size --type vhd`)."""
    blocks = -(-virtual_size // BLOCK)
    lay = _Layout(blocks)
    return {
        "source_bytes": virtual_size,
        "virtual_size": blocks * BLOCK,
        "blocks": blocks,
        "block_size": BLOCK,
        "header_bytes": lay.headers_end,
        "min_total_bytes": lay.headers_end + SECTOR,  # nothing allocated
        "max_total_bytes": lay.end_if_all_allocated() + SECTOR,  # every block allocated
        "bytes_per_allocated_block": lay.block_stride * SECTOR,
    }


class EncryptedVhd:
    """The vhd-util encrypted VHD as an engine container (see containers/base.py)."""

    name = "vhd"
    sparse = True
    chunk_align = BLOCK
    sector_size = SECTOR
    cipher_name = CIPHER_NAME
    cipher_mode = CIPHER_MODE

    def __init__(self, virtual_size: int, *, name: str = "output", timestamp: int | None = None,
                 unique_id: bytes | None = None, skip_zero_blocks: bool = True) -> None:
        self.label = name  # the output, for messages (`name` is the format, as every container)
        if virtual_size <= 0:
            raise FormatError(f"{name}: virtual size {virtual_size} is not positive")
        blocks = -(-virtual_size // BLOCK)
        if blocks * BLOCK > MAX_PLAIN_IV_SIZE:
            raise UnsupportedError(f"{name}: virtual size {virtual_size} is over 2 TiB: an "
                                   "encrypted VHD's 32-bit sector tweak (aes-xts-plain) would "
                                   "repeat")
        self.source_size = virtual_size
        self.disk_size = self.stream_size = blocks * BLOCK  # the tail of the last block: zeros
        self.layout = _Layout(blocks)
        self.prefix_size = self.layout.headers_end
        self.size_hint = self.layout.end_if_all_allocated() + SECTOR  # every block allocated
        self.key_bytes = 64
        self.timestamp = (int(time.time()) - VHD_EPOCH) & 0xFFFFFFFF if timestamp is None \
            else timestamp
        self.unique_id = uuid.uuid4().bytes if unique_id is None else unique_id
        self.skip_zero_blocks = skip_zero_blocks
        self.nonce = bytes(NONCE_BYTES)  # vhd-util copy hashes with an all-zero nonce
        self.bat = np.full(blocks, BAT_UNUSED, dtype=np.uint32)
        self._next_sector = self.prefix_size // SECTOR
        self._next_offset = 0
        self._key_hash: bytes | None = None

    # -- keys: the key file is the key (no KDF, no key slots) ------------------------------------
    def new_volume_key(self, passphrase: bytes | bytearray) -> bytearray:
        key = decode_vhd_key(passphrase)
        self.key_bytes = len(key)
        self._key_hash = key_hash(key, self.nonce)
        return key

    def recover_volume_key(self, key_material: bytes, passphrase: bytes | bytearray,
                           cache: Any) -> bytearray:
        if key_material:
            self.reuse_footer(key_material)
        key = decode_vhd_key(passphrase)
        digest = key_hash(key, self.nonce)
        if self._key_hash is not None and not hmac.compare_digest(digest, self._key_hash):
            raise WrongKeyError(f"{self.label}: the key file does not match the encrypted VHD's "
                                "key hash")
        self.key_bytes = len(key)
        self._key_hash = digest
        return key

    def prepare(self) -> None:
        """Nothing to calibrate: there is no key derivation."""

    def build_key_material(self, volume_key: bytes | bytearray, passphrase: bytes | bytearray,
                           cache: Any) -> bytes:
        """The footer: what a resume must reuse (see the module's docstring)."""
        self.key_bytes = len(volume_key)
        self._key_hash = key_hash(volume_key, self.nonce)
        return self.footer()

    def footer(self) -> bytes:
        return make_tap_footer(self.stream_size, self.timestamp, self.unique_id)

    def reuse_footer(self, saved: bytes) -> None:
        """Take the time stamp and unique id of a saved footer (a resumed upload's key material)
        once it is checked: a footer (cookie, checksum) that this container writes for this disk
        with them. FormatError otherwise."""
        f = parse_footer(saved) if len(saved) == SECTOR else None
        if f is None or not f["checksum_ok"]:
            raise FormatError(f"{self.label}: the saved key material ({len(saved)} bytes) is not "
                              "a VHD footer with a valid checksum")
        if make_tap_footer(self.stream_size, f["time_stamp"], f["unique_id"]) != saved:
            raise FormatError(f"{self.label}: the saved VHD footer is not this disk's (creator "
                              f"{f['creator_application']!r}, size {f['current_size']}, not "
                              f"{TAP_CREATOR!r}, {self.stream_size})")
        self.timestamp, self.unique_id = int(f["time_stamp"]), bytes(f["unique_id"])

    # -- the stream ------------------------------------------------------------------------------
    def plan(self, offset: int, view: memoryview | None, allocated: bool) -> ChunkPlan:
        if offset % BLOCK or offset < self._next_offset:
            raise ValueError(f"{self.label}: chunk at {offset} is not block-aligned or not in "
                             "order")
        if not allocated or view is None:
            self._next_offset = offset
            return ChunkPlan()
        mv = memoryview(view).cast("B")
        if len(mv) % BLOCK or offset + len(mv) > self.stream_size:
            raise ValueError(f"{self.label}: chunk of {len(mv)} bytes at {offset} is not whole "
                             "blocks inside the disk")
        self._next_offset = offset + len(mv)
        plan = ChunkPlan()
        for start in range(0, len(mv), BLOCK):
            if self.skip_zero_blocks and not np.frombuffer(mv[start : start + BLOCK],
                                                           dtype=np.uint64).any():
                continue
            block = (offset + start) // BLOCK
            slot = _slot_at_or_after(self._next_sector)
            end = slot + BITMAP_SECTORS + SPB
            if end > MAX_SECTOR:
                raise OutputError(f"{self.label}: block {block} would start past sector "
                                  f"{MAX_SECTOR}, the limit of the 32-bit BAT")
            gap = bytes((slot - self._next_sector) * SECTOR)
            plan.metadata.append((self._next_sector * SECTOR, gap + FULL_BITMAP))
            plan.runs.append(Run(start, BLOCK, block * SPB, (slot + BITMAP_SECTORS) * SECTOR))
            self.bat[block] = slot
            self._next_sector = end
        return plan

    def finish(self, key_material: bytes) -> Finished:
        if self._key_hash is None:
            raise ValueError(f"{self.label}: finish() before the key was given")
        footer = self.footer()
        if key_material and key_material != footer:
            raise ValueError(f"{self.label}: finish() with another footer than the key "
                             "material's")
        prefix = self.build_prefix()
        end = self._next_sector * SECTOR
        return Finished(prefix, [(end, footer)], end + SECTOR)

    def batmap(self) -> bytes:
        lay = self.layout
        bits = np.zeros(lay.batmap_sectors * SECTOR * 8, dtype=np.uint8)
        bits[: lay.blocks] = self.bat != BAT_UNUSED  # allocated blocks are full: every sector set
        return np.packbits(bits).tobytes()

    def build_prefix(self) -> bytes:
        lay = self.layout
        assert self._key_hash is not None
        bat = self.bat.astype(">u4").tobytes()
        bat += bytes(lay.batmap_header_offset - TABLE_OFFSET - len(bat))
        bitmap = self.batmap()
        checksum = batmap_checksum(bitmap[: batmap_map_bytes(self.stream_size)])
        prefix = b"".join([
            self.footer(),
            make_dynamic_header(TABLE_OFFSET, lay.blocks, BLOCK),
            bat,
            pack_batmap_header(lay.batmap_offset, lay.batmap_sectors, checksum, self.nonce,
                               self._key_hash),
            bitmap,
        ])
        assert len(prefix) == self.prefix_size
        return prefix

    # -- verification ----------------------------------------------------------------------------
    def check_prefix(self, prefix: bytes, passphrase: bytes | bytearray,
                     volume_key: bytes | bytearray, cache: Any) -> None:
        """Parse the prefix from memory as a reader would and compare it with what was written."""
        where = f"{self.label}: verification failed: the encrypted VHD's prefix"
        if len(prefix) != self.prefix_size:
            raise VerifyError(f"{where}: {len(prefix)} bytes, not {self.prefix_size}")
        footer = parse_footer(prefix[:SECTOR])
        if footer is None or not footer["checksum_ok"]:
            raise VerifyError(f"{where}: footer copy is not a valid VHD footer")
        want = {"creator_application": TAP_CREATOR, "creator_version": TAP_VERSION,
                "disk_type": DISK_DYNAMIC, "current_size": self.stream_size,
                "data_offset": SECTOR}
        for name, value in want.items():
            if footer[name] != value:
                raise VerifyError(f"{where}: footer {name} is {footer[name]!r}, not {value!r}")
        dyn = prefix[SECTOR : TABLE_OFFSET]
        h = DYN_HEADER.unpack(dyn)
        if h.cookie != DYNAMIC_COOKIE or vhd_checksum(dyn, DYN_CHECKSUM_AT) != h.checksum:
            raise VerifyError(f"{where}: dynamic header cookie or checksum is wrong")
        geometry = (h.table_offset, h.max_table_entries, h.block_size)
        if geometry != (TABLE_OFFSET, self.layout.blocks, BLOCK):
            raise VerifyError(f"{where}: dynamic header geometry {geometry} is not "
                              f"{(TABLE_OFFSET, self.layout.blocks, BLOCK)}")
        bat = np.frombuffer(prefix, dtype=">u4", count=self.layout.blocks, offset=TABLE_OFFSET)
        if not np.array_equal(bat, self.bat):
            raise VerifyError(f"{where}: BAT differs from the blocks written")
        hdr_at = self.layout.batmap_header_offset
        total = self._next_sector * SECTOR + SECTOR
        try:
            b = parse_batmap(where, prefix[hdr_at : hdr_at + BATMAP_HEADER.size], total, hdr_at,
                             self.stream_size, self.layout.blocks,
                             lambda off, n: prefix[off : off + n])
        except FormatError as e:
            raise VerifyError(str(e)) from None
        if b["map"] != self.batmap()[: len(b["map"])]:
            raise VerifyError(f"{where}: batmap differs from the blocks written")
        key = decode_vhd_key(passphrase)
        try:
            same = hmac.compare_digest(bytes(key), bytes(volume_key))
            opens = hmac.compare_digest(key_hash(key, b["nonce"]), b["key_hash"])
        finally:
            key[:] = bytes(len(key))
        if not b["encrypted"] or not same or not opens:
            raise VerifyError(f"{where}: the key file does not match the stored key hash")

    def summary(self) -> dict[str, Any]:
        allocated = int((self.bat != BAT_UNUSED).sum())
        return {
            "header_bytes": self.prefix_size,
            "payload_bytes": allocated * BLOCK,  # ciphertext stored (bitmaps and gaps aside)
            "block_size": BLOCK,
            "blocks": self.layout.blocks,
            "allocated_blocks": allocated,
            "virtual_size_rounded": self.stream_size,
            "key_bits": self.key_bytes * 8,
            "nonce": self.nonce.hex(),
            "key_hash": self._key_hash.hex() if self._key_hash else None,
            "creator": "tap 1.3",
        }
