"""What a source file is (issue 10): compressed files are refused naming the compression, a RAW
file with no partition table or file system warns, a damaged fixed VHD is refused as a damaged VHD
(as qemu-img -f vpc refuses it) unless the format is given as raw, FIFOs, sockets and character
devices are refused before anything opens them, and one sniffer names every format."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lukspack.errors import FormatError, LukspackError, UnsupportedError
from lukspack.images import detect_format, open_image, sniff_file
from tests.helpers import (
    FAST,
    Cli,
    MiB,
    cli_env,
    cryptsetup,
    pattern_disk,
    qemu_img,
    run,
    special_file,
    tool,
)

COMPRESSORS = {  # name in the message: (command writing stdout, the decompressing command)
    "gzip": (["gzip", "-c"], "gunzip"),
    "xz": (["xz", "-c"], "unxz"),
    "zstd": (["zstd", "-q", "-c"], "unzstd"),
    "bzip2": (["bzip2", "-c"], "bunzip2"),
    "lz4": (["lz4", "-q", "-c"], "unlz4"),
}


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pattern_disk(tmp_path_factory.mktemp("kinds") / "disk.raw", 2)


@pytest.mark.parametrize("name", sorted(COMPRESSORS) + ["zip"])
def test_compressed_files_are_refused_naming_the_compression(disk: Path, tmp_path: Path,
                                                             name: str, keyfile: Path) -> None:
    packed = tmp_path / f"disk.raw.{name}"
    if name == "zip":
        run([tool("zip"), "-q", "-j", str(packed), str(disk)])
        undo = "unzip"
    else:
        cmd, undo = COMPRESSORS[name]
        packed.write_bytes(run([tool(cmd[0]), *cmd[1:], str(disk)]).stdout)
    err = Cli(tmp_path).fails("encrypt", str(packed), "out.img", "--key-file", str(keyfile),
                              *FAST)
    assert f"{packed}: is {name}-compressed; decompress it first ({undo})" in err
    assert not (tmp_path / "out.img").exists()
    with open_image(str(packed), fmt="raw") as img:  # the user says it is raw: it is
        assert img.virtual_size == packed.stat().st_size


def test_a_raw_file_with_no_partition_table_warns(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not a disk\n" * 100)
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as f:
        f.truncate(8 * MiB)
    for p in (text, blank):
        with open_image(str(p)) as img:
            assert img.format_name == "raw"
            assert len(img.warnings) == 1 and str(p) in img.warnings[0]
            assert "no partition table" in img.warnings[0] and "\n" not in img.warnings[0]


def _blank(path: Path, size: int = 64 * MiB) -> Path:
    with open(path, "wb") as f:  # data, but nothing a partition table or file system starts with
        f.truncate(size)
        f.seek(MiB)
        f.write(b"x" * MiB)
    return path


@pytest.mark.parametrize("command", ["encrypt", "convert"])
def test_the_no_partition_table_warning_comes_before_the_work(tmp_path: Path, command: str,
                                                              keyfile: Path) -> None:
    """The library issues the note once the checks passed and before the first progress
    event; the summary still lists it (once)."""
    import warnings

    from lukspack.convert import convert
    from lukspack.encrypt import encrypt
    from lukspack.luks.format import KdfOptions
    from lukspack.options import EncryptOptions

    src = _blank(tmp_path / "blank.img")
    events: list[tuple[str, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, *a, **k: events.append(("warning", str(m)))
        progress = lambda phase, done, total: events.append((phase, f"{done}/{total}"))  # noqa: E731
        if command == "encrypt":
            opts = EncryptOptions(kdf=KdfOptions("sha256", 2000, 1000))
            s = encrypt(str(src), str(tmp_path / "out.img"), bytearray(keyfile.read_bytes()), opts,
                        progress)
        else:
            s = convert(str(src), str(tmp_path / "out.raw"), "raw", progress=progress)
    kinds = [k for k, _ in events]
    assert kinds.count("warning") == 1 and kinds[0] == "warning", events
    assert "no partition table" in events[0][1] and len(kinds) > 1
    assert s["warnings"] == [events[0][1]]


def test_the_cli_says_the_warning_first_and_once(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    src = _blank(tmp_path / "blank.img")
    err = cli("encrypt", src, tmp_path / "out.img", "--key-file", keyfile, *FAST,
              "-p").stderr.decode().splitlines()
    notes = [i for i, line in enumerate(err) if "no partition table" in line]
    progress = [i for i, line in enumerate(err) if line.lstrip().startswith("encrypt ")]
    assert len(notes) == 1 and progress and notes[0] < progress[0], err
    assert err[notes[0]].startswith("lukspack: warning: ")
    err = cli("convert", src, tmp_path / "out.raw", "--to", "raw", "--json").stderr.decode()
    assert err.count("no partition table") == 1, err


def _mbr(p: Path) -> None:
    run([tool("sfdisk"), "-q", str(p)], input=b"label: dos\n,,83\n")


def _gpt(p: Path) -> None:
    run([tool("sfdisk"), "-q", str(p)], input=b"label: gpt\n,,L\n")


MAKERS = {
    "mbr": _mbr,
    "gpt": _gpt,
    "ext4": lambda p: run([tool("mkfs.ext4"), "-q", "-F", str(p)]),
    "xfs": lambda p: run([tool("mkfs.xfs"), "-q", "-f", str(p)]),
    "swap": lambda p: run([tool("mkswap"), str(p)]),
    "vfat": lambda p: run([tool("mkfs.vfat"), str(p)]),
}


@pytest.mark.parametrize("kind", sorted(MAKERS) + ["iso9660", "btrfs-magic", "lvm2-label"])
def test_a_disk_with_a_partition_table_or_file_system_does_not_warn(tmp_path: Path,
                                                                    kind: str) -> None:
    p = tmp_path / f"{kind}.img"
    with open(p, "wb") as f:
        f.truncate(320 * MiB)
    if kind == "iso9660":
        (tmp_path / "dir").mkdir()
        (tmp_path / "dir" / "file").write_text("x")
        p.unlink()
        run([tool("xorriso"), "-as", "mkisofs", "-quiet", "-o", str(p), str(tmp_path / "dir")])
    elif kind == "btrfs-magic":  # mkfs.btrfs is not installed: the superblock magic at 64 KiB
        with open(p, "r+b") as f:
            f.seek(65536 + 64)
            f.write(b"_BHRfS_M")
    elif kind == "lvm2-label":  # pvcreate needs a block device: the label in sector 1
        with open(p, "r+b") as f:
            f.seek(512)
            f.write(b"LABELONE")
    else:
        MAKERS[kind](p)
    with open_image(str(p)) as img:
        assert img.format_name == "raw" and img.warnings == [], img.warnings


@pytest.fixture
def damaged_fixed_vhd(disk: Path, tmp_path: Path) -> Path:
    vhd = tmp_path / "disk.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
             str(disk), str(vhd))
    with open(vhd, "r+b") as f:
        f.seek(vhd.stat().st_size - 512 + 24)  # the footer's timestamp: the checksum is now wrong
        f.write(b"\xde\xad")
    return vhd


@pytest.mark.parametrize("name", ["disk.vhd", "disk.img"])
def test_a_damaged_fixed_vhd_is_refused(damaged_fixed_vhd: Path, tmp_path: Path, name: str,
                                        keyfile: Path) -> None:
    vhd = damaged_fixed_vhd.rename(tmp_path / name) if name != damaged_fixed_vhd.name \
        else damaged_fixed_vhd
    with pytest.raises(FormatError) as e:
        open_image(str(vhd))
    msg = str(e.value)
    footer = vhd.read_bytes()[-512:]
    stored = int.from_bytes(footer[64:68], "big")
    computed = ~(sum(footer) - sum(footer[64:68])) & 0xFFFFFFFF
    assert stored != computed
    assert f"{vhd}: is a damaged VHD: its footer checksum 0x{stored:08x} is wrong (computed " \
           f"0x{computed:08x})" in msg and "--input-format raw" in msg
    # qemu-img refuses it as vpc too
    p = run([tool("qemu-img"), "info", "-f", "vpc", str(vhd)], check=False)
    assert p.returncode != 0 and "checksum" in p.stderr.decode().lower(), p.stderr
    err = Cli(tmp_path).fails("encrypt", str(vhd), "out.img", "--key-file", str(keyfile), *FAST)
    assert "is a damaged VHD" in err and not (tmp_path / "out.img").exists()
    with open_image(str(vhd), fmt="raw") as img:  # unless the user says it is raw
        assert img.format_name == "raw" and img.virtual_size == vhd.stat().st_size


@pytest.mark.parametrize("kind,what", [("fifo", "a FIFO (named pipe)"), ("socket", "a socket"),
                                       ("chardev", "a character device")])
def test_special_files_are_refused_without_blocking(tmp_path: Path, kind: str, what: str,
                                                    keyfile: Path) -> None:
    p = special_file(tmp_path, kind)
    with pytest.raises(LukspackError, match=re.escape(f"is {what}, not a disk image")):
        open_image(str(p))
    link = tmp_path / "link.img"
    link.symlink_to(p)
    with pytest.raises(LukspackError, match=re.escape(f"is {what}")):
        open_image(str(link))
    # the CLI: one line, exit 1, within seconds (today's open() of a FIFO blocks forever)
    for args in (["encrypt", str(p), str(tmp_path / "out.img"), "--key-file", str(keyfile),
                  *FAST], ["info", str(p)], ["verify", str(p), "--key-file", str(keyfile)]):
        done = subprocess.run([sys.executable, "-m", "lukspack", *args], capture_output=True,
                              env=cli_env(), timeout=60)
        err = done.stderr.decode()
        assert done.returncode == 1 and err.count("\n") == 1 and f"is {what}" in err, (args, err)
    assert not (tmp_path / "out.img").exists()


def test_one_sniffer_names_every_format(disk: Path, tmp_path: Path) -> None:
    made = {}
    for fmt, ext, opts in (("qcow2", "qcow2", []), ("vmdk", "vmdk", []), ("vhdx", "vhdx", []),
                           ("vpc", "vhd", []), ("vpc", "fixed.vhd", ["-o", "subformat=fixed"])):
        out = tmp_path / f"disk.{ext}"
        qemu_img("convert", "-f", "raw", "-O", fmt, *opts, str(disk), str(out))
        made[out] = "vhd" if fmt == "vpc" else fmt
    fixed_raw = tmp_path / "fixed-vhd.raw"  # a fixed VHD named raw is raw (the name breaks ties)
    fixed_raw.write_bytes((tmp_path / "disk.fixed.vhd").read_bytes())
    made[fixed_raw] = "raw"
    made[disk] = "raw"
    enc = tmp_path / "enc.qcow2"
    key = tmp_path / "k"
    key.write_bytes(b"sniff-passphrase")
    qemu_img("create", "-f", "qcow2", "--object", f"secret,id=s0,file={key}", "-o",
             "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", str(enc), "4M")
    for ver in ("luks1", "luks2"):
        p = tmp_path / f"{ver}.img"
        with open(p, "wb") as f:
            f.truncate(20 * MiB)
        cryptsetup("luksFormat", "--type", ver, "--batch-mode", "--key-file", str(key),
                   "--pbkdf-force-iterations", "1000", *(["--pbkdf", "pbkdf2"] if ver == "luks2"
                                                         else []), str(p))
        made[p] = "luks"
    lost = tmp_path / "lost-primary.img"
    data = bytearray((tmp_path / "luks2.img").read_bytes())
    data[:4096] = bytes(4096)
    lost.write_bytes(bytes(data))
    made[lost] = "luks"
    for path, want in made.items():
        with open(path, "rb") as f:
            assert detect_format(str(path), f.fileno()) == want, path
    with open(enc, "rb") as f:
        s = sniff_file(str(enc), f.fileno())
        assert s.format == "qcow2" and s.qcow2_crypt_method == 2 and s.encrypted
    with open(tmp_path / "disk.qcow2", "rb") as f:
        assert sniff_file("disk.qcow2", f.fileno()).qcow2_crypt_method == 0
    with open(lost, "rb") as f:
        assert sniff_file(str(lost), f.fileno()).luks_primary_lost
    with pytest.raises(UnsupportedError, match="already a LUKS container"):
        open_image(str(lost))
