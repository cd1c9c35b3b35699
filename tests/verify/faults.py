"""Containers that lie, made by monkeypatching the container classes in-process: each fault
places or encrypts one run (or one table entry) differently from what the output's own header
and tables say, and keeps its own plan self-consistent, so a check that decrypts with the plan
passes. The expected first bad guest byte is computed here, with `cryptography`'s AES-XTS, from
the source and the fault alone."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from lukspack.containers.base import ChunkPlan, Run
from lukspack.containers.encrypted_vhd import EncryptedVhd
from lukspack.containers.qcow2_luks import Qcow2Luks
from lukspack.containers.raw_luks import RawLuks
from lukspack.images.vhd import BAT_UNUSED

MiB = 1 << 20
CLUSTER = 65536
AT = 4 * MiB  # the guest offset of the faulty chunk (the engine's second 4 MiB chunk)
VOLUME_KEY = bytes(range(64))  # the payload key of the LUKS containers, known to the oracle


@dataclass
class Fault:
    fmt: str  # raw, qcow2, vhd
    kind: str  # iv, shift, l2, l2-hole, bat
    seen: dict[str, Any] = field(default_factory=dict)  # what the patched plan did

    @property
    def ident(self) -> str:
        return f"{self.fmt}-{self.kind}"


FAULTS = [Fault("raw", "iv"), Fault("raw", "shift"), Fault("qcow2", "iv"), Fault("qcow2", "l2"),
          Fault("qcow2", "l2-hole"), Fault("vhd", "iv"), Fault("vhd", "bat")]
HOLE = 3 * MiB  # MiB 3 of the pattern disk is zeros: qcow2 stores nothing for it


def _xts(key: bytes, sector: int, data: bytes, encrypt: bool, bits32: bool = False) -> bytes:
    tweak = (sector & 0xFFFFFFFF if bits32 else sector).to_bytes(16, "little")
    c = Cipher(algorithms.AES(key), modes.XTS(tweak))
    op = c.encryptor() if encrypt else c.decryptor()
    return op.update(data) + op.finalize()


def _first_diff(a: bytes, b: bytes) -> int:
    return next(i for i in range(len(a)) if a[i] != b[i])


def inject(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    """Patch the container class of fault.fmt so that it writes the fault at guest offset AT."""
    seen = fault.seen
    for cls in (RawLuks, Qcow2Luks):
        monkeypatch.setattr(cls, "new_volume_key", lambda self, p: bytearray(VOLUME_KEY))
    cls = {"raw": RawLuks, "qcow2": Qcow2Luks, "vhd": EncryptedVhd}[fault.fmt]
    plan = cls.plan

    def faulty(self: Any, offset: int, view: Any, allocated: bool) -> ChunkPlan:
        p = plan(self, offset, view, allocated)
        if offset != AT or not p.runs:
            return p
        r = p.runs[0]
        seen["run"] = r
        if fault.kind == "iv":  # encrypted one data unit off: placed right, wrong IV
            p.runs[0] = replace(r, iv_sector=r.iv_sector + 1)
        elif fault.kind == "shift":  # placed 512 bytes late (its last sector dropped)
            p.runs[0] = Run(r.start, r.length - 512, r.iv_sector, r.dest + 512)
        elif fault.kind == "l2":  # the L2 entries of guest clusters 64 and 80 swapped
            w = self.writer
            a, b = AT // CLUSTER % w.l2_entries, (AT + MiB) // CLUSTER % w.l2_entries
            w._l2[a], w._l2[b] = w._l2[b], w._l2[a]
        elif fault.kind == "l2-hole":  # guest cluster 48 (zeros, not stored) -> cluster 64's data
            w = self.writer
            w._l2[HOLE // CLUSTER % w.l2_entries] = w._l2[AT // CLUSTER % w.l2_entries]
        return p

    monkeypatch.setattr(cls, "plan", faulty)
    if fault.kind == "bat":
        finish = EncryptedVhd.finish

        def lost_block(self: EncryptedVhd, key_material: bytes) -> Any:
            self.bat[AT // (2 * MiB)] = BAT_UNUSED  # block 2 written, the BAT says it is not
            return finish(self, key_material)

        monkeypatch.setattr(EncryptedVhd, "finish", lost_block)


def expected_first_bad_byte(fault: Fault, source: Path, key_file: Path) -> int:
    """The first guest byte the output, read as its header and tables say, gets wrong."""
    src = source.read_bytes()
    sector = src[AT : AT + 512]
    if fault.kind == "l2":
        return AT + _first_diff(src[AT : AT + CLUSTER], src[AT + MiB : AT + MiB + CLUSTER])
    if fault.kind == "l2-hole":  # the hole reads as cluster 64's plaintext
        return HOLE + next(i for i in range(CLUSTER) if src[AT + i] != src[HOLE + i])
    if fault.kind == "bat":
        return AT + next(i for i in range(2 * MiB) if src[AT + i])  # the block reads as zeros
    if fault.fmt == "vhd":
        from lukspack.keys import decode_vhd_key

        key, bits32 = bytes(decode_vhd_key(key_file.read_bytes())), True
    else:
        key, bits32 = VOLUME_KEY, False
    iv = fault.seen["run"].iv_sector  # the IV the output's own layout implies
    # iv: encrypted one unit off; shift: the first 512 bytes of the run's place never written
    stored = _xts(key, iv + 1, sector, True, bits32) if fault.kind == "iv" else bytes(512)
    return AT + _first_diff(_xts(key, iv, stored, False, bits32), sector)
