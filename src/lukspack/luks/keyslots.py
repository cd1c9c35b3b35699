"""Key slot management on an existing image, in place: add-key and remove-key, LUKS1 and LUKS2,
in a RAW LUKS image or inside a qcow2+LUKS image (IBM Cloud VPC's encrypted format).

As `cryptsetup luksAddKey` / `luksRemoveKey`: a passphrase that opens a slot proves the right to
change the image. Adding writes and fsyncs the new slot's key material before the header that
activates it; removing overwrites the slot's material with random bytes before the header that
drops it. A LUKS2 header is written as both copies (primary, then secondary) with seqid + 1, after
checking that no one else changed it since it was read. Removing the last slot that opens the data
segment is refused: the image would be lost.

A qcow2 image is recognised by its content (the qcow2 magic), not its name. Its LUKS1 header
lives in the clusters its crypto header extension names (offset, length), as qemu lays it out;
key material and header are rewritten in place there, never past that area, and nothing else of
the qcow2 file changes (qemu-img amend changes the same bytes).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import secrets
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from lukspack.crypto.sector import check_cipher
from lukspack.errors import FormatError, LukspackError, UnsupportedError
from lukspack.images.qcow2 import MAGIC as QCOW2_MAGIC
from lukspack.images.qcow2 import Qcow2Image
from lukspack.keys import wipe
from lukspack.luks import luks1, luks2, luks2_format
from lukspack.luks import luks2_json as lj
from lukspack.luks.format import KdfOptions
from lukspack.luks.metadata import seal_keyslot
from lukspack.luks.open import open_luks, open_region
from lukspack.luks.volume import LuksVolume

T = TypeVar("T")
KdfProgress = Callable[[str, float, "float | None"], None]
log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Target:
    """The LUKS header area of an image opened for writing: [base, base + length) of the file."""

    fd: int
    path: str
    base: int
    length: int  # bytes of the LUKS area (the file size for a RAW image)
    container: str  # "raw" or "qcow2"
    vol: LuksVolume = dataclasses.field(init=False)
    progress: KdfProgress | None = dataclasses.field(default=None, init=False)

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > self.length:
            raise FormatError(f"{self.path}: LUKS header read of {size} bytes at {offset} runs "
                              f"past the {self.container} LUKS area ({self.length} bytes)")
        data = os.pread(self.fd, size, self.base + offset)
        if len(data) != size:
            raise FormatError(f"{self.path}: {size} bytes at offset {self.base + offset} are past "
                              "the end of the file")
        return data

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.length:  # never outside the LUKS area
            raise LukspackError(f"{self.path}: a {len(data)}-byte write at {offset} would leave "
                                f"the {self.container} LUKS area ({self.length} bytes); nothing "
                                "was written there")
        view, at = memoryview(data), self.base + offset
        try:
            while view:
                n = os.pwrite(self.fd, view, at)
                view, at = view[n:], at + n
            os.fsync(self.fd)
        except OSError as e:
            raise LukspackError(f"{self.path}: write failed at offset {at}: {e.strerror}") from None


def _locate(fd: int, path: str) -> _Target:
    """Find the LUKS header by content: at 0 of a RAW image, or in a qcow2's crypto clusters."""
    if os.pread(fd, 4, 0) != QCOW2_MAGIC:
        from lukspack.disks import not_encrypted

        plain = not_encrypted(path, fd)  # a plain VHD, VMDK...: said so, not a hex magic
        if plain is not None:
            raise LukspackError(plain)
        t = _Target(fd, path, 0, os.lseek(fd, 0, os.SEEK_END), "raw")
        t.vol = open_luks(path, fd)
        return t
    image = Qcow2Image(path, fd, allow_encrypted=True)  # validates header, L1, crypto extension
    if image.crypto_header is None:
        raise LukspackError(f"{path}: not encrypted (qcow2, no LUKS); it has no key slots")
    base, length = image.crypto_header
    t = _Target(fd, path, base, length, "qcow2")
    t.vol = open_region(path, t.read_at, length)
    if t.vol.version != 1:
        raise UnsupportedError(f"{path}: LUKS{t.vol.version} inside qcow2 is not supported "
                               "(qemu writes LUKS1)")
    return t


# QEMU (a VM, qemu-img, qemu-io, qemu-nbd) takes open file description locks on bytes 100.. for
# the permissions it holds and 200.. for those it does not share (block/file-posix.c,
# raw_apply_lock_bytes). A write lock over both ranges fails while any QEMU has the image open,
# and keeps QEMU from opening it while the key slots change.
_QEMU_LOCK_BYTES = (100, 200)  # start, length
_FLOCK = struct.Struct("hhxxxxqqi4x")  # struct flock: l_type, l_whence, l_start, l_len, l_pid


