"""The container interface: what the engine asks of every encrypted output layout.

A container turns the guest disk, streamed in order in chunks, into an output image:

- plan(offset, view, allocated), on the reader thread, in guest order, says where the chunk's
  bytes go: `Run`s (start in the chunk, length, IV sector of the run's first data unit, output
  offset) to be encrypted at that IV and placed there, and plaintext `metadata` (qcow2 L2 tables,
  VHD sector bitmaps) placed with the chunk. A sparse container gives no runs for a chunk whose
  source extents are unallocated (`allocated=False`: the engine did not even read it).
- The output starts with a *prefix* [0, prefix_size) that is only known late: the LUKS header
  area (built by the slow key derivation, in a thread beside the payload), for qcow2 also the
  qcow2 header and L1 table, for an encrypted VHD the footer copy, headers, BAT and batmap.
  finish(key_material) returns it with the *trailer*: what follows the payload (qcow2's last L2
  table and refcounts, a VHD's footer), in ascending output order.
- Every output byte is written once, in ascending order after the prefix; the prefix last.
  That is what lets an object-storage sink stream the image into a multipart upload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Placement = tuple[int, bytes]  # (output offset, plaintext bytes)


@dataclass(frozen=True)
class Run:
    start: int  # offset in the chunk
    length: int
    iv_sector: int  # IV of the run's first data unit, in 512-byte units
    dest: int  # output offset


@dataclass
class ChunkPlan:
    runs: list[Run] = field(default_factory=list)
    metadata: list[Placement] = field(default_factory=list)  # placed after the runs, ascending

    @property
    def data_bytes(self) -> int:
        return sum(r.length for r in self.runs)

    @property
    def end(self) -> int:
        """The output offset just past the last byte this chunk places (0 if it places none)."""
        ends = [r.dest + r.length for r in self.runs] + [o + len(b) for o, b in self.metadata]
        return max(ends, default=0)


@dataclass(frozen=True)
class Finished:
    prefix: bytes  # output bytes [0, prefix_size)
    trailer: list[Placement]  # after the payload, ascending
    total_size: int  # the output's size in bytes


@runtime_checkable
class Container(Protocol):
    """Every member the engine, encrypt and the read-back use; nothing is probed."""

    name: str  # output format: "luks1", "luks2", "qcow2", "vhd"
    sparse: bool  # unallocated source extents produce no runs (and are never read)
    chunk_align: int  # the engine's chunks are whole multiples of this many bytes
    stream_size: int  # guest bytes the engine streams (the virtual size, rounded up)
    disk_size: int  # bytes of the encrypted disk as it decrypts (what the read-back must find)
    size_hint: int  # an upper bound of the output's size (RAW LUKS: its exact size)
    prefix_size: int  # [0, prefix_size) is written last, from finish()
    key_bytes: int  # volume key length
    cipher_name: str
    cipher_mode: str
    sector_size: int  # encryption data unit in bytes (LUKS2 may use 4096)

    def new_volume_key(self, passphrase: bytes | bytearray) -> bytearray:
        """The key the payload is encrypted with: random for LUKS; for an encrypted VHD the key
        file's decoded bytes (vhd-util has no key slots)."""

    def recover_volume_key(self, key_material: bytes, passphrase: bytes | bytearray,
                           cache: Any) -> bytearray:
        """The volume key from saved key material (a resumed upload): unlock it with the key
        file. WrongKeyError when the key file does not open it."""

    def prepare(self) -> None:
        """Work that must run before the stream loads the CPU (Argon2 calibration)."""

    def build_key_material(self, volume_key: bytes | bytearray,
                           passphrase: bytes | bytearray, cache: Any) -> bytes:
        """The slow part of the prefix (LUKS header area: KDF), run in a background thread."""

    def plan(self, offset: int, view: memoryview | None, allocated: bool) -> ChunkPlan:
        """Where the chunk at guest offset goes; view is None when allocated is False."""

    def finish(self, key_material: bytes) -> Finished:
        """After the stream: the prefix, the trailer and the total size."""

    def check_prefix(self, prefix: bytes, passphrase: bytes | bytearray,
                     volume_key: bytes | bytearray, cache: Any) -> None:
        """Verification before the prefix is placed: parse it from memory, unlock it with the
        key file, and compare the key and geometry with what the payload was written with.
        Raises VerifyError."""

    def summary(self) -> dict[str, Any]:
        """Format-specific facts for the encrypt summary (header bytes, clusters, ...)."""
