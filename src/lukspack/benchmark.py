"""`lukspack benchmark`, in the manner of `cryptsetup benchmark`: memory only, no storage I/O.

PBKDF2 iterations per second per hash (as the calibration measures them), and AES-XTS encryption
and decryption throughput for 512 and 4096-byte sectors with 256 and 512-bit keys, on one thread
and on every core (the pipeline's worker count).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from typing import Any

from lukspack.crypto.openssl import backend_name
from lukspack.crypto.xts import XtsCipher
from lukspack.luks.kdf import pbkdf2_rate

BUFFER = 4 << 20
SECONDS = 0.5


def _xts_rate(key_bytes: int, sector_size: int, decrypt: bool, threads: int,
              seconds: float = SECONDS) -> float:
    """MiB/s of in-place XTS over 4 MiB buffers, `threads` threads each with its own cipher."""
    done = [0] * threads
    stop = threading.Event()

    def work(i: int) -> None:
        cipher = XtsCipher(secrets.token_bytes(key_bytes), sector_size)
        buf = bytearray(BUFFER)
        run = cipher.decrypt if decrypt else cipher.encrypt
        iv = 0
        while not stop.is_set():
            run(buf, iv)
            iv += BUFFER // 512
            done[i] += BUFFER
        cipher.close()

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    return sum(done) / (time.perf_counter() - start) / (1 << 20)


def run(threads: int | None = None, seconds: float = SECONDS) -> dict[str, Any]:
    threads = threads or os.cpu_count() or 1
    kdf = [{"hash": h, "iterations_per_second": pbkdf2_rate(h, 32), "key_bits": 256}
           for h in ("sha1", "sha256", "sha512")]
    ciphers = []
    for sector in (512, 4096):
        for key_bytes in (32, 64):
            row: dict[str, Any] = {"cipher": "aes-xts", "key_bits": key_bytes * 8,
                                   "sector_size": sector}
            for n in sorted({1, threads}):
                row[f"encrypt_mib_s_{n}t"] = round(_xts_rate(key_bytes, sector, False, n, seconds), 1)
                row[f"decrypt_mib_s_{n}t"] = round(_xts_rate(key_bytes, sector, True, n, seconds), 1)
            ciphers.append(row)
    engine = XtsCipher(secrets.token_bytes(64)).engine
    return {"threads": threads, "aes_backend": backend_name(), "xts_engine": engine, "pbkdf2": kdf,
            "ciphers": ciphers}
