"""qcow2 with a LUKS1 header inside (IBM Cloud VPC's encrypted format), as qemu writes it.

The LUKS1 header area lives in clusters named by the qcow2 crypto header extension, laid out as
qemu lays it out (the payload offset right after the key material, not aligned to 1 MiB); only
non-zero clusters of allocated source extents are stored, each encrypted with aes-xts-plain64
whose IV is its *host* offset / 512, as qemu does for LUKS in qcow2 (block/qcow2.c). Sparse:
unallocated source extents are never read, scanned or encrypted; the read-back verification
skips what the written L2 tables call holes (readback.py) and checks the source had zeros there.
"""

from __future__ import annotations

import secrets
import struct
from typing import Any

from lukspack.containers.base import ChunkPlan, Finished
from lukspack.containers.raw_luks import check_luks_header, open_header_bytes
from lukspack.errors import UnsupportedError, VerifyError
from lukspack.images.qcow2_header import CRYPT_LUKS, EXT_CRYPTO_HEADER, parse_header
from lukspack.images.qcow2_write import Qcow2Writer
from lukspack.luks import luks1
from lukspack.luks.format import HeaderFields, KdfOptions
from lukspack.luks.kdf import Pbkdf2Cost, calibrate_before_stream, pbkdf2_cost

KEY_BYTES = 64  # aes-xts-plain64 with two AES-256 keys, as qemu's default
CIPHER = ("aes", "xts-plain64")
LUKS_HEADER_BYTES = luks1.header_bytes(KEY_BYTES, luks1.ALIGN_KEYSLOTS)  # 2068480, as qemu


class Qcow2Luks:
    name = "qcow2"
    sparse = True
    cipher_name, cipher_mode = CIPHER
    key_bytes = KEY_BYTES
    sector_size = 512

    def __init__(self, virtual_size: int, kdf: KdfOptions, *, luks_type: str = "luks1",
                 name: str = "output", fields: HeaderFields | None = None) -> None:
        if luks_type != "luks1":
            raise UnsupportedError(f"qcow2 output holds a LUKS1 header (as qemu writes it), not "
                                   f"{luks_type}: use --type luks1, or a RAW output")
        self.fields = fields or HeaderFields()
        self.fields.check("luks1")
        # bad KDF options (an Argon2 --pbkdf too: qemu's LUKS1 has PBKDF2 slots) fail now
        kdf.slot_kdf("luks1", KEY_BYTES, check_only=True)
        self.kdf = kdf
        self.label = name
        self.writer = Qcow2Writer(virtual_size, crypto_header_length=LUKS_HEADER_BYTES)
        self.chunk_align = self.writer.cluster_size
        self.stream_size = self.writer.stream_size
        self.disk_size = self.writer.size
        self.prefix_size = self.writer.prefix_size
        # an upper bound: every cluster stored, L2 tables and refcounts
        cs = self.writer.cluster_size
        self.size_hint = self.prefix_size + self.stream_size + (self.writer.l1_size + 2) * cs + \
            (-(-self.stream_size // (cs * cs // 2)) + 2) * cs
        self._cost: Pbkdf2Cost | None = None

    def new_volume_key(self, passphrase: bytes | bytearray) -> bytearray:
        return bytearray(secrets.token_bytes(KEY_BYTES))

    def recover_volume_key(self, key_material: bytes, passphrase: bytes | bytearray,
                           cache: Any) -> bytearray:
        return open_header_bytes(self.label, key_material).unlock(passphrase, cache)

    def prepare(self) -> None:
        if calibrate_before_stream(self.kdf.force_iterations):  # cores are shared (SMT)
            self._cost = pbkdf2_cost(self.kdf.hash, KEY_BYTES, self.kdf.iter_time_ms, None)

    def build_key_material(self, volume_key: bytes | bytearray, passphrase: bytes | bytearray,
                           cache: Any) -> bytes:
        """The LUKS1 header area as qemu lays it out inside qcow2. Without a cost from
        prepare(), calibrates PBKDF2 first on this thread's CPU clock, beside the stream."""
        k = self.kdf
        cost = self._cost or pbkdf2_cost(k.hash, KEY_BYTES, k.iter_time_ms, k.force_iterations)
        return luks1.format_luks1(volume_key, passphrase, slot_iterations=cost.slot_iterations,
                                  digest_iterations=cost.digest_iterations, hash_spec=k.hash,
                                  payload_align=luks1.ALIGN_KEYSLOTS, uuid=self.fields.uuid,
                                  key_slot=self.fields.key_slot, cache=cache)

    def plan(self, offset: int, view: memoryview | None, allocated: bool) -> ChunkPlan:
        return self.writer.plan(offset, view, allocated)

    def finish(self, key_material: bytes) -> Finished:
        return self.writer.finish(key_material)

    def check_prefix(self, prefix: bytes, passphrase: bytes | bytearray,
                     volume_key: bytes | bytearray, cache: Any) -> None:
        """Parse the qcow2 header from the prefix, follow its crypto extension and unlock the
        LUKS header there."""
        h = parse_header(prefix[: self.writer.cluster_size], self.label, len(prefix))
        at, length = self.writer.crypto_header or (0, 0)
        ext = h.extensions.get(EXT_CRYPTO_HEADER)
        if h.crypt_method != CRYPT_LUKS or ext is None or struct.unpack(">QQ", ext) != (at, length):
            raise VerifyError(f"{self.label}: verification failed: the qcow2 header does not name "
                              f"the LUKS header at {at} ({length} bytes)")
        if h.size != self.disk_size or h.l1_table_offset != self.writer.l1_table_offset:
            raise VerifyError(f"{self.label}: verification failed: the qcow2 header says size "
                              f"{h.size}, L1 at {h.l1_table_offset}")
        check_luks_header(self.label, prefix[at : at + length], passphrase, volume_key,
                          (length, "-".join(CIPHER), 512, KEY_BYTES), cache)

    def summary(self) -> dict[str, Any]:
        w = self.writer
        return {"output_format": "qcow2", "type": "luks1", "cluster_size": w.cluster_size,
                "data_clusters": w.data_clusters, "luks_header_offset": (w.crypto_header or (0,))[0],
                "luks_header_bytes": LUKS_HEADER_BYTES, "header_bytes": w.metadata_bytes,
                "payload_bytes": w.data_clusters * w.cluster_size}
