"""AES-ECB over whole buffers from OpenSSL, callable from several threads at once.

`cryptography` holds the GIL while it encrypts, so two threads encrypt no faster than one. Calling
libcrypto's EVP interface through ctypes releases the GIL for the duration of the call, which lets
the pipeline use every core. When no shared libcrypto can be loaded, `cryptography`'s ECB (the
same OpenSSL code, one core at a time) is used instead: same results, less parallelism.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_c_int_p = ctypes.POINTER(ctypes.c_int)


@cache
def _libcrypto() -> ctypes.CDLL | None:
    if os.environ.get("LUKSPACK_NO_CTYPES_OPENSSL"):
        return None
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
        lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
        for fn in ("EVP_aes_128_ecb", "EVP_aes_192_ecb", "EVP_aes_256_ecb"):
            getattr(lib, fn).restype = ctypes.c_void_p
        lib.EVP_CipherInit_ex.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
        ]
        lib.EVP_CIPHER_CTX_set_padding.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.EVP_CipherUpdate.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, _c_int_p, ctypes.c_void_p, ctypes.c_int,
        ]
    except (OSError, AttributeError):
        return None
    return lib


def backend_name() -> str:
    return "libcrypto via ctypes (GIL released)" if _libcrypto() else "cryptography (GIL held)"


class AesEcb:
    """AES-ECB in one direction with one key; `run(buf)` transforms a buffer in place.

    One object per thread. The length must be a multiple of 16 bytes.
    """

    _MAX_CALL = 1 << 30  # EVP_CipherUpdate takes an int length

    def __init__(self, key: bytes | bytearray, *, encrypt: bool) -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError(f"AES takes a 128, 192 or 256-bit key, not {len(key) * 8} bits")
        self._lib = _libcrypto()
        self._ctx: int | None = None
        if self._lib is not None:
            lib = self._lib
            ctx = lib.EVP_CIPHER_CTX_new()
            if not ctx:
                raise MemoryError("EVP_CIPHER_CTX_new failed")
            self._ctx = ctx
            cipher = getattr(lib, f"EVP_aes_{len(key) * 8}_ecb")()
            if lib.EVP_CipherInit_ex(ctx, cipher, None, bytes(key), None, int(encrypt)) != 1:
                raise RuntimeError("EVP_CipherInit_ex failed")
            lib.EVP_CIPHER_CTX_set_padding(ctx, 0)
            self._outlen = ctypes.c_int()
        else:
            c = Cipher(algorithms.AES(bytes(key)), modes.ECB())
            self._py = c.encryptor() if encrypt else c.decryptor()

    def run(self, buf: memoryview | bytearray) -> None:
        mv = memoryview(buf).cast("B")
        n = len(mv)
        if n % 16:
            raise ValueError(f"AES-ECB needs whole 16-byte blocks, got {n} bytes")
        if self._ctx is not None:
            addr = ctypes.addressof(ctypes.c_char.from_buffer(mv)) if n else 0
            for start in range(0, n, self._MAX_CALL):
                size = min(self._MAX_CALL, n - start)
                p = addr + start
                if self._lib.EVP_CipherUpdate(self._ctx, p, ctypes.byref(self._outlen), p, size) != 1:
                    raise RuntimeError("EVP_CipherUpdate failed")
        elif n:
            self._update_py(mv)

    def _update_py(self, mv: memoryview) -> None:
        # cryptography's update_into needs an output buffer 15 bytes longer than the input
        # for some versions; ECB with no padding writes exactly len(input) bytes.
        out = bytearray(len(mv) + 15)
        k = self._py.update_into(mv, out)
        mv[:k] = out[:k]

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.EVP_CIPHER_CTX_free(self._ctx)  # cleanses the key schedule
            self._ctx = None

    def __del__(self) -> None:
        self.close()
