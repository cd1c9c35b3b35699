"""cryptsetup as an oracle for the LUKS tests: format, fill, dump the volume key, test a key."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from lukspack.crypto.sector import make_sector_cipher, split_cipher_spec
from tests.helpers import MiB, cryptsetup, qemu_img, run, tool

CS_PBKDF2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
CS_ARGON2ID = ["--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32"]
CS_ARGON2I = ["--pbkdf", "argon2i", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "64",
              "--pbkdf-parallel", "1"]
LP_FAST = ["--pbkdf-force-iterations", "1000"]  # lukspack: PBKDF2 1000, or with --pbkdf argon2*:
LP_ARGON2 = ["--pbkdf-force-iterations", "4", "--pbkdf-memory", "32"]


def write_key(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def cs_format(image: Path, key: Path, size: int, *args: str) -> Path:
    """A file of `size` bytes formatted by `cryptsetup luksFormat`."""
    with open(image, "wb") as f:
        f.truncate(size)
    cryptsetup("luksFormat", "-q", "--key-file", str(key), *args, str(image))
    return image


def cs_opens(image: Path, key: Path, *args: str) -> bool:
    p = cryptsetup("luksOpen", "--test-passphrase", "--key-file", str(key), *args, str(image),
                   check=False)
    assert p.returncode in (0, 1, 2), p.stderr.decode()  # 2: no key available with this key
    return p.returncode == 0


def cs_volume_key(image: Path, key: Path) -> bytes:
    out = cryptsetup("luksDump", "--dump-volume-key", "--batch-mode", "--key-file", str(key),
                     str(image)).stdout.decode()
    tail = out.split("MK dump:", 1)[1]
    return bytes.fromhex("".join(re.findall(r"\b[0-9a-f]{2}\b", tail)))


def cs_dump(image: Path) -> str:
    return cryptsetup("luksDump", str(image)).stdout.decode()


def decrypt_payload(image: Path, volume_key: bytes, cipher: str, offset: int, size: int,
                    sector_size: int = 512) -> bytes:
    """Decrypt `size` bytes of payload at `offset` with a known volume key (our cipher code)."""
    with open(image, "rb") as f:
        f.seek(offset)
        buf = bytearray(f.read(size))
    c = make_sector_cipher(*split_cipher_spec(cipher), volume_key, sector_size)
    c.decrypt(buf, 0)
    return bytes(buf)


def reencrypt_fill(image: Path, source: Path, key: Path, *args: str) -> Path:
    """Encrypt a copy of source in place with `cryptsetup reencrypt --encrypt` (LUKS2): the data
    ends up at the 16 MiB data offset, the file keeps its size (source + 32 MiB)."""
    data = source.read_bytes()
    with open(image, "wb") as f:
        f.write(data)
        f.truncate(len(data) + 32 * MiB)
    cryptsetup("reencrypt", "-q", "--encrypt", "--type", "luks2", "--reduce-device-size", "32M",
               "--key-file", str(key), *args, str(image))
    return image


def qemu_fill(image: Path, source: Path, key: Path) -> Path:
    """Write source into the payload of a LUKS1 image through QEMU's LUKS driver."""
    qemu_img("convert", "-n", "-f", "raw", str(source), "--object", f"secret,id=s0,file={key}",
             "--target-image-opts", f"driver=luks,key-secret=s0,file.filename={image}")
    return image


def tool_version(name: str) -> str:
    p: subprocess.CompletedProcess[bytes] = run([tool(name), "--version"])
    return p.stdout.decode().split("\n")[0]
