"""Data encryption keys (DEKs): generation, key-file reading, validation and wiping.

A key file's whole content is the passphrase, byte for byte, exactly as `cryptsetup --key-file`
uses it (`--keyfile-offset`/`--keyfile-size` select a part, and a size past the end is refused as
cryptsetup refuses it). What the key means for an IBM Cloud target (VPC qcow2+LUKS, classic
encrypted VHD, LUKS RAW) is decided by key_for_target alone, for every command.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
import sys
import warnings
from dataclasses import dataclass, field

from lukspack.errors import KeyFileError, UsageError

DEK_MIN_CHARS = 32
DEK_MAX_CHARS = 512
KEYFILE_MAX_BYTES = 8 * 1024 * 1024  # cryptsetup's default --keyfile-size limit
_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def wipe(buf: bytearray | None) -> None:
    """Overwrite a key buffer with zeros in place."""
    if buf is not None:
        buf[:] = bytes(len(buf))


def generate_dek(nbytes: int = 32) -> bytearray:
    """Random key of nbytes from `secrets`, as base64 text (44 characters for 32 bytes)."""
    raw = bytearray(secrets.token_bytes(nbytes))
    try:
        return bytearray(base64.b64encode(raw))
    finally:
        wipe(raw)


def dek_rule_broken(data: bytes | bytearray) -> str | None:
    """Return the DEK rule that data breaks, or None when it is a valid DEK."""
    if b"\n" in data or b"\r" in data:
        return "it must be one line with no newline (write it with `printf %s`, not `echo`)"
    if any(c in b" \t\v\f" for c in data):
        return "it must contain no spaces"
    if not DEK_MIN_CHARS <= len(data) <= DEK_MAX_CHARS:
        return f"it must be {DEK_MIN_CHARS} to {DEK_MAX_CHARS} characters long, not {len(data)}"
    if not set(data) <= _B64_ALPHABET:
        return "it must be base64 text (A-Z, a-z, 0-9, +, / and = padding)"
    body = bytes(data).rstrip(b"=")
    if len(data) % 4 or b"=" in body or len(data) - len(body) > 2:
        return "it is not valid base64 (length must be a multiple of 4, '=' only at the end)"
    try:
        base64.b64decode(bytes(data), validate=True)
    except (binascii.Error, ValueError):
        return "it is not valid base64 (length must be a multiple of 4, '=' only at the end)"
    return None


def check_permissions(path: str) -> None:
    """Warn, as ssh does, when a key file is readable or writable by group or others."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) and mode & 0o077:
        warnings.warn(
            f"{path}: key file permissions {stat.S_IMODE(mode):04o} are too open; "
            f"run `chmod 600 {path}`",
            stacklevel=2,
        )


def read_key_file(path: str, *, dek_rules: bool) -> bytearray:
    """Read a key file ('-' is standard input) into a bytearray the caller must wipe."""
    try:
        if path == "-":
            data = bytearray(sys.stdin.buffer.read(KEYFILE_MAX_BYTES + 1))
        else:
            check_permissions(path)
            with open(path, "rb") as f:
                data = bytearray(f.read(KEYFILE_MAX_BYTES + 1))
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key file: {e.strerror}") from None
    if len(data) > KEYFILE_MAX_BYTES:
        wipe(data)
        raise KeyFileError(f"{path}: key file is larger than {KEYFILE_MAX_BYTES} bytes")
    if not data:
        raise KeyFileError(f"{path}: key file is empty")
    if dek_rules:
        rule = dek_rule_broken(data)
        if rule is not None:
            wipe(data)
            raise KeyFileError(f"{path}: not a valid data encryption key: {rule}")
    return data


def key_part(data: bytearray, size: int | None, offset: int, name: str) -> bytearray:
    """cryptsetup's --keyfile-offset and --keyfile-size: the bytes [offset, offset + size) of the
    key file, as a new bytearray (data is wiped). A size running past the end of the file is
    refused, as cryptsetup refuses it ("Cannot read requested amount of data")."""
    try:
        if offset >= len(data):
            raise KeyFileError(f"{name}: --keyfile-offset {offset} leaves no key bytes (the key "
                               f"file has {len(data)})")
        if size is not None and offset + size > len(data):
            raise KeyFileError(f"{name}: --keyfile-size {size} is larger than the "
                               f"{len(data) - offset} bytes the key file has"
                               + (f" after --keyfile-offset {offset}" if offset else "")
                               + " (cryptsetup refuses it too)")
        return bytearray(data[offset : offset + size if size is not None else None])
    finally:
        wipe(data)


