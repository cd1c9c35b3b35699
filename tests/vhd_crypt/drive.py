"""What the tests of the encrypted VHD share: the vhd-util samples, an independent decryption with
the `cryptography` package, and a minimal driver of the container (the engine's contract, one
thread) for tests that do not go through lukspack.encrypt."""

from __future__ import annotations

import lzma
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from lukspack.cli import main
from lukspack.containers.encrypted_vhd import EncryptedVhd
from lukspack.crypto.sector import make_sector_cipher
from lukspack.images import open_image

# ../shared/vectors/vhd-util beside the checkout (the issue names it so), or where the variable says
VECTORS = Path(os.environ.get("LUKSPACK_VHD_UTIL_VECTORS",
                              Path(__file__).resolve().parents[3] / "shared" / "vectors" / "vhd-util"))
PLAINTEXT_SHA256 = "ed623d6f8f1a73359497d290dc034689e022936f9081b3f756979dc54b573b1c"
KEY_HASHES = {  # what `vhd-util key -C -k KEY` printed (vectors README)
    "aes256": "0581755fef3788fbae5cf499cd678c56fbdd2db403cb217f283c90c49a7457b0",
    "aes128": "4ea225c2670a0d3754a9734bb5d4bc3b28e9565ab5612c7de00ecea58520dbc7",
}
# IBM Cloud docs, "Encrypting VHD images" (image-templates/create-encrypted-image.md), step 4-5
IBM_EXAMPLE_DEK = b"Nrfen98EpMxF2B+wdgLfagzrqvgUZfMK4vL2T0NsT20ihrsNC9pUUHtizF6218pze8RLCgQ6kwxuE58IWLzgDA=="
IBM_EXAMPLE_HASH = "21681bba94f04b33b112f5f90a0faa885a6d1dbf1bd68ed16c5b995143088eda"
BLOCK = 2 << 20
SECTOR = 512


def unxz(name: str, into: Path) -> Path:
    out = into / name.removesuffix(".xz")
    if not out.exists():
        out.write_bytes(lzma.decompress((VECTORS / name).read_bytes()))
    return out


def independent_decrypt(path: Path, key: bytes) -> bytes:
    """The plaintext of an encrypted VHD, read with struct and the `cryptography` package only:
    footer -> header -> BAT -> sector bitmaps; present sectors AES-XTS with the 32-bit
    little-endian sector number as tweak, absent sectors zeros."""
    data = path.read_bytes()
    footer = data[-512:]
    assert footer[:8] == b"conectix" and footer[28:32] == b"tap\0"
    size = struct.unpack_from(">Q", footer, 48)[0]
    data_offset = struct.unpack_from(">Q", footer, 16)[0]
    table, entries, block_size = struct.unpack_from(">Q4xII", data, data_offset + 16)
    bat = struct.unpack_from(f">{entries}I", data, table)
    spb = block_size // SECTOR
    bitmap_bytes = -(-spb // 8 // SECTOR) * SECTOR
    out = bytearray(size)
    for block, entry in enumerate(bat):
        if entry == 0xFFFFFFFF:
            continue
        bitmap = data[entry * SECTOR : entry * SECTOR + bitmap_bytes]
        base = entry * SECTOR + bitmap_bytes
        for s in range(spb):
            if not bitmap[s // 8] & (0x80 >> (s % 8)):
                continue
            sector = block * spb + s
            tweak = (sector & 0xFFFFFFFF).to_bytes(4, "little") + bytes(12)
            dec = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()
            ct = data[base + s * SECTOR : base + (s + 1) * SECTOR]
            out[sector * SECTOR : (sector + 1) * SECTOR] = dec.update(ct) + dec.finalize()
    return bytes(out)


def drive(source: Path, out: Path, passphrase: bytes, *, chunk_blocks: int = 1,
          **opts: Any) -> EncryptedVhd:
    """Encrypt source into out through EncryptedVhd as the engine does: plan each chunk in order,
    encrypt the runs at their IV, place runs and metadata; the trailer, then the prefix last.
    Asserts the container's promise: every output byte once, ascending, after the prefix."""
    with open_image(str(source)) as image:
        c = EncryptedVhd(image.virtual_size, **opts)
        key = c.new_volume_key(passphrase)
        cipher = make_sector_cipher(c.cipher_name, c.cipher_mode, key)
        material = c.build_key_material(key, passphrase, None)
        with open(out, "wb") as f:
            written = c.prefix_size
            f.seek(written)
            pos, chunk = 0, chunk_blocks * c.chunk_align
            while pos < c.stream_size:
                n = min(chunk, c.stream_size - pos)
                if any(e.allocated for e in image.extents(pos, pos + n)):
                    buf = bytearray(n)
                    image.read_into(pos, buf)
                    plan = c.plan(pos, memoryview(buf), True)
                else:
                    buf = bytearray()
                    plan = c.plan(pos, None, False)
                placed: list[tuple[int, bytes]] = list(plan.metadata)
                for r in plan.runs:
                    data = bytearray(buf[r.start : r.start + r.length])
                    cipher.encrypt(data, r.iv_sector)
                    placed.append((r.dest, bytes(data)))
                for off, data in sorted(placed):
                    assert off == written, f"gap or overlap at {off} (written up to {written})"
                    f.write(data)
                    written += len(data)
                pos += n
            fin = c.finish(material)
            for off, data in fin.trailer:
                assert off == written
                f.write(data)
                written += len(data)
            assert written == fin.total_size
            assert len(fin.prefix) == c.prefix_size
            f.seek(0)
            f.write(fin.prefix)
        c.check_prefix(fin.prefix, passphrase, key, None)
        cipher.close()
        c.source_bytes_read = image.bytes_read  # type: ignore[attr-defined]
    return c


def lk(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """`lukspack ARGS` in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err
