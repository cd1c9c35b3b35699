"""AES-XTS (IEEE 1619) over whole chunks of sectors: two engines behind one class.

`XtsCipher` uses OpenSSL's own AES-XTS, one EVP call per sector made from a small C loop with the
GIL released (`openssl.AesXts`, about 2 GB/s per core at 512-byte sectors, 4 GB/s at 4096, here),
when that loop was built at install time and OpenSSL takes the key; otherwise the numpy engine
below (about 1 GB/s per core). Both give identical bytes; the tests hold each to OpenSSL's
per-sector XTS and to the IEEE 1619 vectors.

The numpy engine: XTS encrypts block j of data unit k as  C = E_K1(P xor T) xor T  with
T = E_K2(iv_k) * x^j  in GF(2^128). One AES-ECB call (K2) makes the first tweak of every sector in
the pass, numpy multiplies them by x^j for all blocks at once, and one AES-ECB call (K1) encrypts
the whole pass between two XORs.

plain64 IVs: the IV of a data unit is its number as a 64-bit little-endian integer, zero-padded to
16 bytes. With 4096-byte sectors cryptsetup still counts the IV in 512-byte units, so the IV of
data unit k is first_iv + k * iv_step with iv_step = sector_size // 512 (`iv_large_sectors` off).
"""

from __future__ import annotations

import numpy as np

from lukspack.crypto.openssl import AesEcb, AesXts, native_xts_available

_GROUP = 32  # tweaks per shift step: x^0..x^31 keep the fold below inside 64 bits
_SUBCHUNK = 512 * 1024  # bytes per numpy pass; measured best on a 1 MiB L2 (256 KiB: GIL-bound)
_U32 = np.uint64(32)


def _fold(h: np.ndarray) -> np.ndarray:
    """Carry-less h * 0x87 (x^7 + x^2 + x + 1) for h < 2^56: the GF(2^128) reduction."""
    folded: np.ndarray = h ^ (h << np.uint64(1)) ^ (h << np.uint64(2)) ^ (h << np.uint64(7))
    return folded