def check_new_key_path(path: str, what: str = "the new key") -> None:
    """What write_key_file will refuse, said before any work (publish checks, KDFs, uploads,
    Key Protect calls): `""` or `-` (UsageError: it goes to a file), an existing file, a missing
    directory."""
    from lukspack.errors import UsageError

    if path in ("", "-"):
        raise UsageError(f"{path!r}: name a file to write {what} to")
    if os.path.lexists(path):
        raise KeyFileError(f"{path}: already exists; lukspack never overwrites a key")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise KeyFileError(f"{path}: cannot create key file: directory {directory} does not exist")


def write_key_file(path: str, data: bytes | bytearray) -> None:
    """Create path with mode 0600 holding data; never overwrites an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; lukspack never overwrites a key") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot create key file: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        os.unlink(path)
        raise KeyFileError(f"{path}: cannot write key file: {e.strerror}") from None
    os.close(fd)


# -- one rule per target ----------------------------------------------------------------------
#
# What a key file means depends only on the target it serves; every command that takes a key for a
# target (encrypt, verify, add-key, wrap-key, publish, keygen) asks key_for_target, so a key that
# one command accepts is never refused by the next one after the image was uploaded.

KEY_TARGETS = ("vpc", "classic", "luks")
_TARGET_ALIASES = {"qcow2": "vpc", "vhd": "classic", "luks-raw": "luks", "raw": "luks"}
VHD_KEY_BYTES = (32, 64)  # AES-128-XTS and AES-256-XTS keys: the only sizes vhd-util reads
_PASSPHRASE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def key_target(target: str) -> str:
    """vpc, classic or luks for a target or an output format (qcow2 -> vpc, vhd -> classic,
    raw and luks-raw -> luks)."""
    t = _TARGET_ALIASES.get(target, target)
    if t not in KEY_TARGETS:
        raise KeyFileError(f"key target {target!r} is not one of vpc, classic, luks")
    return t


@dataclass
class TargetKey:
    """What a key file means for a target: the text Key Protect wraps for it (`wrap_plaintext`,
    base64) and the warnings a user should see; key_for_target raised if it cannot serve."""

    target: str
    wrap_plaintext: str
    warnings: list[str] = field(default_factory=list)


def key_for_target(target: str, data: bytes | bytearray, name: str = "key file") -> TargetKey:
    """The one rule for what a key file means for each target (KeyFileError when it cannot serve):

    - vpc (qcow2+LUKS): the whole content is the passphrase. QEMU reads a secret as UTF-8 ("Data
      from secret s0 is not valid UTF-8"), so other bytes, and NUL, are refused; a trailing newline is
      refused (write it with `printf %s`). Any other passphrase works (IBM's example is
      `abc123`): one that is not a DEK only gets a warning. Key Protect wraps base64(passphrase).
    - classic (encrypted VHD): the content is the XTS key (vhd_key): base64 text that decodes to
      32 or 64 bytes (one trailing newline allowed), or the raw 32 or 64 bytes. Key Protect wraps
      base64(XTS key).
    - luks (LUKS RAW, IBM's 2018 classic procedure): the content is the LUKS passphrase, byte for
      byte, and must be a DEK (dek_rule_broken). Key Protect wraps the DEK text.
    """
    t = key_target(target)
    if not data:
        raise KeyFileError(f"{name}: key file is empty")
    if t == "classic":
        key = vhd_key(data, name)
        try:
            return TargetKey(t, base64.b64encode(bytes(key)).decode())
        finally:
            wipe(key)
    if t == "vpc":
        if data.endswith((b"\n", b"\r")):
            raise KeyFileError(f"{name}: the passphrase ends with a newline, which would be "
                               "wrapped too and the VPC image would never unlock (write it with "
                               "printf %s)")
        try:
            bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise KeyFileError(f"{name}: a qcow2+LUKS passphrase must be UTF-8 text (QEMU "
                               f"refuses the secret: not valid UTF-8 at byte {e.start})") from None
        if b"\0" in data:  # QEMU validates the secret as a C string: a NUL is "not UTF-8" too
            raise KeyFileError(f"{name}: a qcow2+LUKS passphrase cannot hold a NUL byte (at byte "
                               f"{bytes(data).index(0)}): QEMU refuses the secret as not valid "
                               "UTF-8")
        rule = dek_rule_broken(data)
        notes = [] if rule is None else [
            f"{name}: IBM Cloud VPC takes this passphrase, but it is not a data encryption key "
            f"({rule}); `lukspack keygen --for vpc` makes a strong one"]
        return TargetKey(t, base64.b64encode(bytes(data)).decode(), notes)
    rule = dek_rule_broken(data)
    if rule is not None:
        raise KeyFileError(f"{name}: not a valid data encryption key: {rule}")
    return TargetKey(t, bytes(data).decode("ascii"))


def vhd_key(data: bytes | bytearray, name: str = "key file") -> bytearray:
    """The 32 or 64-byte XTS key of an encrypted VHD in a key file, as a bytearray the caller must
    wipe (the classic rule of key_for_target).

    IBM's DEK is base64 text; vhd-util's key file holds the decoded bytes. Content that is base64
    text (one trailing newline allowed: `echo DEK > FILE`) is a DEK and must decode to 32 or 64
    bytes; other content of exactly 32 or 64 bytes is the raw key; anything else is refused. So a
    64-character base64 text (48 bytes decoded) is refused, never taken as a raw key.
    """
    text = bytes(data)
    if text.endswith(b"\r\n"):
        text = text[:-2]
    elif text.endswith(b"\n"):
        text = text[:-1]
    if _is_base64(text):
        raw = bytearray(base64.b64decode(text, validate=True))
        if len(raw) in VHD_KEY_BYTES:
            return raw
        n = len(raw)
        wipe(raw)
        raise KeyFileError(f"{name}: not an encrypted-VHD key: base64 text of {len(text)} "
                           f"characters decodes to {n} bytes; the XTS key is 32 or 64 bytes "
                           "(base64: 44 or 88 characters; `lukspack keygen --for classic`)")
    if len(data) in VHD_KEY_BYTES:
        return bytearray(data)
    raise KeyFileError(f"{name}: not an encrypted-VHD key: {len(data)} bytes, neither base64 of "
                       "32 or 64 bytes nor a raw key of 32 or 64 bytes")


decode_vhd_key = vhd_key  # the name the containers and readers use


def _is_base64(text: bytes) -> bool:
    if not text or len(text) % 4 or not set(text) <= _B64_ALPHABET:
        return False
    body = text.rstrip(b"=")
    if b"=" in body or len(text) - len(body) > 2:
        return False
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def generate_passphrase(nchars: int = 44) -> bytearray:
    """A random printable passphrase (letters and digits, no newline): what IBM Cloud VPC's
    qcow2+LUKS takes; Key Protect wraps the base64 of these bytes. 44 characters carry 261 bits
    and also pass the DEK rules (base64 alphabet, a multiple of 4 long)."""
    return bytearray(ord(secrets.choice(_PASSPHRASE_ALPHABET)) for _ in range(nchars))


NEW_KEY_BYTES = {"classic": 64, "luks": 32}  # classic: AES-256-XTS; --bytes 32: AES-128-XTS


def new_key(target: str, nbytes: int | None = None) -> tuple[bytearray, str]:
    """A new key for target and what it is: vpc a 44-character passphrase; classic base64 of 64
    random bytes by default (AES-256-XTS; 32 gives AES-128-XTS); luks base64 of 32 bytes (64
    allowed). Every key made here passes key_for_target for its target."""
    t = key_target(target)
    if t == "vpc":
        if nbytes is not None:
            raise UsageError("--bytes does not apply to --for vpc (a 44-character passphrase)")
        return generate_passphrase(), "a 44-character passphrase (qcow2+LUKS, IBM Cloud VPC)"
    n = NEW_KEY_BYTES[t] if nbytes is None else nbytes
    if n not in (32, 64):
        raise UsageError(f"--bytes {n}: a new key has 32 or 64 random bytes")
    if t == "classic":
        return generate_dek(n), f"a {n * 8}-bit encrypted-VHD key (AES-{n * 4}-XTS, IBM Cloud classic)"
    return generate_dek(n), f"a {n * 8}-bit data encryption key"
