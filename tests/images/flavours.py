"""Input images of every supported flavour, made by qemu-img from one pattern disk, and the
checks the reader tests share. qemu-img is the oracle: `qemu-img convert -O raw` says what each
image holds, and qemu decrypts what lukspack writes."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

from tests.helpers import FAST, Cli, MiB, qemu_img, run, tool

SOURCE_MIB = 12  # pattern_disk: MiB 0 and every i % 4 == 3 are zeros, i % 4 == 1 random


def convert(src: Path, out: Path, *args: str) -> Path:
    qemu_img("convert", "-f", "raw", *args, str(src), str(out))
    return out


def qemu_io(fmt: str, image: Path, *commands: str) -> None:
    cmd = [tool("qemu-io"), "-f", fmt]
    for c in commands:
        cmd += ["-c", c]
    run(cmd + [str(image)])


def zero_clusters_qcow2(src: Path, out: Path) -> Path:
    """A qcow2 v3 with zero clusters (L2 bit 0), some over allocated clusters."""
    convert(src, out, "-O", "qcow2")
    qemu_io("qcow2", out, "write -z 1M 1M", "write -z 5M 64k", "write -z 8M 2M")
    return out


def zeroed_grain_vmdk(src: Path, out: Path) -> Path:
    """A monolithicSparse VMDK whose grain tables use the zeroed-grain entry (GTE 1)."""
    convert(src, out, "-O", "vmdk", "-o", "subformat=monolithicSparse,zeroed_grain=on")
    qemu_io("vmdk", out, "write -z 1M 1M", "write -z 9M 64k")
    return out


def vmware_stream(src: Path, out: Path) -> Path:
    """streamOptimized as VMware writes it (OVAs): gdOffset 'at end' in the header, the real
    header in a footer before the end-of-stream marker. Made from qemu's streamOptimized."""
    tmp = convert(src, out.with_suffix(".qemu.vmdk"), "-O", "vmdk", "-o",
                  "subformat=streamOptimized")
    data = bytearray(tmp.read_bytes())
    header = bytes(data[:512])
    struct.pack_into("<Q", data, 56, 0xFFFFFFFFFFFFFFFF)  # gdOffset
    footer_marker = struct.pack("<QII", 1, 0, 3).ljust(512, b"\0")
    out.write_bytes(bytes(data) + footer_marker + header + bytes(512))
    tmp.unlink()
    return out


VDI_BMAP_AT = 0x154  # the header's offset_bmap field (images/vdi.py)


def vdi_zero_blocks(src: Path, out: Path, blocks: tuple[int, ...] = (2, 5)) -> Path:
    """A dynamic VDI whose block map marks blocks that hold data as 0xFFFFFFFE (discarded or
    zeroed, as `VBoxManage modifymedium --compact` leaves them; qemu-img never writes it)."""
    convert(src, out, "-O", "vdi")
    data = bytearray(out.read_bytes())
    bmap = struct.unpack_from("<I", data, VDI_BMAP_AT)[0]
    for b in blocks:
        assert struct.unpack_from("<I", data, bmap + 4 * b)[0] < 0xFFFFFFFE  # it held data
        struct.pack_into("<I", data, bmap + 4 * b, 0xFFFFFFFE)
    out.write_bytes(bytes(data))
    return out


def vdi_written_zeroes(src: Path, out: Path) -> Path:
    """A dynamic VDI that qemu-io wrote zeroes into: qemu's VDI driver stores them as data (a
    zero write into a free block allocates it), so they read back as zeros from the file."""
    convert(src, out, "-O", "vdi")
    qemu_io("vdi", out, "write -z 1M 1M", "write -z 9M 64k")
    return out


def _vhdx(*opts: str) -> Callable[[Path, Path], Path]:
    return lambda src, out: convert(src, out, "-O", "vhdx", *opts)


def _with(*args: str) -> Callable[[Path, Path], Path]:
    return lambda src, out: convert(src, out, *args)