def _shift_tables(rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous (rows, width) tables of j and 64 - j: numpy shifts fastest without broadcasting.

    numpy defines a shift by 64 or more as 0, which is what j == 0 needs.
    """
    j = np.broadcast_to(np.arange(width, dtype=np.uint64), (rows, width)).copy()
    return j, np.uint64(64) - j


ENGINES = ("auto", "openssl", "numpy")


class XtsCipher:
    """AES-XTS with a 256, 384 or 512-bit key (AES-128/192/256), in place on whole sectors.

    engine: "auto" (OpenSSL's XTS when available, else numpy), "openssl" or "numpy". The engine
    chosen is in `.engine`. Not thread-safe: create one per worker thread (creation is cheap).
    """

    def __init__(self, key: bytes | bytearray, sector_size: int = 512, iv_step: int | None = None,
                 iv_bits: int = 64, engine: str = "auto"):
        if len(key) not in (32, 48, 64):
            raise ValueError(f"AES-XTS takes a 256, 384 or 512-bit key, not {len(key) * 8} bits")
        if sector_size < 16 or sector_size & (sector_size - 1):
            raise ValueError(f"data unit size must be a power of two >= 16, not {sector_size}")
        if engine not in ENGINES:
            raise ValueError(f"unknown XTS engine {engine!r} (one of {', '.join(ENGINES)})")
        self.sector_size = sector_size
        self.iv_step = max(1, sector_size // 512) if iv_step is None else iv_step
        mask = (1 << iv_bits) - 1  # plain: the IV is the sector number mod 2^32
        self._native: AesXts | None = None
        self._numpy: NumpyXts | None = None
        if engine != "numpy" and native_xts_available() and len(key) != 48:
            try:
                self._native = AesXts(key, sector_size, self.iv_step, mask)
            except ValueError:  # OpenSSL refuses XTS keys with equal halves
                if engine == "openssl":
                    raise
        if self._native is None:
            if engine == "openssl":
                raise ValueError("OpenSSL's AES-XTS loop is not available for this key")
            self._numpy = NumpyXts(key, sector_size, self.iv_step, mask)
        self.engine = "openssl" if self._native else "numpy"

    def encrypt(self, buf: bytearray | memoryview, first_iv: int) -> None:
        """Encrypt whole sectors in place; the first sector's IV is first_iv."""
        self._run(buf, first_iv, True)

    def decrypt(self, buf: bytearray | memoryview, first_iv: int) -> None:
        """Decrypt whole sectors in place; the first sector's IV is first_iv."""
        self._run(buf, first_iv, False)

    def close(self) -> None:
        for impl in (self._native, self._numpy):
            if impl is not None:
                impl.close()

    def _run(self, buf: bytearray | memoryview, first_iv: int, encrypt: bool) -> None:
        mv = memoryview(buf).cast("B")
        if mv.readonly:
            raise TypeError("XTS works in place: the buffer must be writable")
        if len(mv) % self.sector_size:
            raise ValueError(f"buffer of {len(mv)} bytes is not whole {self.sector_size}-byte sectors")
        if first_iv < 0 or first_iv + len(mv) // self.sector_size * self.iv_step > 1 << 64:
            raise ValueError("plain64 IV overflows 64 bits")
        if self._native is not None:
            self._native.run(mv, first_iv, encrypt)
        else:
            assert self._numpy is not None  # one of the two engines is made in __init__
            self._numpy.run(mv, first_iv, encrypt)


class NumpyXts:
    """The numpy engine: AES-ECB from OpenSSL, tweaks for a whole pass at once in numpy."""

    def __init__(self, key: bytes | bytearray, sector_size: int, iv_step: int, iv_mask: int):
        half = len(key) // 2
        self.sector_size = sector_size
        self.iv_step = iv_step
        self._iv_mask = np.uint64(iv_mask)
        self._blocks = sector_size // 16
        self._tweak_ecb = AesEcb(key[half:], encrypt=True)
        self._enc = AesEcb(key[:half], encrypt=True)
        self._dec = AesEcb(key[:half], encrypt=False)
        units = max(1, _SUBCHUNK // sector_size)
        self._units_per_pass = units
        self._width = min(self._blocks, _GROUP)  # blocks per run: 32 but for tiny data units
        self._groups = self._blocks // self._width  # runs per unit: 1 for 512 bytes, 8 for 4096
        rows = units * self._groups  # one row per run of blocks
        self._tweaks = np.empty((rows, self._width, 2), dtype=np.uint64)
        self._iv = np.zeros((units, 2), dtype=np.uint64)
        self._base = np.empty((units, self._groups, 2), dtype=np.uint64)
        self._steps = np.arange(units, dtype=np.uint64) * np.uint64(self.iv_step)
        self._j, self._64_j = _shift_tables(rows, self._width)
        self._lo, self._hi, self._t, self._u = (
            np.empty((rows, self._width), dtype=np.uint64) for _ in range(4)
        )

    def close(self) -> None:
        for c in (self._tweak_ecb, self._enc, self._dec):
            c.close()

    def run(self, mv: memoryview, first_iv: int, encrypt: bool) -> None:
        ecb = self._enc if encrypt else self._dec
        step = self._units_per_pass * self.sector_size
        iv = first_iv
        for start in range(0, len(mv), step):
            part = mv[start : start + step]
            units = len(part) // self.sector_size
            tweaks = self._make_tweaks(iv, units)
            data = np.frombuffer(part, dtype=np.uint64).reshape(tweaks.shape)
            np.bitwise_xor(data, tweaks, out=data)
            ecb.run(part)
            np.bitwise_xor(data, tweaks, out=data)
            iv += units * self.iv_step

    def _make_tweaks(self, first_iv: int, units: int) -> np.ndarray:
        """Tweaks T_kj = E_K2(iv_k) * x^j for every block j of every unit k, shape (units, J, 2).

        For j < 32:  lo_j = (lo << j) ^ fold(hi >> (64 - j)),  hi_j = (hi << j) | (lo >> (64 - j)),
        where fold(h) = h * (x^7 + x^2 + x + 1) carry-less reduces what overflowed x^128.
        """
        iv = self._iv[:units]
        iv[:, 1] = 0
        np.add(self._steps[:units], np.uint64(first_iv), out=iv[:, 0])
        np.bitwise_and(iv[:, 0], self._iv_mask, out=iv[:, 0])
        self._tweak_ecb.run(iv.data.cast("B"))
        base = self._base[:units]
        base[:, 0] = iv
        for g in range(1, self._groups):  # base of each run of 32 blocks: previous * x^32
            # (runs are 32 blocks whenever there is more than one)
            lo0, hi0 = base[:, g - 1, 0], base[:, g - 1, 1]
            base[:, g, 1] = (hi0 << _U32) | (lo0 >> _U32)
            base[:, g, 0] = (lo0 << _U32) ^ _fold(hi0 >> _U32)
        rows = units * self._groups
        flat = base.reshape(rows, 2)
        tweaks = self._tweaks[:rows]
        lo, hi, t, u = self._lo[:rows], self._hi[:rows], self._t[:rows], self._u[:rows]
        j, j64 = self._j[:rows], self._64_j[:rows]
        np.copyto(lo, flat[:, 0:1])
        np.copyto(hi, flat[:, 1:2])
        np.right_shift(hi, j64, out=t)  # h: the bits shifted past x^127
        np.left_shift(t, np.uint64(1), out=u)
        np.bitwise_xor(t, u, out=u)
        np.left_shift(t, np.uint64(2), out=t)
        np.bitwise_xor(t, u, out=u)
        np.left_shift(t, np.uint64(5), out=t)  # h << 7
        np.bitwise_xor(t, u, out=u)  # u = fold(h)
        np.right_shift(lo, j64, out=t)
        np.left_shift(lo, j, out=lo)
        np.bitwise_xor(lo, u, out=tweaks[:, :, 0])
        np.left_shift(hi, j, out=hi)
        np.bitwise_or(hi, t, out=tweaks[:, :, 1])
        return tweaks.reshape(units, self._blocks, 2)


def xts_reference(key: bytes, data: bytes, first_iv: int, sector_size: int = 512,
                  decrypt: bool = False) -> bytes:
    """OpenSSL's own XTS, one data unit per call: slow, the oracle the fast engine is tested against."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    out = bytearray()
    step = sector_size // 512
    for k in range(0, len(data), sector_size):
        tweak = (first_iv + (k // sector_size) * step).to_bytes(16, "little")
        c = Cipher(algorithms.AES(key), modes.XTS(tweak))
        op = c.decryptor() if decrypt else c.encryptor()
        out += op.update(data[k : k + sector_size]) + op.finalize()
    return bytes(out)
