"""Open any disk image lukspack reads, plain or encrypted, as one DiskImage.

`open_disk(path, passphrase)` detects the format by content (images.sniff_file) and returns a
plain reader, or for an encrypted image (LUKS RAW, qcow2+LUKS, the vhd-util encrypted VHD) a
reader whose read_into decrypts: `verify`, `decrypt`, `check` and the boot test read every input
through it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from lukspack.errors import FormatError, LukspackError
from lukspack.images import DiskImage, open_image, open_source, sniff_file
from lukspack.images.encrypted import (
    EncryptedImage,
    LuksRawImage,
    Qcow2LuksImage,
    open_luks_raw,
    open_qcow2_luks,
)
from lukspack.images.qcow2_header import CRYPT_LUKS
from lukspack.keys import wipe
from lukspack.remote import is_remote


def _open_fd(path: str) -> int:
    return open_source(path)  # FIFOs, sockets and character devices refused before opening


def encryption_of(path: str, fmt: str | None = None) -> str | None:
    """'luks', 'qcow2-luks' or 'vhd-crypt' when the image is encrypted, else None (a remote
    source is read as a plain image: an encrypted one is refused when it is opened)."""
    if fmt not in (None, "qcow2", "vhd") or is_remote(path):
        return None
    fd = _open_fd(path)
    try:
        found = sniff_file(path, fd) if fmt in (None, "qcow2") else None
        kind = fmt or (found.format if found else None)
        if kind == "luks":  # a LUKS2 image with only its secondary header included
            return "luks"
        if kind == "vhd":
            from lukspack.images.vhd_crypt import is_encrypted_vhd

            return "vhd-crypt" if is_encrypted_vhd(fd) else None
        if kind == "qcow2" and found is not None and found.qcow2_crypt_method == CRYPT_LUKS:
            return "qcow2-luks"
        return None
    finally:
        os.close(fd)


def open_encrypted(path: str, passphrase: bytes | bytearray,
                   fmt: str | None = None) -> EncryptedImage:
    """Unlock an encrypted image with the key file; the reader decrypts."""
    kind = encryption_of(path, fmt)
    if kind is None and fmt is None and not is_remote(path):
        _refuse_plain(path)
    if kind == "vhd-crypt":
        from lukspack.images.vhd_crypt import open_encrypted_vhd

        return open_encrypted_vhd(path, passphrase)  # the key hash is checked before anything
    fd = _open_fd(path)
    try:
        if kind in ("luks", None):  # not recognised: LUKS parsing says why it is not LUKS
            vol = open_luks_raw(path, fd)
            return LuksRawImage(path, fd, vol, vol.unlock(passphrase))
        qcow, vol = open_qcow2_luks(path, fd)
        return Qcow2LuksImage(qcow, vol, vol.unlock(passphrase))
    except BaseException:
        os.close(fd)
        raise


def _refuse_plain(path: str) -> None:
    """A plain image of a known format is named (`not encrypted (qcow2, no LUKS)`), not
    described by the hex magic that LUKS parsing finds; a RAW one goes on to that parsing (a
    damaged LUKS header is RAW to the sniffer, and its magic is then the useful part)."""
    fd = _open_fd(path)
    try:
        found = sniff_file(path, fd)
    finally:
        os.close(fd)
    if found.format not in ("raw", "luks") and not found.encrypted:
        raise FormatError(f"{path}: not encrypted ({found.format}, no LUKS): there is no key "
                          "slot to open")


def open_disk(path: str, passphrase: bytes | bytearray | None = None,
              fmt: str | None = None, *, remote: Any = None) -> DiskImage:
    """A plain image as it is; an encrypted one unlocked with passphrase (required). remote:
    the options of a remote source (remote.RemoteOptions)."""
    kind = encryption_of(path, fmt)
    if kind is None:
        return open_image(path, fmt, remote=remote)
    if passphrase is None:
        raise LukspackError(f"{path}: is encrypted ({kind}); give its --key-file")
    return open_encrypted(path, passphrase, fmt)


@contextlib.contextmanager
def unlocked_disk(path: str, passphrase: bytes | bytearray | None, fmt: str | None = None, *,
                  encrypted: bool = False, remote: Any = None) -> Iterator[DiskImage]:
    """open_disk (or, with encrypted=True, open_encrypted) for a with-block: the reader is
    closed and the volume key wiped after it."""
    if encrypted:
        if passphrase is None:
            raise LukspackError(f"{path}: a key file is needed to open it")
        image: DiskImage = open_encrypted(path, passphrase, fmt)
    else:
        image = open_disk(path, passphrase, fmt, remote=remote)
    try:
        yield image
    finally:
        key = getattr(image, "key", None)
        image.close()
        if isinstance(key, bytearray):
            wipe(key)