# name -> (file suffix, builder, sparse: holes are reported and cost no I/O)
FLAVOURS: dict[str, tuple[str, Callable[[Path, Path], Path], bool]] = {
    "qcow2-v3": (".qcow2", _with("-O", "qcow2"), True),
    "qcow2-v2": (".qcow2", _with("-O", "qcow2", "-o", "compat=0.10"), True),
    "qcow2-compressed": (".qcow2", _with("-c", "-O", "qcow2"), True),
    "qcow2-v2-compressed": (".qcow2", _with("-c", "-O", "qcow2", "-o", "compat=0.10"), True),
    "qcow2-4k-clusters": (".qcow2", _with("-O", "qcow2", "-o", "cluster_size=4096"), True),
    # 2 MiB clusters mix zero and data MiBs: no holes to report
    "qcow2-2m-clusters-compressed": (".qcow2",
                                     _with("-c", "-O", "qcow2", "-o", "cluster_size=2M"), False),
    "qcow2-zero-clusters": (".qcow2", zero_clusters_qcow2, True),
    "vmdk-monolithicSparse": (".vmdk", _with("-O", "vmdk", "-o", "subformat=monolithicSparse"),
                              True),
    "vmdk-streamOptimized": (".vmdk", _with("-O", "vmdk", "-o", "subformat=streamOptimized"),
                             True),
    "vmdk-streamOptimized-c": (".vmdk",
                               _with("-c", "-O", "vmdk", "-o", "subformat=streamOptimized"), True),
    "vmdk-streamOptimized-vmware-footer": (".vmdk", vmware_stream, True),
    "vmdk-monolithicFlat": (".vmdk", _with("-O", "vmdk", "-o", "subformat=monolithicFlat"), False),
    "vmdk-twoGbMaxExtentSparse": (".vmdk",
                                  _with("-O", "vmdk", "-o", "subformat=twoGbMaxExtentSparse"),
                                  True),
    "vmdk-twoGbMaxExtentFlat": (".vmdk", _with("-O", "vmdk", "-o", "subformat=twoGbMaxExtentFlat"),
                                False),
    "vmdk-zeroed-grain": (".vmdk", zeroed_grain_vmdk, True),
    "vhdx-dynamic": (".vhdx", _vhdx("-o", "block_size=1M"), True),
    "vhdx-dynamic-default-blocks": (".vhdx", _vhdx(), False),
    "vhdx-fixed": (".vhdx", _vhdx("-o", "subformat=fixed,block_size=1M"), False),
    "vhdx-fixed-no-zero-blocks": (".vhdx",
                                  _vhdx("-o", "subformat=fixed,block_size=1M,block_state_zero=off"),
                                  False),
    "vdi-dynamic": (".vdi", _with("-O", "vdi"), True),
    "vdi-fixed": (".vdi", _with("-O", "vdi", "-o", "static=on"), False),
    "vdi-zero-blocks": (".vdi", vdi_zero_blocks, True),
    "vdi-written-zeroes": (".vdi", vdi_written_zeroes, True),
}


def make(name: str, src: Path, directory: Path) -> tuple[Path, Path]:
    """Build flavour `name` from the raw src in its own directory; return (image, qemu's raw)."""
    suffix, build, _sparse = FLAVOURS[name]
    d = directory / name
    d.mkdir()
    image = build(src, d / f"disk{suffix}")
    ref = d / "ref.raw"
    qemu_img("convert", "-O", "raw", str(image), str(ref))
    return image, ref


def read_all(path: Path) -> tuple[bytes, int, list[tuple[int, int, bool]], str]:
    """The disk lukspack reads from path (in-process), bytes it read, its extents, its format."""
    from lukspack.images import open_image

    with open_image(str(path)) as img:
        out = bytearray(img.virtual_size)
        view = memoryview(out)
        for off in range(0, img.virtual_size, 4 * MiB):
            img.read_into(off, view[off : off + 4 * MiB])
        extents = [(e.offset, e.length, e.allocated) for e in img.extents()]
        return bytes(out), img.bytes_read, extents, img.format_name


def check_reader(name: str, image: Path, ref: Path, fmt: str) -> None:
    data, bytes_read, extents, found = read_all(image)
    assert found == fmt
    assert data == ref.read_bytes()
    assert sum(n for _, n, _ in extents) == len(data)
    if FLAVOURS[name][2]:
        holes = sum(n for _, n, alloc in extents if not alloc)
        assert holes >= 4 * MiB  # MiB 0, 3, 7 and 11 of the source are zeros
        assert bytes_read <= len(data) - holes + MiB  # holes cost no I/O


def qemu_compare_encrypted(image: Path, key: Path, raw: Path) -> None:
    """qemu opens the qcow2+LUKS image with the key and finds it identical to raw."""
    p = run([tool("qemu-img"), "compare", "--object", f"secret,id=s0,file={key}", "--image-opts",
             f"driver=qcow2,encrypt.key-secret=s0,file.filename={image}",
             f"driver=raw,file.filename={raw}"], check=False)
    out = p.stdout.decode() + p.stderr.decode()
    assert p.returncode == 0 and "Images are identical" in out, out


def qemu_check_encrypted(image: Path, key: Path) -> str:
    """`qemu-img check` of a qcow2+LUKS image; asserts it is clean and returns its report."""
    p = run([tool("qemu-img"), "check", "--object", f"secret,id=s0,file={key}", "--image-opts",
             f"driver=qcow2,encrypt.key-secret=s0,file.filename={image}"], check=False)
    out = p.stdout.decode() + p.stderr.decode()
    assert p.returncode == 0 and "No errors were found on the image" in out, out
    return out


def encrypt_and_compare(cli: Cli, image: Path, ref: Path, key: Path, out_dir: Path) -> Path:
    """lukspack encrypt image -> qcow2+LUKS; qemu decrypts it to exactly qemu's raw of image."""
    out = out_dir / "encrypted.qcow2"
    cli("encrypt", str(image), str(out), "--key-file", str(key), *FAST)
    qemu_compare_encrypted(out, key, ref)
    return out


def copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst
