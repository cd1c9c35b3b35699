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

from lukspack.errors import LukspackError
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


PLAIN_NAMES = {"qcow2": "qcow2, no LUKS", "vhd": "vhd, neither LUKS nor vhd-util encryption",
               "vhdx": "vhdx, no LUKS", "vmdk": "vmdk, no LUKS", "ova": "ova, no LUKS"}


def not_encrypted(path: str, fd: int, fmt: str | None = None) -> str | None:
    """'PATH: not encrypted (qcow2, no LUKS)' when the file is a plain image of a format that
    lukspack names (qcow2, VHD, VHDX, VMDK, OVA), else None (a RAW file: LUKS parsing says
    what its first bytes are)."""
    try:
        sniffed = sniff_file(path, fd)
    except LukspackError:
        return None
    found = fmt or sniffed.format
    if found == "qcow2" and sniffed.qcow2_crypt_method:  # LUKS, or qcow2's old AES-CBC
        return None
    if found == "vhd":
        from lukspack.images.vhd_crypt import is_encrypted_vhd

        if is_encrypted_vhd(fd):
            return None
    what = PLAIN_NAMES.get(found or "")
    if what is None:
        return None
    with open_image(path, found):  # a damaged image says what is damaged, not "not encrypted"
        pass
    return f"{path}: not encrypted ({what}); there is no key to open or add"


def open_encrypted(path: str, passphrase: bytes | bytearray,
                   fmt: str | None = None, *, remote: Any = None) -> EncryptedImage:
    """Unlock an encrypted image with the key file; the reader decrypts. A plain image of a
    format lukspack names is refused saying so: 'not encrypted (qcow2, no LUKS)'. A remote
    image (cos://, http(s)://) is read through its ByteSource (options `remote`)."""
    if is_remote(path):
        return _open_remote_encrypted(path, passphrase, remote)
    kind = encryption_of(path, fmt)
    if kind is None and not is_remote(path):
        fd = _open_fd(path)
        try:
            plain = not_encrypted(path, fd, fmt)
        finally:
            os.close(fd)
        if plain is not None:
            raise LukspackError(plain)
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


def _open_remote_encrypted(path: str, passphrase: bytes | bytearray,
                           remote: Any) -> EncryptedImage:
    """An encrypted object or URL, its kind read from its content, opened by the reader the
    engine's read-back uses (readback.open_output): the same code as for a local file."""
    from lukspack.images import open_bytes
    from lukspack.images.vhd_crypt import is_encrypted_vhd
    from lukspack.readback import open_output

    src = open_bytes(path, remote)
    try:
        found = sniff_file(path, src)
        if found.format == "luks":
            kind = "luks"
        elif found.format == "qcow2" and found.qcow2_crypt_method == CRYPT_LUKS:
            kind = "qcow2"
        elif found.format == "vhd" and is_encrypted_vhd(src):
            kind = "vhd"
        else:
            raise LukspackError(f"{path}: is not encrypted ({found.format}): give the LUKS RAW, "
                                "qcow2+LUKS or encrypted VHD image")
        return open_output(kind, src, path, passphrase, None)
    except BaseException:
        src.close()
        raise


def open_disk(path: str, passphrase: bytes | bytearray | None = None,
              fmt: str | None = None, *, remote: Any = None) -> DiskImage:
    """A plain image as it is; an encrypted one unlocked with passphrase (required). remote:
    the options of a remote source (remote.RemoteOptions)."""
    kind = encryption_of(path, fmt)
    if kind is None:
        return open_image(path, fmt, remote=remote)
    if passphrase is None:
        raise LukspackError(f"{path}: is encrypted ({kind}); give its --key-file")
    return open_encrypted(path, passphrase, fmt, remote=remote)


@contextlib.contextmanager
def unlocked_disk(path: str, passphrase: bytes | bytearray | None, fmt: str | None = None, *,
                  encrypted: bool = False, remote: Any = None) -> Iterator[DiskImage]:
    """open_disk (or, with encrypted=True, open_encrypted) for a with-block: the reader is
    closed and the volume key wiped after it."""
    if encrypted:
        if passphrase is None:
            raise LukspackError(f"{path}: a key file is needed to open it")
        image: DiskImage = open_encrypted(path, passphrase, fmt, remote=remote)
    else:
        image = open_disk(path, passphrase, fmt, remote=remote)
    try:
        yield image
    finally:
        key = image.key if isinstance(image, EncryptedImage) else None
        image.close()
        if key is not None:
            wipe(key)


@contextlib.contextmanager
def unlocked_encrypted(path: str, passphrase: bytes | bytearray, fmt: str | None = None, *,
                       remote: Any = None) -> Iterator[EncryptedImage]:
    """open_encrypted for a with-block: the decrypting reader, closed and its key wiped after."""
    image = open_encrypted(path, passphrase, fmt, remote=remote)
    try:
        yield image
    finally:
        key = image.key
        image.close()
        if key is not None:
            wipe(key)
