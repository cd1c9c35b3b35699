"""The key jobs: `keygen` (a new key file, mode 0600, or standard output) and `keyhash` (the
encrypted-VHD key hash, as `vhd-util key` computes it).

Their rules live here: a key is never printed on a terminal, never written over an existing
file; keyhash takes a key, an image or both, and a nonce only for a key alone."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from lukspack.api.common import KeySource, Result
from lukspack.errors import KeyFileError, UsageError

__all__ = ["KeygenRequest", "KeygenResult", "KeyhashRequest", "KeyhashResult", "keygen",
           "keyhash"]


@dataclass(frozen=True)
class KeygenRequest:
    """`file` ('-': standard output, refused on a terminal); `target` luks, vpc, classic or
    vhd (keys.new_key says what each gets); `nbytes` 32 or 64 random bytes."""

    file: str
    target: str = "luks"
    nbytes: int | None = None

    def __post_init__(self) -> None:
        if self.target not in ("luks", "vpc", "classic", "vhd"):
            raise UsageError(f"--for {self.target}: give luks, vpc, classic or vhd")
        if self.nbytes not in (None, 32, 64):
            raise UsageError(f"--bytes {self.nbytes}: give 32 or 64")


@dataclass(frozen=True)
class KeygenResult(Result):
    file: str
    what: str  # what was written: "a 32-byte DEK", ...

    @property
    def where(self) -> str:
        return "standard output" if self.file == "-" else f"{self.file} (mode 0600)"


def keygen(request: KeygenRequest) -> KeygenResult:
    """Write a new key: a DEK (base64 of random bytes, one line, no newline) or, for vpc, a
    random passphrase."""
    from lukspack.keys import check_new_key_path, new_key, wipe, write_key_file

    if request.file == "-" and sys.stdout is not None and sys.stdout.isatty():
        raise KeyFileError("-: refusing to print a key on a terminal (redirect standard output, "
                           "or give a file name)")
    if request.file != "-":
        check_new_key_path(request.file)  # an empty name is a usage error, as every OUTPUT's
    key, what = new_key(request.target, request.nbytes)
    try:
        if request.file == "-":
            _key_to_stdout(key)
        else:
            write_key_file(request.file, key)
    finally:
        wipe(key)
    return KeygenResult(request.file, what)


def _key_to_stdout(key: bytearray) -> None:
    """Write key to file descriptor 1 unbuffered (no copy left in a Python buffer to flush at
    exit); a closed or full standard output is one KeyFileError line."""
    view = memoryview(key)
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
        while view:
            view = view[os.write(1, view) :]
    except OSError as e:
        raise KeyFileError(f"-: cannot write the key to standard output: {e.strerror}") from None


@dataclass(frozen=True)
class KeyhashRequest:
    """A key (base64 DEK or the raw 32/64-byte key), an encrypted VHD `image`, or both;
    `nonce` (64 hex digits, as `vhd-util key -N`) only for a key alone [default: zeros]."""

    image: str | None = None
    key: KeySource | None = None
    nonce: str | None = None

    def __post_init__(self) -> None:
        if self.image is None and self.key is None:
            raise UsageError("give --key-file KEY, an IMAGE, or both")
        if self.nonce is not None and self.image is not None:
            raise UsageError("--nonce only applies to a key alone (an IMAGE stores its nonce)")
        self.salt()

    def salt(self) -> bytes:
        if self.nonce is None:
            return bytes(32)
        try:
            salt = bytes.fromhex(self.nonce)
        except ValueError:
            salt = b""
        if len(salt) != 32:
            raise UsageError("Invalid value for '--nonce': must be 64 hex digits")
        return salt


@dataclass(frozen=True)
class KeyhashResult(Result):
    """key_hash always; nonce when read from an image; matches when a key was checked against
    an image (a wrong key is an error, not matches=False)."""

    key_hash: str
    nonce: str | None = None
    matches: bool | None = None
    key_bits: int | None = None


def keyhash(request: KeyhashRequest) -> KeyhashResult:
    """The key hash of a key (as `vhd-util key -C -k KEY`), the nonce and key hash of an image
    (as `vhd-util key -p -n IMAGE`), or with both, a check that the key matches the image (as
    `vhd-util key -c`: a wrong key raises)."""
    from lukspack.images.vhd_crypt import EncryptedVhdImage, key_hash, open_encrypted_vhd_with_key
    from lukspack.keys import decode_vhd_key, wipe

    key = None
    if request.key is not None:
        with request.key.open(dek_rules=False) as content:
            key = decode_vhd_key(content, name=request.key.name)
    try:
        if request.image is None:
            assert key is not None
            return KeyhashResult(key_hash(key, request.salt()).hex())
        img: EncryptedVhdImage = open_encrypted_vhd_with_key(request.image, key)
        with img:
            if key is None:
                return KeyhashResult(img.key_hash.hex(), nonce=img.nonce.hex())
            return KeyhashResult(img.key_hash.hex(), matches=True, key_bits=img.key_bits)
    finally:
        wipe(key)
