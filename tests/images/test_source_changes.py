"""A source that is truncated, grows or is written to while it is read is an error naming the
change (images/base.check_unchanged), never an output made of what it held before and after;
nothing is committed and no temporary is left. The change is made from inside the run (a
progress callback, a reader's read), so each test is deterministic."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from lukspack.errors import SourceChanged
from tests.helpers import FAST, Cli, MiB, leftovers, run, tool

SIZE = 256 * MiB


def sparse_raw(path: Path, size: int = SIZE) -> Path:
    """A sparse RAW disk with an MBR and data at its start, middle and end."""
    with open(path, "wb") as f:
        f.truncate(size)
    run([tool("sfdisk"), "-q", str(path)], input=b"label: dos\n,,83\n")
    with open(path, "r+b") as f:
        for at in (MiB, size // 2, size - MiB):
            f.seek(at)
            f.write(os.urandom(MiB))
    return path


def shrink_at_first_progress(path: Path, to: int) -> Any:
    done = []

    def progress(phase: str, n: int, total: int) -> None:
        if n and not done:
            done.append(n)
            os.truncate(path, to)
    return progress


def write_at_first_progress(path: Path) -> Any:
    done = []

    def progress(phase: str, n: int, total: int) -> None:
        if n and not done:
            done.append(n)
            before = os.stat(path).st_mtime_ns
            with open(path, "r+b") as f:  # same size, other bytes
                f.seek(SIZE - MiB)
                f.write(bytes(MiB))
            # as the write moved it; set so that the test does not depend on the clock's tick
            os.utime(path, ns=(before, before + 10**9))
    return progress


def encrypt(src: Path, out: Path, keyfile: Path, progress: Any) -> dict[str, Any]:
    from lukspack.encrypt import encrypt as do_encrypt
    from lukspack.luks.format import KdfOptions
    from lukspack.options import EncryptOptions

    # the encrypted VHD has no key slots: a KDF option for it is a usage error
    opts = EncryptOptions(kdf=None if out.suffix == ".vhd" else KdfOptions("sha256", 2000, 1000))
    return do_encrypt(str(src), str(out), bytearray(keyfile.read_bytes()), opts, progress)


@pytest.mark.parametrize("output", ["out.img", "out.qcow2", "out.vhd"])
def test_encrypt_of_a_source_that_shrinks(tmp_path: Path, keyfile: Path, output: str) -> None:
    src = sparse_raw(tmp_path / "disk.raw")
    out = tmp_path / output
    with pytest.raises(SourceChanged) as e:
        encrypt(src, out, keyfile, shrink_at_first_progress(src, 64 * MiB))
    assert str(e.value).startswith(f"{src}: changed while it was read: size {SIZE} -> "
                                   f"{64 * MiB} bytes (256.0 MiB -> 64.0 MiB)"), e.value
    assert not out.exists() and not leftovers(tmp_path)


def test_encrypt_of_a_source_written_to(tmp_path: Path, keyfile: Path) -> None:
    src = sparse_raw(tmp_path / "disk.raw")
    out = tmp_path / "out.qcow2"
    with pytest.raises(SourceChanged, match=r"disk.raw: changed while it was read: it was "
                                            r"written to \(modification time "):
        encrypt(src, out, keyfile, write_at_first_progress(src))
    assert not out.exists() and not leftovers(tmp_path)


def test_convert_of_a_source_that_shrinks(tmp_path: Path) -> None:
    from lukspack.convert import convert

    src = sparse_raw(tmp_path / "disk.raw")
    for to in ("raw", "qcow2", "vhd-dynamic"):
        out = tmp_path / f"out.{to}"
        os.truncate(src, SIZE)
        with pytest.raises(SourceChanged, match=f"size {SIZE} -> {32 * MiB} bytes"):
            convert(str(src), str(out), to, progress=shrink_at_first_progress(src, 32 * MiB))
        assert not out.exists() and not leftovers(tmp_path)


def test_a_growing_source_of_a_qcow2(tmp_path: Path, keyfile: Path) -> None:
    """Not only RAW: any reader's source (here a qcow2 that something appends to)."""
    from tests.helpers import qemu_img

    raw = sparse_raw(tmp_path / "disk.raw", 32 * MiB)
    src = tmp_path / "disk.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(src))
    size = src.stat().st_size

    def progress(phase: str, n: int, total: int) -> None:
        if n and src.stat().st_size == size:
            with open(src, "ab") as f:
                f.write(bytes(65536))
    # a read racing the append may see its new mtime before its new size: either is the change
    with pytest.raises(SourceChanged, match=f"changed while it was read: (size {size} -> "
                                            f"{size + 65536} bytes|it was written to)"):
        encrypt(src, tmp_path / "out.img", keyfile, progress)
    assert not (tmp_path / "out.img").exists()


