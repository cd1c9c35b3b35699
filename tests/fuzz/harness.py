"""Fuzzing harness for every parser: mutate real images, parse them, read from them.

A parser passes when every input either opens and reads, or is refused with a LukspackError (one
line, what the CLI shows); any other exception, a hang or a huge allocation is a finding. Seeds are
real images made by qemu-img and cryptsetup (`seeds()`); mutations are drawn by hypothesis, biased
towards the metadata at both ends of the file, and towards boundary values in 2, 4 and 8-byte fields.

    python -m tests.fuzz.harness --format vhd --examples 20000     # a longer run
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lukspack.errors import LukspackError
from tests.helpers import qemu_img, run

MiB = 1 << 20
BOUNDARY = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x1FF, 0x200, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF,
            0x80000000, 0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF]


def _run(cmd: list[str]) -> None:
    if cmd[0] == "qemu-img":
        qemu_img(*cmd[1:])  # retries QEMU's flaky PBKDF calibration
    else:
        run(cmd)


def _pattern(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 1 << 20):
            f.seek(off)
            f.write(bytes([(off >> 20) % 251 + 1]) * 4096)
    return path


QEMU_SEEDS = {
    "qcow2": ["-O", "qcow2"],
    "qcow2-v2": ["-O", "qcow2", "-o", "compat=0.10"],
    "qcow2-compressed": ["-c", "-O", "qcow2"],
    "vmdk": ["-O", "vmdk"],
    "vmdk-stream": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
    "vhdx": ["-O", "vhdx"],
    "vhdx-fixed": ["-O", "vhdx", "-o", "subformat=fixed"],
    "vdi": ["-O", "vdi"],
    "vdi-fixed": ["-O", "vdi", "-o", "static=on"],
}


def make_seed(fmt: str, directory: Path) -> bytes:
    """A small real image of the format, made by the peer tools."""
    raw = _pattern(directory / "seed.raw", 3 * MiB)
    out = directory / f"seed.{fmt}"
    key = directory / "seed.key"
    key.write_bytes(b"fuzzing-passphrase")
    if fmt in ("vhd", "vhd-fixed"):
        sub = "subformat=fixed,force_size=on" if fmt == "vhd-fixed" else "force_size=on"
        _run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", sub, str(raw), str(out)])
    elif fmt in QEMU_SEEDS:
        _run(["qemu-img", "convert", "-f", "raw", *QEMU_SEEDS[fmt], str(raw), str(out)])
    elif fmt == "qcow2-luks":
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "--object",
              f"secret,id=s0,file={key}", "-o",
              "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
              str(raw), str(out)])
    elif fmt == "ova":  # a VMware-style OVA: OVF descriptor, manifest, streamOptimized VMDK
        from tests.images.ova_files import make_ova, ovf

        disk = directory / "seed-disk1.vmdk"
        _run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
              "subformat=streamOptimized", str(raw), str(disk)])
        make_ova(out, ovf([(disk.name, 3 * MiB)]), [disk])
    elif fmt == "vhd-crypt":
        return _vhd_crypt_seed(raw, out, directory)
    elif fmt == "luks1":
        with open(out, "wb") as f:
            f.truncate(3 * MiB)
        _run(["cryptsetup", "luksFormat", "--type", "luks1", "--batch-mode", "--key-file",
              str(key), "--pbkdf-force-iterations", "1000", str(out)])
    elif fmt == "luks2":
        with open(out, "wb") as f:
            f.truncate(18 * MiB)
        _run(["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--key-file",
              str(key), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
              "--luks2-keyslots-size", "1M", str(out)])
    else:
        raise ValueError(f"no seed recipe for {fmt}")
    return out.read_bytes()


def _vhd_crypt_seed(raw: Path, out: Path, directory: Path) -> bytes:
    """The real vhd-util's AES-128 sample when ../shared/vectors/vhd-util is there, else the same
    layout written by lukspack's EncryptedVhd; the key goes beside it for exercise_vhd_crypt."""
    from tests.vhd_crypt.drive import VECTORS, drive, unxz

    if (VECTORS / "vs-aes128.vhd.xz").is_file():
        (directory / "seed.vhdkey").write_bytes((VECTORS / "aes128.key").read_bytes())
        return unxz("vs-aes128.vhd.xz", directory).read_bytes()
    key = bytes(range(32))
    (directory / "seed.vhdkey").write_bytes(key)
    drive(raw, out, key)
    return out.read_bytes()


# -- what is exercised for each format --------------------------------------------------------

