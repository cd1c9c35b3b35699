"""Key slot management on an existing image, in place: add-key and remove-key, LUKS1 and LUKS2.

As `cryptsetup luksAddKey` / `luksRemoveKey`: a passphrase that opens a slot proves the right to
change the image. Adding writes and fsyncs the new slot's key material before the header that
activates it; removing overwrites the slot's material with random bytes before the header that
drops it. A LUKS2 header is written as both copies (primary, then secondary) with seqid + 1, after
checking that no one else changed it since it was read. Removing the last slot that opens the data
segment is refused: the image would be lost.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from lukspack.crypto.sector import check_cipher
from lukspack.errors import FormatError, LukspackError, UnsupportedError, WrongKeyError
from lukspack.keys import wipe
from lukspack.luks import luks1, luks2, luks2_format
from lukspack.luks import luks2_json as lj
from lukspack.luks.format import KdfOptions
from lukspack.luks.volume import LuksVolume, open_luks

T = TypeVar("T")


@contextmanager
def _open_rw(path: str) -> Iterator[tuple[int, LuksVolume]]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise LukspackError(f"{path}: cannot open for writing: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LukspackError(f"{path}: in use by another process (locked)") from None
        yield fd, open_luks(path, fd)
    finally:
        os.close(fd)


def _slow(fn: Callable[[], T]) -> T:
    """Run key derivation in a thread and wait in short steps: Argon2 with a large cost can take
    minutes in one C call, which would hold off the CLI's SIGINT/SIGTERM handling. Writes stay in
    the calling thread, so an interrupt never leaves half a header behind."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="lukspack-kdf", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.1)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _write(fd: int, path: str, offset: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
        os.fsync(fd)
    except OSError as e:
        raise LukspackError(f"{path}: write failed at offset {offset}: {e.strerror}") from None


def add_key(path: str, passphrase: bytes | bytearray, new_passphrase: bytes | bytearray,
            kdf: KdfOptions, *, key_slot: int | None = None) -> dict[str, Any]:
    """Add a key slot opened by new_passphrase; passphrase must open an existing slot."""
    with _open_rw(path) as (fd, vol):
        if vol.version == 1:
            return _add_luks1(fd, vol, passphrase, new_passphrase, kdf, key_slot)
        return _add_luks2(fd, vol, passphrase, new_passphrase, kdf, key_slot)


def remove_key(path: str, passphrase: bytes | bytearray) -> dict[str, Any]:
    """Remove the key slot that passphrase opens, unless it is the last one."""
    with _open_rw(path) as (fd, vol):
        if vol.version == 1:
            return _remove_luks1(fd, vol, passphrase)
        return _remove_luks2(fd, vol, passphrase)


# -- LUKS1 -------------------------------------------------------------------------------------

def _unlock_luks1(hdr: luks1.Luks1Header, read_at, passphrase: bytes | bytearray,
                  name: str) -> tuple[bytearray, int]:
    check_cipher(hdr.cipher_name, hdr.cipher_mode, hdr.key_bytes)
    size = hdr.material_sectors() * luks1.SECTOR
    for i, s in enumerate(hdr.slots):
        if s.enabled:
            key = hdr.open_slot(i, passphrase, bytearray(read_at(s.key_material_offset *
                                                                 luks1.SECTOR, size)))
            if key is not None:
                return key, i
    raise WrongKeyError(f"{name}: no key slot opens with this key file")


def _add_luks1(fd: int, vol: LuksVolume, passphrase: bytes | bytearray,
               new_passphrase: bytes | bytearray, kdf: KdfOptions,
               key_slot: int | None) -> dict[str, Any]:
    hdr: luks1.Luks1Header = vol.header
    if kdf.hash not in (None, hdr.hash_spec):
        raise LukspackError(f"{vol.path}: LUKS1 key slots use the header's hash {hdr.hash_spec}, "
                            f"not --hash {kdf.hash}")
    kdf = dataclasses.replace(kdf, hash=hdr.hash_spec)
    free = [i for i, s in enumerate(hdr.slots) if not s.enabled]
    index = _pick_slot(vol.path, key_slot, free, luks1.NUM_KEYS)
    kdf.slot_kdf("luks1", hdr.key_bytes, check_only=True)
    key, opened = _slow(lambda: _unlock_luks1(hdr, vol.read_at, passphrase, vol.path))
    try:
        cost = _slow(lambda: kdf.slot_kdf("luks1", hdr.key_bytes))
        material = _slow(lambda: luks1.seal_slot(hdr, index, key, new_passphrase,
                                                 cost.iterations))
    finally:
        wipe(key)
    _write(fd, vol.path, hdr.slots[index].key_material_offset * luks1.SECTOR, material)
    _write(fd, vol.path, 0, hdr.pack())
    return {"image": vol.path, "type": "luks1", "opened_slot": opened, "added_slot": index,
            "pbkdf": "pbkdf2", "hash": hdr.hash_spec, "iterations": cost.iterations,
            "active_slots": [i for i, s in enumerate(hdr.slots) if s.enabled]}