def test_cli_one_line_and_nothing_left(tmp_path: Path, cli: Cli, keyfile: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI in this process, the file truncated by the RAW reader's first data read: a dense
    RAW, so the read after the truncation comes up short (and says why)."""
    from lukspack.images.raw import RawImage

    src = tmp_path / "dense.raw"
    with open(src, "wb") as f:  # 0x55 0xaa at 510: a boot sector, so no RAW note
        f.write(b"\x55\xaa" * (32 * MiB))
    real = RawImage._read_allocated

    def read(self: RawImage, offset: int, view: memoryview) -> None:
        if os.path.getsize(src) == 64 * MiB:
            os.truncate(src, 16 * MiB)
        real(self, offset, view)
    monkeypatch.setattr(RawImage, "_read_allocated", read)
    for args in (["encrypt", src, tmp_path / "out.qcow2", "--key-file", keyfile, *FAST],
                 ["convert", src, tmp_path / "out.vhd", "--to", "vhd-fixed"]):
        with open(src, "r+b") as f:
            f.truncate(64 * MiB)
        err = cli.fails(*args)
        assert f"{src}: changed while it was read: size {64 * MiB} -> {16 * MiB} bytes" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["dek.key", "dense.raw"] or \
            sorted(p.name for p in tmp_path.iterdir()) == ["dense.raw"]
        assert not leftovers(tmp_path)


def test_decrypt_of_an_image_that_shrinks(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    """decrypt reads an encrypted image: the same rule."""
    from lukspack.plaintext import decrypt

    src = sparse_raw(tmp_path / "disk.raw", 64 * MiB)
    enc = tmp_path / "enc.img"
    cli("encrypt", src, enc, "--key-file", keyfile, *FAST)
    size = enc.stat().st_size
    out = tmp_path / "plain.raw"
    with pytest.raises(SourceChanged, match=f"enc.img: changed while it was read: size {size} -> "
                                            f"{size - 32 * MiB} bytes"):
        decrypt(str(enc), str(out), bytearray(keyfile.read_bytes()),
                progress=shrink_at_first_progress(enc, size - 32 * MiB))
    assert not out.exists() and not leftovers(tmp_path)



def test_verify_source_written_to_is_a_change_not_a_difference(tmp_path: Path, cli: Cli,
                                                               keyfile: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """verify --source reads a source too: one written to while verify compares says so, never
    "does not decrypt to the source" (the image is fine; the source moved). The write lands in
    the very read that follows it, before the reader's next periodic check."""
    from lukspack.images.raw import RawImage
    from lukspack.plaintext import verify

    src = sparse_raw(tmp_path / "disk.raw", 64 * MiB)
    enc = tmp_path / "enc.img"
    cli("encrypt", src, enc, "--key-file", keyfile, *FAST)
    real = RawImage._read_allocated
    done: list[int] = []

    def read(self: RawImage, offset: int, view: memoryview) -> None:
        if self.path == str(src) and offset >= 32 * MiB and not done:
            done.append(offset)
            before = os.stat(src).st_mtime_ns
            with open(src, "r+b") as f:  # other bytes where this read is, same size
                f.seek(offset)
                f.write(os.urandom(len(view)))
            os.utime(src, ns=(before, before + 10**9))
        real(self, offset, view)
    monkeypatch.setattr(RawImage, "_read_allocated", read)
    with pytest.raises(SourceChanged, match=r"disk.raw: changed while it was read: it was "
                                            r"written to \(modification time "):
        verify(str(enc), bytearray(keyfile.read_bytes()), str(src))
    assert done


def test_check_of_a_source_written_to(tmp_path: Path, cli: Cli) -> None:
    """`check` reads a few KiB, far less than the readers' 4 MiB between checks: a source
    written to meanwhile is still an error (for publish and encrypt --target too), not a
    report on what it held before and after."""
    from lukspack.check import run_check
    from lukspack.images import open_image

    src = tmp_path / "disk.raw"
    cli("sample", src, "--size", "16")
    with open_image(str(src)) as image:
        before = os.stat(src).st_mtime_ns
        with open(src, "r+b") as f:  # after it was opened, before the check reads
            f.seek(8 * MiB)
            f.write(os.urandom(4096))
        os.utime(src, ns=(before, before + 10**9))
        with pytest.raises(SourceChanged, match=r"disk.raw: changed while it was read: it was "
                                                r"written to"):
            run_check(image, "vpc")
