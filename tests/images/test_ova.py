"""OVA sources (issue 10): the disk inside the tar is read in place, as qemu reads it through a
raw-offset json: filename; several disks are refused and listed unless a number picks one; a tar
that is not an OVA is refused; `lukspack encrypt vm.ova` encrypts the disk, not the tar."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from lukspack.errors import FormatError, UnsupportedError
from lukspack.images import detect_format, open_image
from tests.helpers import FAST, Cli, MiB, pattern_disk, qemu_img, qemu_luks_decrypt, run, tool
from tests.images.flavours import vmware_stream
from tests.images.ova_files import make_ova, ovf, qemu_in_place


def sha(path: Path, size: int | None = None) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data if size is None else data[:size]).hexdigest()


def read_all(image_path: Path, disk: int | None = None) -> tuple[str, int]:
    h = hashlib.sha256()
    with open_image(str(image_path), disk=disk) as img:
        buf = bytearray(1 * MiB)
        for off in range(0, img.virtual_size, len(buf)):
            n = min(len(buf), img.virtual_size - off)
            img.read_into(off, memoryview(buf)[:n])
            h.update(buf[:n])
        return h.hexdigest(), img.virtual_size


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    """(raw source, VMware streamOptimized VMDK) for two different disks."""
    d = tmp_path_factory.mktemp("ova")
    out = []
    for i, mib in ((1, 6), (2, 3)):
        raw = pattern_disk(d / f"src{i}.raw", mib, seed=i)
        out.append((raw, vmware_stream(raw, d / f"vm-disk{i}.vmdk")))
    return out


@pytest.mark.parametrize("tar_format", ["gnu", "posix", "ustar", "v7"])
def test_the_disk_is_read_in_place(disks: list[tuple[Path, Path]], tmp_path: Path,
                                   tar_format: str) -> None:
    raw, vmdk = disks[0]
    ova = make_ova(tmp_path / "vm.ova", ovf([(vmdk.name, raw.stat().st_size)]), [vmdk],
                   tar_format=tar_format)
    qemu_raw = tmp_path / "qemu.raw"
    qemu_img("convert", "-O", "raw", qemu_in_place(ova, vmdk.name), str(qemu_raw))
    digest, size = read_all(ova)
    assert size == raw.stat().st_size
    assert digest == sha(qemu_raw) == sha(raw)
    with open(ova, "rb") as f:
        assert detect_format(str(ova), f.fileno()) == "ova"
    with open_image(str(ova)) as img:
        info = img.info()
        assert img.bytes_read < vmdk.stat().st_size + 4096  # read inside the member only
    assert info["format"] == "vmdk" and info["vmdk"]["create_type"] == "streamOptimized"
    assert info["ova"]["disk"] == vmdk.name and info["ova"]["disks"] == [vmdk.name]
    with open_image(str(ova), fmt="ova", disk=0) as img:
        assert img.virtual_size == size


def test_encrypt_an_ova_encrypts_its_disk(disks: list[tuple[Path, Path]], tmp_path: Path,
                                          keyfile: Path) -> None:
    """The issue's case: the output decrypts (by qemu's LUKS driver) to the disk, not the tar."""
    raw, vmdk = disks[0]
    ova = make_ova(tmp_path / "vm.ova", ovf([(vmdk.name, raw.stat().st_size)]), [vmdk])
    Cli(tmp_path)("encrypt", str(ova), "out.img", "--key-file", str(keyfile), *FAST)
    plain = qemu_luks_decrypt(tmp_path / "out.img", keyfile, tmp_path / "plain.raw")
    assert sha(plain, raw.stat().st_size) == sha(raw)


def test_several_disks_are_listed_unless_one_is_picked(disks: list[tuple[Path, Path]],
                                                       tmp_path: Path) -> None:
    (raw1, vmdk1), (raw2, vmdk2) = disks
    ova = make_ova(tmp_path / "two.ova", ovf([(vmdk1.name, 0), (vmdk2.name, 0)]), [vmdk1, vmdk2])
    with pytest.raises(UnsupportedError) as e:
        open_image(str(ova))
    msg = str(e.value)
    assert "holds 2 disks" in msg and f"0 {vmdk1.name}" in msg and f"1 {vmdk2.name}" in msg
    assert "--disk N" in msg and "\n" not in msg
    assert read_all(ova, disk=0)[0] == sha(raw1)
    assert read_all(ova, disk=1)[0] == sha(raw2)
    with pytest.raises(UnsupportedError, match="has no disk 2"):
        open_image(str(ova), disk=2)
    # the OVF's DiskSection order, not the tar's, indexes the disks
    # the CLI's --disk (0 is the first) reaches the reader
    key = tmp_path / "k"
    key.write_bytes(b"bWFsZm9ybWVkLWNvcnB1cy1rZXktMzItYnl0ZXMhISE=")
    key.chmod(0o600)
    cli = Cli(tmp_path)
    err = cli.fails("encrypt", str(ova), "none.img", "--key-file", str(key), *FAST)
    assert "holds 2 disks" in err and not (tmp_path / "none.img").exists()
    cli("encrypt", str(ova), "two.img", "--disk", "1", "--key-file", str(key), *FAST)
    plain = qemu_luks_decrypt(tmp_path / "two.img", key, tmp_path / "two.raw")
    assert sha(plain, raw2.stat().st_size) == sha(raw2)
    swapped = make_ova(tmp_path / "swapped.ova", ovf([(vmdk1.name, 0), (vmdk2.name, 0)],
                                                     order=[1, 0]), [vmdk1, vmdk2])
    assert read_all(swapped, disk=0)[0] == sha(raw2)


def test_a_disk_number_is_only_for_an_ova(disks: list[tuple[Path, Path]]) -> None:
    raw, _ = disks[0]
    with pytest.raises(UnsupportedError, match="applies only to OVA archives"):
        open_image(str(raw), disk=0)


def test_a_tar_that_is_not_an_ova_is_refused(disks: list[tuple[Path, Path]], tmp_path: Path,
                                             keyfile: Path) -> None:
    raw, vmdk = disks[0]
    shutil.copy(vmdk, tmp_path / "disk.vmdk")
    run([tool("tar"), "-cf", str(tmp_path / "disk.tar"), "-C", str(tmp_path), "disk.vmdk"])
    err = Cli(tmp_path).fails("encrypt", "disk.tar", "out.img", "--key-file", str(keyfile), *FAST)
    assert "disk.tar: is a tar archive with no .ovf descriptor, not an OVA" in err
    assert not (tmp_path / "out.img").exists()


def test_ova_refusals(disks: list[tuple[Path, Path]], tmp_path: Path) -> None:
    raw, vmdk = disks[0]
    ova = make_ova(tmp_path / "missing.ova", ovf([("other.vmdk", 0)]), [vmdk])
    with pytest.raises(FormatError, match="names disk file 'other.vmdk', which is not in"):
        open_image(str(ova))
    ova = make_ova(tmp_path / "gz.ova", ovf([(vmdk.name, 0)], file_attrs=' ovf:compression="gzip"'),
                   [vmdk])
    with pytest.raises(UnsupportedError, match=r"stored gzip-compressed \(ovf:compression\)"):
        open_image(str(ova))
    broken = tmp_path / "broken.ova"
    data = bytearray((tmp_path / "missing.ova").read_bytes())
    broken.write_bytes(bytes(data[: len(data) // 2]))  # cut inside the disk member
    with pytest.raises(FormatError, match="the archive is truncated"):
        open_image(str(broken))
    # a member that is itself gzip-compressed (without ovf:compression saying so)
    gz = tmp_path / "disk-gz.vmdk"
    run(["sh", "-c", f"gzip -c {vmdk} > {gz}"])
    ova = make_ova(tmp_path / "gzmember.ova", ovf([(gz.name, 0)]), [gz])
    with pytest.raises(UnsupportedError, match=r"disk disk-gz.vmdk: is gzip-compressed"):
        open_image(str(ova))
