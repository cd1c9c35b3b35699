"""Data encryption keys (DEKs): generation, key-file reading, validation and wiping.

A key file's whole content is the passphrase, byte for byte, exactly as `cryptsetup --key-file`
uses it. When lukspack *creates* a key or an image, the file must also follow IBM Cloud's DEK rules:
base64 text of 32 to 512 characters, one line, no newline, no spaces.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
import sys
import warnings

from lukspack.errors import KeyFileError

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


# -- encrypted VHD keys (vhd-util / blktap) ------------------------------------------------------

VHD_KEY_BYTES = (32, 64)  # AES-128-XTS and AES-256-XTS keys: the only sizes vhd-util reads
_PASSPHRASE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def decode_vhd_key(data: bytes | bytearray, name: str = "key file") -> bytearray:
    """The 32 or 64-byte XTS key in a key file, as a bytearray the caller must wipe.

    IBM's DEK is base64 text; vhd-util's key file holds the decoded bytes. Content that is base64
    decoding to 32 or 64 bytes (one trailing newline allowed: `echo DEK > FILE`) is decoded;
    content of exactly 32 or 64 bytes that is not such base64 is the raw key; anything else is
    refused.
    """
    text = bytes(data)
    if text.endswith(b"\r\n"):
        text = text[:-2]
    elif text.endswith(b"\n"):
        text = text[:-1]
    if len(text) in (44, 88) and set(text) <= _B64_ALPHABET:
        try:
            raw = bytearray(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raw = bytearray()
        if len(raw) in VHD_KEY_BYTES:
            return raw
        wipe(raw)
    if len(data) in VHD_KEY_BYTES:
        return bytearray(data)
    raise KeyFileError(f"{name}: not an encrypted-VHD key: {len(data)} bytes, neither base64 of "
                       "32 or 64 bytes nor a raw key of 32 or 64 bytes")


def generate_passphrase(nchars: int = 44) -> bytearray:
    """A random printable passphrase (letters and digits, no newline): what IBM Cloud VPC's
    qcow2+LUKS takes; Key Protect wraps the base64 of these bytes. 44 characters carry 261 bits
    and also pass the DEK rules (base64 alphabet, a multiple of 4 long)."""
    return bytearray(ord(secrets.choice(_PASSPHRASE_ALPHABET)) for _ in range(nchars))
