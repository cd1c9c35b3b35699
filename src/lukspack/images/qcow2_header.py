"""qcow2 on-disk structures (docs/interop/qcow2.txt), big-endian: the header, its extensions and
the L1/L2 entry bits, parsed and validated before any of them is used. See qcow2.py for the reader.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from lukspack.errors import FormatError, UnsupportedError

MAGIC = b"QFI\xfb"
# magic, version, backing_file_offset, backing_file_size, cluster_bits, size, crypt_method,
# l1_size, l1_table_offset, refcount_table_offset, refcount_table_clusters, nb_snapshots,
# snapshots_offset
HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
# incompatible_features, compatible_features, autoclear_features, refcount_order, header_length
HEADER_V3 = struct.Struct(">QQQII")
V3_HEADER_MIN = HEADER_V2.size + HEADER_V3.size  # 104
EXTENSION = struct.Struct(">II")  # type, length
CRYPTO_EXTENSION = struct.Struct(">QQ")  # offset, length

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO_HEADER = 0x0537BE77
EXT_DATA_FILE = 0x44415441
EXTENSION_NAMES = {EXT_BACKING_FORMAT: "backing_format", EXT_FEATURE_TABLE: "feature_name_table",
                   EXT_BITMAPS: "bitmaps", EXT_CRYPTO_HEADER: "crypto_header",
                   EXT_DATA_FILE: "external_data_file"}

CRYPT_NONE, CRYPT_AES, CRYPT_LUKS = 0, 1, 2
INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE = 1 << 0, 1 << 1, 1 << 2
INCOMPAT_COMPRESSION, INCOMPAT_EXTL2 = 1 << 3, 1 << 4
COMPRESSION_ZLIB = 0

OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
OFFSET_MASK = 0x00FFFFFFFFFFFE00  # L1 and standard L2 entries: bits 9-55
L2_RESERVED = 0x3F00000000000000  # bits 56-61 of a standard entry must be zero

MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
MAX_L1_BYTES = 32 << 20  # qemu's QCOW_MAX_L1_SIZE
MAX_SIZE = 1 << 61  # past this, byte offsets of clusters no longer fit the entries
L2_CACHE_BYTES = 16 << 20

# kinds of an L2 entry
UNALLOCATED, ZERO, NORMAL, COMPRESSED = 0, 1, 2, 3


@dataclass
class Qcow2Header:
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = HEADER_V2.size
    compression_type: int = COMPRESSION_ZLIB
    extensions: dict[int, bytes] = field(default_factory=dict)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


def parse_header(data: bytes, name: str, file_size: int) -> Qcow2Header:
    """Parse and validate the header and its extensions from the file's first cluster (or less)."""
    if len(data) < HEADER_V2.size:
        raise FormatError(f"{name}: qcow2 header truncated ({len(data)} < {HEADER_V2.size} bytes)")
    f = HEADER_V2.unpack_from(data)
    if f[0] != MAGIC:
        raise FormatError(f"{name}: not a qcow2 image (magic {f[0]!r})")
    h = Qcow2Header(*f[1:])
    if h.version == 1:  # --input-format qcow2 on a qcow: sniff.py names it without the option
        from lukspack.images.sniff import foreign_message

        raise UnsupportedError(foreign_message(name, "qcow", "qcow (version 1)"))
    if h.version not in (2, 3):
        raise UnsupportedError(f"{name}: qcow2 version {h.version} is not supported (2 or 3)")
    if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        raise FormatError(f"{name}: qcow2 cluster_bits {h.cluster_bits} is outside "
                          f"{MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}")
    cs = h.cluster_size
    if h.version == 3:
        if len(data) < V3_HEADER_MIN:
            raise FormatError(f"{name}: qcow2 v3 header truncated ({len(data)} bytes)")
        (h.incompatible_features, h.compatible_features, h.autoclear_features, h.refcount_order,
         h.header_length) = HEADER_V3.unpack_from(data, HEADER_V2.size)
        if h.header_length < V3_HEADER_MIN or h.header_length % 8 or h.header_length > cs:
            raise FormatError(f"{name}: qcow2 header_length {h.header_length} is not a multiple "
                              f"of 8 between {V3_HEADER_MIN} and the cluster size {cs}")
        if h.header_length > len(data):  # the file ends inside its own header
            raise FormatError(f"{name}: qcow2 header_length {h.header_length} is past the end "
                              f"of the file (size {len(data)})")
        if h.header_length > V3_HEADER_MIN:
            h.compression_type = data[V3_HEADER_MIN]
        if h.refcount_order > 6:
            raise FormatError(f"{name}: qcow2 refcount_order {h.refcount_order} is above 6")
    _check_features(h, name)
    _check_tables(h, name, file_size)
    h.extensions = _parse_extensions(data, h, name)
    if h.backing_file_offset:
        raise UnsupportedError(
            f"{name}: qcow2 image has a backing file ({_backing_name(data, h)}); lukspack reads "
            "whole images only: flatten it first (qemu-img convert -O qcow2 IMAGE FLAT.qcow2)")
    return h


