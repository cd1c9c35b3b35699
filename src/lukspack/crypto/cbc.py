"""AES-CBC per sector with dm-crypt IVs (essiv:HASH, plain64, plain), for reading older images.

Each sector is its own CBC chain whose IV comes from the sector number n (counted in 512-byte
units, as dm-crypt does even with 4096-byte sectors):

    plain64:      IV = le64(n), zero-padded to 16 bytes
    plain:        IV = le32(n mod 2^32), zero-padded
    essiv:HASH:   IV = AES_s(le64(n) zero-padded), s = HASH(volume key)

Decryption vectorises: one AES-ECB call over the whole chunk, then P_j = D(C_j) xor C_{j-1}.
Encryption is sequential within a sector, so it runs block position by block position over all
the sectors of a pass at once: one ECB call per block position (32 calls for 512-byte sectors).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from lukspack.crypto.openssl import AesEcb

_PASS = 1 << 20  # bytes per pass: bounds the ciphertext copy decryption keeps


class CbcCipher:
    """AES-CBC (128, 192 or 256-bit key) in place on whole sectors; one object per thread."""

    def __init__(self, key: bytes | bytearray, sector_size: int = 512, iv_mode: str = "essiv",
                 essiv_hash: str = "sha256") -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError(f"AES-CBC takes a 128, 192 or 256-bit key, not {len(key) * 8} bits")
        if sector_size < 512 or sector_size & (sector_size - 1):
            raise ValueError(f"sector size must be a power of two >= 512, not {sector_size}")
        if iv_mode not in ("essiv", "plain64", "plain"):
            raise ValueError(f"unknown CBC IV mode {iv_mode!r}")
        self.sector_size = sector_size
        self.iv_step = sector_size // 512
        self._iv_mode = iv_mode
        self._blocks = sector_size // 16
        self._enc = AesEcb(key, encrypt=True)
        self._dec = AesEcb(key, encrypt=False)
        self._essiv: AesEcb | None = None
        if iv_mode == "essiv":
            salt = bytearray(hashlib.new(essiv_hash, bytes(key)).digest())
            if len(salt) not in (16, 24, 32):
                raise ValueError(f"ESSIV hash {essiv_hash} gives a {len(salt) * 8}-bit salt, not an "
                                 "AES key")
            self._essiv = AesEcb(salt, encrypt=True)
            salt[:] = bytes(len(salt))

    def _ivs(self, first_iv: int, units: int) -> np.ndarray:
        """IVs of `units` sectors from first_iv, shape (units, 2) uint64."""
        if first_iv + units * self.iv_step > 1 << 64:
            raise ValueError("sector IV overflows 64 bits")
        iv = np.zeros((units, 2), dtype=np.uint64)
        iv[:, 0] = np.arange(units, dtype=np.uint64) * np.uint64(self.iv_step) + np.uint64(first_iv)
        if self._iv_mode == "plain":
            iv[:, 0] &= np.uint64(0xFFFFFFFF)
        if self._essiv is not None:
            self._essiv.run(iv.data.cast("B"))
        return iv

    def _passes(self, buf: bytearray | memoryview, first_iv: int
                ) -> Iterator[tuple[memoryview, np.ndarray, np.ndarray]]:
        mv = memoryview(buf).cast("B")
        if len(mv) % self.sector_size:
            raise ValueError(f"buffer of {len(mv)} bytes is not whole {self.sector_size}-byte sectors")
        step = max(self.sector_size, _PASS // self.sector_size * self.sector_size)
        iv = first_iv
        for start in range(0, len(mv), step):
            part = mv[start : start + step]
            units = len(part) // self.sector_size
            yield part, np.frombuffer(part, dtype=np.uint64).reshape(units, self._blocks, 2), \
                self._ivs(iv, units)
            iv += units * self.iv_step

    def decrypt(self, buf: bytearray | memoryview, first_iv: int) -> None:
        """Decrypt whole sectors in place; the first sector's IV number is first_iv."""
        for part, data, ivs in self._passes(buf, first_iv):
            prev = data[:, :-1].copy()
            self._dec.run(part)
            data[:, 0] ^= ivs
            data[:, 1:] ^= prev

    def encrypt(self, buf: bytearray | memoryview, first_iv: int) -> None:
        """Encrypt whole sectors in place; the first sector's IV number is first_iv."""
        for _part, data, ivs in self._passes(buf, first_iv):
            x = ivs
            for j in range(self._blocks):
                x ^= data[:, j]
                self._enc.run(x.data.cast("B"))
                data[:, j] = x

    def close(self) -> None:
        for c in (self._enc, self._dec, self._essiv):
            if c is not None:
                c.close()


def cbc_reference(key: bytes, data: bytes, first_iv: int, sector_size: int = 512,
                  iv_mode: str = "essiv", essiv_hash: str = "sha256",
                  decrypt: bool = False) -> bytes:
    """`cryptography`'s CBC, one sector per call: slow, the oracle CbcCipher is tested against."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    salt = hashlib.new(essiv_hash, key).digest()
    out = bytearray()
    for k in range(0, len(data), sector_size):
        n = first_iv + (k // sector_size) * (sector_size // 512)
        iv = (n & 0xFFFFFFFF if iv_mode == "plain" else n).to_bytes(16, "little")
        if iv_mode == "essiv":
            e = Cipher(algorithms.AES(salt), modes.ECB()).encryptor()
            iv = e.update(iv) + e.finalize()
        c = Cipher(algorithms.AES(key), modes.CBC(iv))
        op = c.decryptor() if decrypt else c.encryptor()
        out += op.update(data[k : k + sector_size]) + op.finalize()
    return bytes(out)