def exercise_image(path: str) -> None:
    from lukspack.images import open_image

    with open_image(path) as img:
        img.info()
        size = img.virtual_size
        buf = bytearray(64 * 1024)
        for off in {0, max(0, size // 2 - 32768), max(0, size - len(buf))}:
            img.read_into(off, buf)


def exercise_vhd_crypt(path: str) -> None:
    from lukspack.images.vhd_crypt import encrypted_vhd_info, is_encrypted_vhd, open_encrypted_vhd

    is_encrypted_vhd(path)
    encrypted_vhd_info(path)
    key = (Path(path).parent / "seed.vhdkey").read_bytes()
    with open_encrypted_vhd(path, key) as img:
        img.info()
        size = img.virtual_size
        buf = bytearray(64 * 1024 + 100)
        for off in {0, max(0, size // 2 - 32769), max(0, size - len(buf))}:
            img.read_into(off, buf)


def exercise_luks(path: str) -> None:
    from lukspack.luks import open_luks_path

    fd, vol = open_luks_path(path)
    try:
        _dump_and_unlock(vol)
    finally:
        os.close(fd)


def exercise_qcow2_luks(path: str) -> None:
    from lukspack.images.encrypted import open_qcow2_luks

    fd = os.open(path, os.O_RDONLY)
    try:
        image, vol = open_qcow2_luks(path, fd)
        image.info()
        _dump_and_unlock(vol)
    finally:
        os.close(fd)


def _dump_and_unlock(vol) -> None:  # noqa: ANN001 - a LuksVolume
    """Render the header, and try the seed's passphrase unless the header asks for a long KDF."""
    vol.dump()
    if _max_cost(vol) > 20000:
        return  # a valid header may ask for hours of key derivation, as with cryptsetup
    try:
        key = vol.unlock(b"fuzzing-passphrase")
        vol.sector_cipher(key)
    except LukspackError:
        pass


def _max_cost(vol) -> int:  # noqa: ANN001
    """The largest iteration count the header asks an unlock to spend."""
    h = vol.header
    costs = [getattr(h, "mk_digest_iterations", 0)]
    costs += [getattr(s, "iterations", 0) for s in getattr(h, "slots", [])]
    try:  # LUKS2: kdf objects in the JSON (argon2: time x memory/64 KiB as the cost)
        j = getattr(h, "json", None) or {}
        for ks in j.get("keyslots", {}).values():
            kdf = ks.get("kdf", {})
            costs.append(int(kdf.get("iterations", 0)))
            costs.append(int(kdf.get("time", 0)) * int(kdf.get("memory", 0)) // 64)
        costs += [int(d.get("iterations", 0)) for d in j.get("digests", {}).values()]
    except (TypeError, ValueError, AttributeError):
        return 1 << 62
    return max(costs)


EXERCISE: dict[str, Callable[[str], None]] = {
    "vhd": exercise_image,
    "vhd-fixed": exercise_image,
    "ova": exercise_image,  # the tar member lookup and the OVF parser, then the VMDK inside
    "vhd-crypt": exercise_vhd_crypt,
    "luks1": exercise_luks,
    "luks2": exercise_luks,
    "qcow2-luks": exercise_qcow2_luks,
    **{name: exercise_image for name in QEMU_SEEDS},
}


def check_input(fmt: str, data: bytes, directory: Path) -> None:
    """Parse data as fmt: it must open or be refused with a LukspackError."""
    path = directory / f"input.{fmt}"
    path.write_bytes(data)
    try:
        EXERCISE[fmt](str(path))
    except LukspackError as e:
        message = str(e)
        assert "\n" not in message and message, repr(message)


# -- mutations --------------------------------------------------------------------------------

class Seed:
    """Seed bytes with a short repr (hypothesis prints strategy arguments)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Seed({len(self.data)} bytes)"


@st.composite
def mutated(draw: st.DrawFn, seed: Seed) -> Seed:
    data = bytearray(seed.data)

    def position() -> int:
        n = len(data)
        hot = [(0, min(n, 64 * 1024)), (max(0, n - 4096), n)]  # metadata lives at the ends
        lo, hi = draw(st.sampled_from(hot)) if draw(st.booleans()) else (0, n)
        return draw(st.integers(lo, max(lo, hi - 1)))

    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "field", "byte", "truncate", "zero"]))
        pos = position()
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "field":
            width, fmt = draw(st.sampled_from([(2, "H"), (4, "I"), (8, "Q")]))
            value = draw(st.sampled_from(BOUNDARY)) & ((1 << (8 * width)) - 1)
            endian = draw(st.sampled_from([">", "<"]))
            if pos + width <= len(data):
                struct.pack_into(endian + fmt, data, pos, value)
        elif kind == "zero":
            end = min(len(data), pos + draw(st.integers(1, 4096)))
            data[pos:end] = bytes(end - pos)
        elif pos > 0:
            del data[pos:]
    return Seed(bytes(data))


REGRESSIONS = Path(__file__).resolve().parents[1] / "data" / "fuzz-regressions"


def save_finding(fmt: str, data: bytes) -> Path:
    """Keep an input that broke a parser, for tests/fuzz/test_fuzz.py to replay forever."""
    import hashlib

    path = REGRESSIONS / fmt / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    print(f"finding saved to {path}", file=sys.stderr)
    return path


def fuzz(fmt: str, examples: int, seed_data: bytes, directory: Path) -> int:
    """Run `examples` mutated inputs through the parser; returns how many ran."""
    count = [0]

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated(Seed(seed_data)))
    def one(case: Seed) -> None:
        count[0] += 1
        try:
            check_input(fmt, case.data, directory)
        except Exception:
            save_finding(fmt, case.data)
            raise

    one()
    return count[0]


def main() -> None:
    ap = argparse.ArgumentParser(description="fuzz one lukspack parser")
    ap.add_argument("--format", choices=sorted(EXERCISE), required=True)
    ap.add_argument("--examples", type=int, default=10000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        seed = make_seed(args.format, Path(d))
        start = time.perf_counter()
        n = fuzz(args.format, args.examples, seed, Path(d))
        secs = time.perf_counter() - start
    print(f"{args.format}: {n} executions in {secs:.1f} s ({n / secs:.0f}/s), no findings")


if __name__ == "__main__":
    sys.exit(main())