def _remove_luks1(fd: int, vol: LuksVolume, passphrase: bytes | bytearray) -> dict[str, Any]:
    hdr: luks1.Luks1Header = vol.header
    key, index = _slow(lambda: _unlock_luks1(hdr, vol.read_at, passphrase, vol.path))
    wipe(key)
    active = [i for i, s in enumerate(hdr.slots) if s.enabled]
    if active == [index]:
        raise LukspackError(f"{vol.path}: key slot {index} is the last active key slot; removing "
                            "it would leave the image impossible to open")
    slot = hdr.slots[index]
    size = hdr.material_sectors() * luks1.SECTOR
    _write(fd, vol.path, slot.key_material_offset * luks1.SECTOR, secrets.token_bytes(size))
    slot.active, slot.iterations, slot.salt = luks1.KEY_DISABLED, 0, bytes(luks1.SALT_SIZE)
    _write(fd, vol.path, 0, hdr.pack())
    return {"image": vol.path, "type": "luks1", "removed_slot": index,
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


def _snapshot(fd: int, hdr: luks2.Luks2Header) -> bytes:
    """Both header copies as they are on disk now."""
    return os.pread(fd, 2 * hdr.hdr_size, 0)


def _write_luks2(fd: int, vol: LuksVolume, hdr: luks2.Luks2Header, snapshot: bytes) -> int:
    """Write both copies with seqid + 1, after checking that the headers on disk are still the
    ones that were read (cryptsetup's concurrent-update check)."""
    if _snapshot(fd, hdr) != snapshot:
        raise LukspackError(f"{vol.path}: the LUKS2 header changed while lukspack worked; nothing "
                            "was written")
    lj.validate(hdr.json, hdr.hdr_size - luks2.BIN_LEN)
    seqid = hdr.bin.seqid + 1
    primary, secondary = hdr.pack(seqid)
    _write(fd, vol.path, 0, primary)
    _write(fd, vol.path, hdr.hdr_size, secondary)
    return seqid


def _segment_digest(hdr: luks2.Luks2Header) -> dict[str, Any]:
    return next(d for d in hdr.json["digests"].values() if "0" in d["segments"])


def _add_luks2(fd: int, vol: LuksVolume, passphrase: bytes | bytearray,
               new_passphrase: bytes | bytearray, kdf: KdfOptions,
               key_slot: int | None) -> dict[str, Any]:
    hdr: luks2.Luks2Header = vol.header
    snapshot = _snapshot(fd, hdr)
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
    kdf.slot_kdf("luks2", area_key, check_only=True)
    area_size = luks2_format.keyslot_area_size(key_size)
    offset = _find_area(hdr, area_size, vol.path)
    key, opened = _slow(lambda: hdr.unlock_slot(vol.read_at, passphrase, vol.path))
    try:
        slot = _slow(lambda: kdf.slot_kdf("luks2", area_key))
        salt = secrets.token_bytes(luks2.SALT_SIZE)
        material = _slow(lambda: luks2_format.seal_keyslot(key, new_passphrase, slot, salt, encryption,
                                                    area_key))
    finally:
        wipe(key)
    slots[str(index)] = luks2_format.keyslot_json(key_size, slot, salt, offset, area_size, encryption,
                                           area_key)
    _segment_digest(hdr)["keyslots"].append(str(index))
    try:
        lj.validate(hdr.json, hdr.hdr_size - luks2.BIN_LEN)
    except lj.InvalidMetadata as e:
        raise FormatError(f"{vol.path}: cannot add key slot {index}: {e}") from None
    _write(fd, vol.path, offset, material)
    seqid = _write_luks2(fd, vol, hdr, snapshot)
    return {"image": vol.path, "type": "luks2", "opened_slot": opened, "added_slot": index,
            "pbkdf": slot.type, "hash": slot.hash, "iterations": slot.iterations,
            "memory_kb": slot.memory, "parallel": slot.parallel, "area_offset": offset,
            "seqid": seqid, "active_slots": [int(k) for k in hdr.active_keyslots()]}


def _remove_luks2(fd: int, vol: LuksVolume, passphrase: bytes | bytearray) -> dict[str, Any]:
    hdr: luks2.Luks2Header = vol.header
    snapshot = _snapshot(fd, hdr)
    key, index = _slow(lambda: hdr.unlock_slot(vol.read_at, passphrase, vol.path))
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
    _write(fd, vol.path, int(area["offset"]), secrets.token_bytes(int(area["size"])))
    seqid = _write_luks2(fd, vol, hdr, snapshot)
    return {"image": vol.path, "type": "luks2", "removed_slot": index, "seqid": seqid,
            "active_slots": [int(k) for k in active if k != str(index)]}