def _check_features(h: Qcow2Header, name: str) -> None:
    bits = h.incompatible_features
    if bits & INCOMPAT_CORRUPT:
        raise FormatError(f"{name}: qcow2 image is marked corrupt (incompatible feature bit 1); "
                          "repair it with `qemu-img check -r all` first")
    if bits & INCOMPAT_DATA_FILE:
        raise UnsupportedError(f"{name}: qcow2 image keeps its data in an external data file; "
                               "convert it to a self-contained image first")
    if bits & INCOMPAT_EXTL2:
        raise UnsupportedError(f"{name}: qcow2 extended L2 entries (subclusters) are not "
                               "supported; convert with qemu-img convert -O qcow2 first")
    if bits & INCOMPAT_COMPRESSION and h.compression_type != COMPRESSION_ZLIB:
        raise UnsupportedError(f"{name}: qcow2 compression_type {h.compression_type} (zstd) is not "
                               "supported, only zlib")
    unknown = bits & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE |
                       INCOMPAT_COMPRESSION | INCOMPAT_EXTL2)
    if unknown:
        raise UnsupportedError(f"{name}: qcow2 incompatible_features 0x{unknown:x} are unknown")
    if h.compression_type != COMPRESSION_ZLIB:
        raise FormatError(f"{name}: qcow2 compression_type {h.compression_type} is set without "
                          "the compression-type feature bit")
    if h.crypt_method == CRYPT_AES:
        raise UnsupportedError(f"{name}: qcow2 legacy AES encryption (crypt_method 1) is not "
                               "supported (qemu refuses it too); decrypt it with an old qemu-img")
    if h.crypt_method not in (CRYPT_NONE, CRYPT_LUKS):
        raise FormatError(f"{name}: qcow2 crypt_method {h.crypt_method} is not 0, 1 or 2")


def _check_tables(h: Qcow2Header, name: str, file_size: int) -> None:
    cs = h.cluster_size
    if h.size > MAX_SIZE:
        raise FormatError(f"{name}: qcow2 size {h.size} is absurd")
    span = cs * (cs // 8)  # guest bytes one L2 table maps
    needed = -(-h.size // span)
    if h.l1_size < needed:
        raise FormatError(f"{name}: qcow2 l1_size {h.l1_size} is too small for size {h.size} "
                          f"(needs {needed})")
    if h.l1_size * 8 > MAX_L1_BYTES:
        raise FormatError(f"{name}: qcow2 l1_size {h.l1_size} is above qemu's limit "
                          f"({MAX_L1_BYTES // 8})")
    if h.l1_size:
        if h.l1_table_offset % cs:
            raise FormatError(f"{name}: qcow2 l1_table_offset 0x{h.l1_table_offset:x} is not "
                              f"aligned to the cluster size {cs}")
        if h.l1_table_offset + h.l1_size * 8 > file_size:
            raise FormatError(f"{name}: qcow2 L1 table (offset 0x{h.l1_table_offset:x}, "
                              f"{h.l1_size} entries) runs past the end of the file (size "
                              f"{file_size})")
    if h.refcount_table_offset % cs:
        raise FormatError(f"{name}: qcow2 refcount_table_offset 0x{h.refcount_table_offset:x} "
                          f"is not aligned to the cluster size {cs}")


def _parse_extensions(data: bytes, h: Qcow2Header, name: str) -> dict[int, bytes]:
    """Header extensions, read up to the end marker; bounded by the first cluster."""
    exts: dict[int, bytes] = {}
    pos = h.header_length
    limit = min(len(data), h.cluster_size)
    if h.backing_file_offset and h.backing_file_offset < limit:
        limit = max(pos, h.backing_file_offset)
    while pos + EXTENSION.size <= limit:
        kind, length = EXTENSION.unpack_from(data, pos)
        if kind == EXT_END:
            return exts
        body = pos + EXTENSION.size
        if body + length > limit:
            raise FormatError(f"{name}: qcow2 header extension 0x{kind:08x} at offset {pos} "
                              f"(length {length}) runs past the first cluster")
        exts[kind] = bytes(data[body : body + length])
        pos = body + -(-length // 8) * 8
    if h.version == 3:
        raise FormatError(f"{name}: qcow2 header extensions have no end marker")
    return exts


def _backing_name(data: bytes, h: Qcow2Header) -> str:
    start, size = h.backing_file_offset, min(h.backing_file_size, 1023)
    raw = data[start : start + size] if start + size <= len(data) else b""
    return repr(raw.decode("utf-8", "replace")) if raw else f"at offset {start}"