def _lock_out_qemu(fd: int, path: str) -> None:
    setlk = getattr(fcntl, "F_OFD_SETLK", None)
    if setlk is None:  # not Linux: flock() above is the only lock
        return
    start, length = _QEMU_LOCK_BYTES
    try:
        fcntl.fcntl(fd, setlk, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, length, 0))
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise LukspackError(f"{path}: in use by QEMU (it holds the image's locks); stop the "
                                "VM or qemu process first") from None
        raise LukspackError(f"{path}: cannot lock: {e.strerror}") from None


@contextmanager
def _open_rw(path: str) -> Iterator[_Target]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise LukspackError(f"{path}: cannot open for writing: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LukspackError(f"{path}: in use by another process (locked)") from None
        _lock_out_qemu(fd, path)
        yield _locate(fd, path)
    finally:
        os.close(fd)


def _slow(fn: Callable[[], T], progress: KdfProgress | None = None, phase: str = "kdf",
          expected: float | None = None) -> T:
    """Run key derivation in a thread and wait in short steps: Argon2 with a large cost can take
    minutes in one C call, which would hold off the CLI's SIGINT/SIGTERM handling. Writes stay in
    the calling thread, so an interrupt never leaves half a header behind. progress(phase,
    seconds so far, seconds expected or None) is called at each step and once at the end."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    started = time.monotonic()
    t = threading.Thread(target=run, name="lukspack-kdf", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.1)
        if progress is not None:
            progress(phase, time.monotonic() - started, expected)
    log.info("%s: %.3f s", phase, time.monotonic() - started)
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def add_key(path: str, passphrase: bytes | bytearray, new_passphrase: bytes | bytearray,
            kdf: KdfOptions, *, key_slot: int | None = None,
            new_name: str = "new key", progress: KdfProgress | None = None,
            hash_name: str | None = None) -> dict[str, Any]:
    """Add a key slot opened by new_passphrase; passphrase must open an existing slot. In a
    qcow2+LUKS image the new passphrase follows keys.key_for_target's VPC rule (UTF-8, as QEMU
    reads secrets), checked before anything is unlocked or written.
    progress(phase, seconds, expected seconds or None): called while each KDF runs ("unlock",
    "calibrate", "key slot"). A KDF over a minute is announced first (a warning).
    hash_name: the --hash asked for (None: LUKS1 the header's, LUKS2 sha256); it replaces
    kdf.hash when given."""
    if hash_name is not None:
        kdf = dataclasses.replace(kdf, hash=hash_name)
    with _open_rw(path) as t:
        t.progress = progress
        notes = []
        if t.container == "qcow2":
            from lukspack.keys import key_for_target

            notes = key_for_target("vpc", new_passphrase, new_name).warnings
        if isinstance(t.vol.header, luks1.Luks1Header):
            r = _add_luks1(t, t.vol.header, passphrase, new_passphrase, kdf, key_slot,
                           asked=hash_name)
        else:
            assert isinstance(t.vol.header, luks2.Luks2Header)
            r = _add_luks2(t, t.vol.header, passphrase, new_passphrase, kdf, key_slot)
        return {"container": t.container, **r, **({"warnings": notes} if notes else {})}


def remove_key(path: str, passphrase: bytes | bytearray) -> dict[str, Any]:
    """Remove the key slot that passphrase opens, unless it is the last one."""
    with _open_rw(path) as t:
        if isinstance(t.vol.header, luks1.Luks1Header):
            r = _remove_luks1(t, t.vol.header, passphrase)
        else:
            assert isinstance(t.vol.header, luks2.Luks2Header)
            r = _remove_luks2(t, t.vol.header, passphrase)
        return {"container": t.container, **r}


def _expected(kdf: KdfOptions, pbkdf: str, key_bytes: int) -> float | None:
    """Seconds the new key slot's KDF takes: --iter-time when calibrated, else estimated
    (only for a forced cost that may be long)."""
    from lukspack.luks.estimate import estimate_kdf_seconds

    est = estimate_kdf_seconds(pbkdf, kdf.hash or "sha256", key_bytes,
                               iter_time_ms=kdf.iter_time_ms,
                               force_iterations=kdf.force_iterations, memory_kb=kdf.memory_kb,
                               parallel=kdf.parallel, measure=False)
    return est or None


def _announce(kdf: KdfOptions, luks_type: str, key_bytes: int) -> None:
    """Say before it starts how long a KDF over a minute will take (luks/estimate.py)."""
    from lukspack.luks.estimate import long_kdf_note

    pbkdf = kdf.pbkdf or ("argon2id" if luks_type == "luks2" else "pbkdf2")
    note = long_kdf_note(pbkdf, kdf.hash or "sha256", key_bytes, iter_time_ms=kdf.iter_time_ms,
                         force_iterations=kdf.force_iterations, memory_kb=kdf.memory_kb,
                         parallel=kdf.parallel)
    if note is not None:
        warnings.warn(note, stacklevel=3)


def _unlock(t: _Target, passphrase: bytes | bytearray) -> tuple[bytearray, int]:
    return _slow(lambda: t.vol.header.unlock_slot(t.read_at, passphrase, t.path), t.progress,
                 "unlock")


# -- LUKS1 -------------------------------------------------------------------------------------

def _add_luks1(t: _Target, hdr: luks1.Luks1Header, passphrase: bytes | bytearray,
               new_passphrase: bytes | bytearray, kdf: KdfOptions,
               key_slot: int | None, asked: str | None = None) -> dict[str, Any]:
    if asked not in (None, hdr.hash_spec):
        raise LukspackError(f"{t.path}: LUKS1 key slots use the header's hash {hdr.hash_spec}, "
                            f"not --hash {asked}")
    kdf = dataclasses.replace(kdf, hash=hdr.hash_spec)
    free = [i for i, s in enumerate(hdr.slots) if not s.enabled]
    index = _pick_slot(t.path, key_slot, free, luks1.NUM_KEYS)
    kdf.check("luks1", hdr.key_bytes)
    _announce(kdf, "luks1", hdr.key_bytes)
    key, opened = _unlock(t, passphrase)
    try:
        cost = _slow(lambda: kdf.slot_kdf("luks1", hdr.key_bytes), t.progress, "calibrate")
        assert cost is not None
        material = _slow(lambda: luks1.seal_slot(hdr, index, key, new_passphrase,
                                                 cost.iterations), t.progress, "key slot",
                         _expected(kdf, "pbkdf2", hdr.key_bytes))
    finally:
        wipe(key)
    t.write(hdr.slots[index].key_material_offset * luks1.SECTOR, material)
    t.write(0, hdr.pack())
    return {"image": t.path, "type": "luks1", "opened_slot": opened, "added_slot": index,
            "pbkdf": "pbkdf2", "hash": hdr.hash_spec, "iterations": cost.iterations,
            "active_slots": hdr.active_slots()}


def _remove_luks1(t: _Target, hdr: luks1.Luks1Header,
                  passphrase: bytes | bytearray) -> dict[str, Any]:
    key, index = _unlock(t, passphrase)
    wipe(key)
    active = hdr.active_slots()
    if active == [index]:
        raise LukspackError(f"{t.path}: key slot {index} is the last active key slot; removing "
                            "it would leave the image impossible to open")
    slot = hdr.slots[index]
    size = hdr.material_sectors() * luks1.SECTOR
    t.write(slot.key_material_offset * luks1.SECTOR, secrets.token_bytes(size))
    slot.active, slot.iterations, slot.salt = luks1.KEY_DISABLED, 0, bytes(luks1.SALT_SIZE)
    t.write(0, hdr.pack())
    return {"image": t.path, "type": "luks1", "removed_slot": index,
            "active_slots": [i for i in active if i != index]}


# -- LUKS2 -------------------------------------------------------------------------------------

def _pick_slot(path: str, wanted: int | None, free: list[int], count: int) -> int:
    if wanted is None:
        if not free:
            raise LukspackError(f"{path}: all {count} key slots are in use")
        return free[0]
    if not 0 <= wanted < count:
        raise LukspackError(f"{path}: --key-slot {wanted} is outside 0..{count - 1}")
    if wanted not in free:
        raise LukspackError(f"{path}: key slot {wanted} is in use")
    return wanted


def _find_area(hdr: luks2.Luks2Header, length: int, name: str) -> int:
    """First gap of `length` bytes in the keyslots area (cryptsetup's LUKS2_find_area_gap)."""
    used = sorted((int(ks["area"]["offset"]), int(ks["area"]["size"]))
                  for ks in hdr.json["keyslots"].values() if isinstance(ks.get("area"), dict))
    offset = 2 * hdr.hdr_size
    for start, size in used:
        if offset + length <= start:
            break
        offset = max(offset, start + size)
    if offset + length > hdr.areas_end:
        raise LukspackError(f"{name}: no room for a {length}-byte key slot area in the keyslots "
                            f"area (ends at {hdr.areas_end})")
    return offset


def _snapshot(t: _Target, hdr: luks2.Luks2Header) -> bytes:
    """Both header copies as they are on disk now."""
    return t.read_at(0, 2 * hdr.hdr_size)


def _write_luks2(t: _Target, hdr: luks2.Luks2Header, snapshot: bytes) -> int:
    """Write both copies with seqid + 1, after checking that the headers on disk are still the
    ones that were read (cryptsetup's concurrent-update check)."""
    if _snapshot(t, hdr) != snapshot:
        raise LukspackError(f"{t.path}: the LUKS2 header changed while lukspack worked; nothing "
                            "was written")
    lj.validate(hdr.json, hdr.hdr_size - luks2.BIN_LEN)
    seqid = hdr.bin.seqid + 1
    primary, secondary = hdr.pack(seqid)
    t.write(0, primary)
    t.write(hdr.hdr_size, secondary)
    return seqid


def _segment_digest(hdr: luks2.Luks2Header) -> dict[str, Any]:
    return next(d for d in hdr.json["digests"].values() if "0" in d["segments"])


def _add_luks2(t: _Target, hdr: luks2.Luks2Header, passphrase: bytes | bytearray,
               new_passphrase: bytes | bytearray, kdf: KdfOptions,
               key_slot: int | None) -> dict[str, Any]:
    vol = t.vol
    snapshot = _snapshot(t, hdr)
    kdf = dataclasses.replace(kdf, hash=kdf.hash or "sha256")
    slots = hdr.json["keyslots"]
    index = _pick_slot(vol.path, key_slot, [i for i in range(luks2.MAX_KEYSLOTS)
                                            if str(i) not in slots], luks2.MAX_KEYSLOTS)
    key_size = vol.key_bytes
    try:  # the keyslot cipher: the segment's when it can encrypt a keyslot, as cryptsetup
        check_cipher(vol.cipher_name, vol.cipher_mode, key_size)
        encryption, area_key = vol.cipher, key_size
    except UnsupportedError:
        encryption, area_key = "aes-xts-plain64", 64
    kdf.check("luks2", area_key)
    _announce(kdf, "luks2", area_key)
    area_size = luks2_format.keyslot_area_size(key_size)
    offset = _find_area(hdr, area_size, vol.path)
    key, opened = _unlock(t, passphrase)
    try:
        cost = _slow(lambda: kdf.slot_kdf("luks2", area_key), t.progress, "calibrate")
        assert cost is not None
        slot = luks2_format.new_keyslot(index, key_size, cost, offset, area_size, encryption,
                                        area_key)
        material = _slow(lambda: seal_keyslot(slot, key, new_passphrase), t.progress,
                         "key slot", _expected(kdf, cost.type, area_key))
    finally:
        wipe(key)
    slots[str(index)] = luks2_format.keyslot_json(slot)
    _segment_digest(hdr)["keyslots"].append(str(index))
    try:
        lj.validate(hdr.json, hdr.hdr_size - luks2.BIN_LEN)
    except lj.InvalidMetadata as e:
        raise FormatError(f"{vol.path}: cannot add key slot {index}: {e}") from None
    t.write(offset, material)
    seqid = _write_luks2(t, hdr, snapshot)
    return {"image": vol.path, "type": "luks2", "opened_slot": opened, "added_slot": index,
            "pbkdf": cost.type, "hash": cost.hash, "iterations": cost.iterations,
            "memory_kb": cost.memory, "parallel": cost.parallel, "area_offset": offset,
            "seqid": seqid, "active_slots": [int(k) for k in hdr.active_keyslots()]}


def _remove_luks2(t: _Target, hdr: luks2.Luks2Header,
                  passphrase: bytes | bytearray) -> dict[str, Any]:
    vol = t.vol
    snapshot = _snapshot(t, hdr)
    key, index = _unlock(t, passphrase)
    wipe(key)
    active = hdr.active_keyslots()
    if active == [str(index)]:
        raise LukspackError(f"{vol.path}: key slot {index} is the last key slot that opens the "
                            "data; removing it would leave the image impossible to open")
    ks = hdr.json["keyslots"].pop(str(index))
    for section in ("digests", "tokens"):
        for obj in hdr.json[section].values():
            if str(index) in obj.get("keyslots", []):
                obj["keyslots"].remove(str(index))
    area = ks["area"]
    t.write(int(area["offset"]), secrets.token_bytes(int(area["size"])))
    seqid = _write_luks2(t, hdr, snapshot)
    return {"image": vol.path, "type": "luks2", "removed_slot": index, "seqid": seqid,
            "active_slots": [int(k) for k in active if k != str(index)]}
