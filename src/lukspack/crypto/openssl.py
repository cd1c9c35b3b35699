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
import threading
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from lukspack.errors import LukspackError

_c_int_p = ctypes.POINTER(ctypes.c_int)


_load_lock = threading.Lock()


def _libcrypto() -> ctypes.CDLL | None:
    """The one libcrypto handle, with every signature declared. Locked: worker threads make their
    first ciphers at the same moment, and a second CDLL handle whose restypes were not all set
    would return pointers truncated to int (a crash)."""
    with _load_lock:
        return _load_libcrypto()


@cache
def _load_libcrypto() -> ctypes.CDLL | None:
    if os.environ.get("LUKSPACK_NO_CTYPES_OPENSSL"):
        return None
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
        lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
        for fn in ("EVP_aes_128_ecb", "EVP_aes_192_ecb", "EVP_aes_256_ecb", "EVP_aes_128_xts",
                   "EVP_aes_256_xts"):
            getattr(lib, fn).restype = ctypes.c_void_p
        lib.ERR_clear_error.restype = None
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


if TYPE_CHECKING:  # (xts_sectors, address of EVP_CipherInit_ex, of EVP_CipherUpdate)
    from typing_extensions import Buffer

    XtsLoop = tuple[Callable[[int, int, int, Buffer, int, int, int, int], None], int, int]


def backend_name() -> str:
    return "libcrypto via ctypes (GIL released)" if _libcrypto() else "cryptography (GIL held)"


def _xts_loop() -> XtsLoop | None:
    with _load_lock:
        return _load_xts_loop()


@cache
def _load_xts_loop() -> XtsLoop | None:
    """(xts_sectors, address of EVP_CipherInit_ex, address of EVP_CipherUpdate), or None.

    xts_sectors is the C loop in _xtsloop.c, built when lukspack is installed; without a compiler
    it is absent and AES-XTS runs on the numpy engine (lukspack/crypto/xts.py).
    """
    lib = _load_libcrypto()
    if lib is None or os.environ.get("LUKSPACK_NO_NATIVE_XTS"):
        return None
    try:
        from lukspack.crypto._xtsloop import xts_sectors
    except ImportError:
        return None
    init = ctypes.cast(lib.EVP_CipherInit_ex, ctypes.c_void_p).value
    update = ctypes.cast(lib.EVP_CipherUpdate, ctypes.c_void_p).value
    if init is None or update is None:
        return None
    return xts_sectors, init, update


def native_xts_available() -> bool:
    return _xts_loop() is not None


class AesXts:
    """OpenSSL's own AES-XTS (256 or 512-bit key), one EVP call per data unit, looped in C with the
    GIL released. One object per thread.

    Raises ValueError when OpenSSL refuses the key: it rejects XTS keys whose halves are equal
    (IEEE 1619 test vector 1 has such a key); callers then use the numpy engine.
    """

    def __init__(self, key: bytes | bytearray, sector_size: int, iv_step: int, iv_mask: int):
        self._ctx: dict[int, int] = {}
        loop = _xts_loop()
        if loop is None:
            raise RuntimeError("the native AES-XTS loop is not available")
        if len(key) not in (32, 64):
            raise ValueError(f"OpenSSL AES-XTS takes a 256 or 512-bit key, not {len(key) * 8} bits")
        lib = _libcrypto()
        if lib is None:
            raise RuntimeError("libcrypto is not available")
        self._lib = lib
        self._loop, self._init, self._update = loop
        self._sector, self._step, self._mask = sector_size, iv_step, iv_mask
        cipher = getattr(lib, f"EVP_aes_{len(key) * 4}_xts")()
        try:
            for enc in (1, 0):
                ctx = lib.EVP_CIPHER_CTX_new()
                if not ctx:
                    raise MemoryError("EVP_CIPHER_CTX_new failed")
                self._ctx[enc] = ctx
                if lib.EVP_CipherInit_ex(ctx, cipher, None, bytes(key), None, enc) != 1:
                    lib.ERR_clear_error()  # leave no error behind for `cryptography` to trip on
                    raise ValueError("OpenSSL refused this AES-XTS key")
        except BaseException:
            self.close()
            raise

    def run(self, buf: bytearray | memoryview, first_iv: int, encrypt: bool) -> None:
        try:
            self._loop(self._init, self._update, self._ctx[int(encrypt)], buf, self._sector,
                       first_iv, self._step, self._mask)
        except RuntimeError as e:
            self._lib.ERR_clear_error()
            raise LukspackError(str(e)) from None

    def close(self) -> None:
        for ctx in self._ctx.values():
            self._lib.EVP_CIPHER_CTX_free(ctx)  # cleanses the key schedule
        self._ctx = {}

    def __del__(self) -> None:
        self.close()


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
        lib = self._lib
        if self._ctx is not None and lib is not None:
            addr = ctypes.addressof(ctypes.c_char.from_buffer(mv)) if n else 0
            for start in range(0, n, self._MAX_CALL):
                size = min(self._MAX_CALL, n - start)
                p = addr + start
                if lib.EVP_CipherUpdate(self._ctx, p, ctypes.byref(self._outlen), p, size) != 1:
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
        if self._ctx is not None and self._lib is not None:
            self._lib.EVP_CIPHER_CTX_free(self._ctx)  # cleanses the key schedule
            self._ctx = None

    def __del__(self) -> None:
        self.close()
