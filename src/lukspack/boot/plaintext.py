"""An encrypted image QEMU cannot open (the encrypted VHD) served to it decrypted, through
lukspack's one decrypt path (plaintext.decrypt, what `lukspack decrypt` runs): a sparse raw copy,
mode 0600, in boot-test's private directory (mode 0700, removed after the boot, also on
Ctrl-C)."""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str, int, int], None]


def write_decrypted(path: str, passphrase: bytes | bytearray, dest: str,
                    progress: ProgressFn | None = None) -> int:
    """Write the plaintext disk of the encrypted image at path to dest, a new file (sparse: holes
    and all-zero blocks are not written); returns the virtual size."""
    from lukspack.plaintext import decrypt

    result = decrypt(path, dest, passphrase, progress=progress)
    return int(result["bytes"])
