"""EncryptedVhd driven as the engine drives it: round trips from every input format, checked by
lukspack's reader, by an independent decryption with the `cryptography` package, by qemu-img (which
reads an encrypted VHD as a plain VHD: its ciphertext) and by vhd-util's checks."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from lukspack.containers.encrypted_vhd import BLOCK, EncryptedVhd, encrypted_vhd_size
from lukspack.errors import FormatError, KeyFileError, UnsupportedError, VerifyError
from lukspack.images.vhd_crypt import (
    encrypted_vhd_info,
    key_hash,
    open_encrypted_vhd,
    scan_quirk_sectors,
)
from tests.helpers import MiB, qemu_img
from tests.vhd_crypt.drive import VECTORS, drive, independent_decrypt
from tests.vhd_crypt.vhdutil_check import check

KEY64 = bytes(range(64))
KEY32 = bytes(range(100, 132))


def sparse_source(path: Path, mib: int, tail: int = 0) -> Path:
    """A raw disk of 2 MiB blocks: block k % 3 == 0 data, k % 3 == 1 a hole (never written),
    k % 3 == 2 half data (first MiB) and half hole; then `tail` bytes of data."""
    rnd = random.Random(mib)
    with open(path, "wb") as f:
        f.truncate(mib * MiB + tail)
        for k in range(-(-mib // 2)):
            if k % 3 == 1:
                continue
            f.seek(k * BLOCK)
            f.write(rnd.randbytes(min(BLOCK if k % 3 == 0 else MiB, mib * MiB - k * BLOCK)))
        if tail:
            f.seek(mib * MiB)
            f.write(rnd.randbytes(tail))
    return path


def xts(key: bytes, sector: int, data: bytes, encrypt: bool = True) -> bytes:
    c = Cipher(algorithms.AES(key), modes.XTS((sector & 0xFFFFFFFF).to_bytes(16, "little")))
    op = c.encryptor() if encrypt else c.decryptor()
    return op.update(data) + op.finalize()


def plaintext(image: Path) -> bytes:
    from lukspack.images import open_image

    with open_image(str(image)) as img:
        buf = bytearray(img.virtual_size)
        img.read_into(0, buf)
        return bytes(buf)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 13 MiB + 1536 bytes: ends inside a 2 MiB block (vhd-util copy fails on this: -ERANGE)
    return sparse_source(tmp_path_factory.mktemp("src") / "source.raw", 13, tail=1536)


INPUTS = {
    "raw": None,
    "vhd": ["-O", "vpc", "-o", "subformat=dynamic,force_size=on"],
    "vhd-fixed": ["-O", "vpc", "-o", "subformat=fixed,force_size=on"],
    "vhdx": ["-O", "vhdx", "-o", "block_size=1M"],
    "qcow2": ["-O", "qcow2"],
    "vmdk": ["-O", "vmdk", "-o", "subformat=monolithicSparse"],
}


@pytest.mark.parametrize("fmt", sorted(INPUTS))
@pytest.mark.parametrize("key", [KEY64, KEY32], ids=["aes256", "aes128"])
def test_round_trip_from_every_input(fmt: str, key: bytes, source: Path, tmp_path: Path) -> None:
    if INPUTS[fmt] is None:
        image = source
    else:
        image = tmp_path / f"in.{fmt}"
        qemu_img("convert", "-f", "raw", *INPUTS[fmt], str(source), str(image))
    want = plaintext(image)
    size = len(want)
    out = tmp_path / "out.vhd"
    c = drive(image, out, key)
    rounded = -(-size // BLOCK) * BLOCK
    assert c.stream_size == rounded and c.key_bytes == len(key)
    padded = want + bytes(rounded - size)
    # lukspack's reader, with the key file as raw bytes and as base64
    import base64

    for passphrase in (key, base64.b64encode(key)):
        with open_encrypted_vhd(str(out), passphrase) as img:
            assert img.virtual_size == rounded
            buf = bytearray(rounded)
            img.read_into(0, buf)
            assert buf == padded
            assert img.quirk_sectors == 0
    # the independent reader
    assert independent_decrypt(out, key) == padded
    assert check(out) is None
    # the blocks lukspack left unallocated are exactly the all-zero ones
    bat = c.bat.tolist()
    for k in range(rounded // BLOCK):
        zero = not any(padded[k * BLOCK : (k + 1) * BLOCK])
        assert (bat[k] == 0xFFFFFFFF) == zero, k


def test_qemu_reads_it_as_a_vhd_holding_the_ciphertext(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.vhd"
    drive(source, out, KEY64)
    info = json.loads(qemu_img("info", "-f", "vpc", "--output", "json", str(out)).stdout)
    assert info["format"] == "vpc" and info["virtual-size"] == 14 * MiB
    seen = tmp_path / "seen.raw"
    qemu_img("convert", "-f", "vpc", "-O", "raw", str(out), str(seen))
    data, plain = seen.read_bytes(), source.read_bytes() + bytes(14 * MiB - source.stat().st_size)
    for k in range(7):
        block = plain[k * BLOCK : (k + 1) * BLOCK]
        got = data[k * BLOCK : (k + 1) * BLOCK]
        if not any(block):
            assert not any(got)
            continue
        for s in range(0, BLOCK, 512 * 97):  # a sample of the sectors, each at its own tweak
            sector = (k * BLOCK + s) // 512
            assert got[s : s + 512] == xts(KEY64, sector, block[s : s + 512]), (k, s)


def test_chunk_size_does_not_change_the_output(source: Path, tmp_path: Path) -> None:
    fixed = {"timestamp": 12345, "unique_id": b"\x11" * 16}
    digests = set()
    for blocks in (1, 3, 7):
        out = tmp_path / f"out{blocks}.vhd"
        drive(source, out, KEY64, chunk_blocks=blocks, **fixed)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_unallocated_source_is_not_read(tmp_path: Path) -> None:
    src = tmp_path / "big.raw"
    with open(src, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(40 * MiB)
        f.write(b"\x5a" * MiB)
    qcow2 = tmp_path / "big.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(src), str(qcow2))
    out = tmp_path / "out.vhd"
    c = drive(qcow2, out, KEY64)
    assert c.summary()["allocated_blocks"] == 1 and int(c.bat[20]) != 0xFFFFFFFF
    # headers to 3072, a gap to 3584 (data on a 4 KiB boundary), bitmap, block, footer
    assert out.stat().st_size == 3584 + 512 + BLOCK + 512
    assert c.source_bytes_read <= MiB + 256 * 1024  # data + qcow2 tables: holes never read
    assert check(out) is None


def documented_layout(blocks: int) -> tuple[int, int, int]:
    """(bytes before the first block, the first block's bitmap sector, sectors from one block's
    bitmap to the next) for a disk of `blocks` 2 MiB blocks, computed here from the rules in
    docs/encrypted-vhd.md (blktap's vhd_batmap_header_offset, vhd_create_batmap,
    __vhd_io_allocate_block), not from lukspack's _Layout."""
    bat_end = 1536 + -(-blocks * 4 // 512) * 512  # table_offset 1536, BAT padded to a sector
    batmap = bat_end + 512  # the batmap header's sector, then the map
    batmap_sectors = max(1, -(-((blocks + 7) >> 3) // 512))  # secs_round_up_no_zero
    headers_end = batmap + batmap_sectors * 512
    first = headers_end // 512
    while (first + 1) % 8:  # the data after the one-sector bitmap starts on a 4 KiB page
        first += 1
    stride = 1 + 4096  # bitmap and data, then the gap to the next page-aligned data
    while (first + stride + 1) % 8:
        stride += 1
    return headers_end, first, stride


def test_vhd_util_sample_has_the_documented_layout(samples: Path) -> None:
    """The real vhd-util's file, parsed field by field (VHD spec offsets), agrees with the rules
    documented_layout computes: so those rules are an independent oracle."""
    data = (samples / "vs-aes256.vhd").read_bytes()
    table_offset, = struct.unpack_from(">Q", data, 512 + 16)
    entries, block_size = struct.unpack_from(">II", data, 512 + 28)
    assert data[512:520] == b"cxsparse" and (table_offset, entries, block_size) == (1536, 4, BLOCK)
    headers_end, first, stride = documented_layout(entries)
    batmap_header = table_offset + -(-entries * 4 // 512) * 512
    assert data[batmap_header : batmap_header + 8] == b"tdbatmap"
    batmap_offset, = struct.unpack_from(">Q", data, batmap_header + 8)
    batmap_sectors, = struct.unpack_from(">I", data, batmap_header + 16)
    assert batmap_offset + batmap_sectors * 512 == headers_end == 3072
    bat = [x for x in struct.unpack_from(">4I", data, table_offset) if x != 0xFFFFFFFF]
    assert bat == [first + k * stride for k in range(3)] == [7, 4111, 8215]  # block 1: a hole
    assert len(data) == (bat[-1] + 1 + 4096) * 512 + 512  # the last block, then the footer


@pytest.mark.parametrize("mib", [1, 2, 4, 5, 8, 33, 256, 258, 4096 * 2, 4096 * 2 + 2,
                                 2 << 20])
def test_sizes_match_the_documented_layout(mib: int) -> None:
    blocks = -(-mib // 2)
    headers_end, first, stride = documented_layout(blocks)
    s = encrypted_vhd_size(mib * MiB)
    assert s["virtual_size"] == blocks * BLOCK and s["blocks"] == blocks
    assert s["header_bytes"] == headers_end == EncryptedVhd(mib * MiB).prefix_size
    assert s["min_total_bytes"] == headers_end + 512  # nothing allocated: the footer
    assert s["max_total_bytes"] == (first + (blocks - 1) * stride + 1 + 4096) * 512 + 512
    assert s["bytes_per_allocated_block"] == stride * 512


def test_written_blocks_sit_where_the_layout_says(source: Path, tmp_path: Path) -> None:
    """lukspack's own file, parsed field by field: each allocated block's bitmap at the sector
    documented_layout gives for its place in the file."""
    out = tmp_path / "out.vhd"
    drive(source, out, KEY64)
    data = out.read_bytes()
    entries, = struct.unpack_from(">I", data, 512 + 28)
    headers_end, first, stride = documented_layout(entries)
    bat = [x for x in struct.unpack_from(f">{entries}I", data, 1536) if x != 0xFFFFFFFF]
    assert bat == [first + k * stride for k in range(len(bat))] and len(bat) == 5
    assert len(data) == (bat[-1] + 1 + 4096) * 512 + 512


def test_over_2_tib_is_refused() -> None:
    with pytest.raises(UnsupportedError, match="over 2 TiB"):
        EncryptedVhd((2 << 40) + 1)
    assert EncryptedVhd(2 << 40).stream_size == 2 << 40


def test_key_file_forms(tmp_path: Path) -> None:
    c = EncryptedVhd(4 * MiB)
    assert c.new_volume_key(KEY32) == KEY32 and c.key_bytes == 32
    with pytest.raises(KeyFileError, match="neither base64 of 32 or 64 bytes"):
        c.new_volume_key(b"too short")
    footer = c.build_key_material(KEY64, KEY64, None)
    assert len(footer) == 512 and footer == c.finish(footer).trailer[-1][1]
    assert c.recover_volume_key(b"", KEY64, None) == KEY64  # a journal from before the footer


def test_a_resume_reuses_the_saved_footer() -> None:
    """The key material is the footer: a resumed run (another container, its own time stamp and
    unique id) takes the saved one's, so its output is byte-identical; a damaged or another
    disk's footer is refused."""
    first = EncryptedVhd(4 * MiB, timestamp=7, unique_id=bytes(range(16)))
    first.new_volume_key(KEY64)
    saved = first.build_key_material(KEY64, KEY64, None)
    again = EncryptedVhd(4 * MiB)
    assert (again.timestamp, again.unique_id) != (7, bytes(range(16)))
    assert again.recover_volume_key(saved, KEY64, None) == KEY64
    assert (again.timestamp, again.unique_id) == (7, bytes(range(16)))
    assert again.finish(saved) == first.finish(saved)
    bad = bytearray(saved)
    bad[100] ^= 1
    with pytest.raises(FormatError, match="not a VHD footer with a valid checksum"):
        EncryptedVhd(4 * MiB).recover_volume_key(bytes(bad), KEY64, None)
    with pytest.raises(FormatError, match="not a VHD footer"):
        EncryptedVhd(4 * MiB).recover_volume_key(saved[:511], KEY64, None)
    with pytest.raises(FormatError, match="not this disk's"):
        EncryptedVhd(6 * MiB).recover_volume_key(saved, KEY64, None)
    other = EncryptedVhd(4 * MiB, timestamp=8)
    other.new_volume_key(KEY64)
    with pytest.raises(ValueError, match="another footer"):
        other.finish(saved)


def test_check_prefix_catches_a_wrong_prefix(source: Path, tmp_path: Path) -> None:
    c = drive(source, tmp_path / "out.vhd", KEY64)
    prefix = c.build_prefix()
    c.check_prefix(prefix, KEY64, KEY64, None)
    with pytest.raises(VerifyError, match="key file does not match"):
        c.check_prefix(prefix, KEY32, KEY64, None)
    bad = bytearray(prefix)
    bad[TABLE := 1536] ^= 1
    with pytest.raises(VerifyError, match="BAT differs"):
        c.check_prefix(bytes(bad), KEY64, KEY64, None)
    bad = bytearray(prefix)
    bad[2048 + 64] ^= 1  # inside the key hash
    with pytest.raises(VerifyError, match="key file does not match"):
        c.check_prefix(bytes(bad), KEY64, KEY64, None)
    assert TABLE == 1536


def test_chunks_out_of_order_are_refused() -> None:
    c = EncryptedVhd(8 * MiB)
    c.new_volume_key(KEY64)
    buf = memoryview(bytearray(b"\1" * BLOCK))
    c.plan(2 * BLOCK, buf, True)
    with pytest.raises(ValueError):
        c.plan(0, buf, True)
    with pytest.raises(ValueError):
        c.plan(3 * BLOCK + 512, buf, True)


# -- reading what vhd-util's quirk and partial bitmaps leave -------------------------------------

def _mutable_sample(samples: Path, tmp_path: Path) -> tuple[Path, bytearray]:
    out = tmp_path / "q.vhd"
    data = bytearray((samples / "vs-aes256.vhd").read_bytes())
    out.write_bytes(data)
    return out, data


def test_quirk_sectors_are_detected_and_read_as_tapdisk_does(samples: Path,
                                                             tmp_path: Path) -> None:
    """vhd-util's copy marks sectors present that it left as plaintext zeros: tapdisk decrypts
    the zeros (noise); lukspack reads the same bytes and counts the sectors."""
    path, data = _mutable_sample(samples, tmp_path)
    data_at = 4111 * 512 + 512  # block 2 (BAT entry 4111): its data after the bitmap
    for s in (3, 4, 100):
        data[data_at + s * 512 : data_at + (s + 1) * 512] = bytes(512)
    path.write_bytes(data)
    key = (VECTORS / "aes256.key").read_bytes()
    with open_encrypted_vhd(str(path), key) as img:
        buf = bytearray(img.virtual_size)
        img.read_into(0, buf)
        assert img.quirk_sectors == 3 and img.quirk_blocks == {2}
        from lukspack.images.encrypted import Quirks

        d = img.describe()  # the typed description plaintext.py reports from
        assert (d.type, d.cipher, d.volume, d.quirks) == ("vhd", "aes-xts-plain", None,
                                                          Quirks(3, (2,)))
        assert img.info()["encrypted_vhd"]["quirk_blocks"] == [2]
        assert scan_quirk_sectors(img) == (3, [2])
    e = encrypted_vhd_info(str(path), scan_quirks=True)["encrypted_vhd"]
    assert (e["quirk_sectors"], e["quirk_blocks"]) == (3, [2])
    assert "quirk_sectors" not in encrypted_vhd_info(str(samples / "vs-aes256.vhd"))
    sector = 2 * 4096 + 3
    assert buf[sector * 512 : (sector + 1) * 512] == xts(key, sector, bytes(512), encrypt=False)
    assert bytes(buf) == independent_decrypt(path, key)


def test_absent_sectors_read_as_zeros(samples: Path, tmp_path: Path) -> None:
    """A block whose batmap bit is clear is read through its sector bitmap (tapdisk)."""
    from lukspack.images.vhd_crypt import batmap_checksum

    path, data = _mutable_sample(samples, tmp_path)
    bitmap_at = 4111 * 512
    data[bitmap_at] = 0b01111111  # sector 0 of block 2 absent
    data[bitmap_at + 511] = 0b11111110  # sector 4095 absent
    data[2560] = 0b10010000  # batmap: block 2 no longer full
    struct.pack_into(">I", data, 2048 + 24, batmap_checksum(bytes(data[2560:3072])))
    path.write_bytes(data)
    key = (VECTORS / "aes256.key").read_bytes()
    with open_encrypted_vhd(str(path), key) as img:
        buf = bytearray(img.virtual_size)
        img.read_into(0, buf)
    assert buf[4 * MiB : 4 * MiB + 512] == bytes(512)
    assert buf[6 * MiB - 512 : 6 * MiB] == bytes(512)
    assert buf[4 * MiB + 512 : 6 * MiB - 512] != bytes(2 * MiB - 1024)
    assert bytes(buf) == independent_decrypt(path, key)
    assert key_hash(key).hex() == bytes(data[2048 + 62 : 2048 + 94]).hex()
    os.unlink(path)


def test_an_all_zero_disk_is_headers_and_footer(tmp_path: Path) -> None:
    src = tmp_path / "zeros.raw"
    src.write_bytes(bytes(3 * MiB))  # written zeros, not holes: every block is read and skipped
    out = tmp_path / "out.vhd"
    c = drive(src, out, KEY32)
    assert c.summary()["allocated_blocks"] == 0
    assert out.stat().st_size == encrypted_vhd_size(3 * MiB)["min_total_bytes"] == 3584
    assert check(out) is None
    with open_encrypted_vhd(str(out), KEY32) as img:
        buf = bytearray(b"x" * img.virtual_size)
        img.read_into(0, buf)
        assert img.virtual_size == 4 * MiB and not any(buf) and img.bytes_read < 4096
