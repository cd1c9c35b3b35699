#!/usr/bin/env python3
"""Build the small Debian 12 disk images the check and boot-test tests use, from Debian's packages.

    scripts/build-test-images.py [--cache DIR]     prints the directory holding the images

Images (raw, sparse, MBR, 2 GiB virtual), in CACHE/<hash of this script>/:
  debian12-cloudinit.raw    ext4 root (partition 1) with cloud-init and linux-image-cloud-amd64,
                            an active FAT16 partition 2 with SYSLINUX, the kernel and the
                            initramfs (the MBR code is syslinux's mbr.bin)
  debian12-nocloudinit.raw  the same with cloud-init purged (dpkg --purge)
  debian12-xfs-lvm.raw      partition 1 an LVM2 PV whose VG "vg0" has a linear LV "root"
                            holding an XFS v5 root (the RHEL layout), then the same boot partition
  debian12-btrfs.raw        partition 1 Btrfs, the root in subvolume @rootfs (as Debian's
                            installer names it) and /home in @home, zstd-compressed, mounted by
                            fstab's subvol= and the kernel's rootflags=subvol=; the boot partition

Nothing here needs a loop device, a mount or device-mapper: debootstrap makes the root tree (a
chroot, as root), `mkfs.ext4 -d DIR -E offset=` writes the ext4 root straight into the disk file,
`mkfs.xfs -p PROTOFILE` the XFS one, `mkfs.btrfs --rootdir --subvol --compress` (btrfs-progs
6.11 or later) the Btrfs one, sfdisk writes the partition table into the file, mtools
(`mformat`/`mcopy -i disk@@offset`) fills the FAT and `syslinux --offset` installs its boot
sector there; the LVM2 label, metadata area and text metadata are written by this script (the
on-disk format is LVM2's text format 1, as `pvcreate`/`vgcreate`/`lvcreate` write it).

The debootstrap tree is cached on its own (CACHE/rootfs-<hash of the suite and package list>/),
so changing how images are assembled does not download and unpack the packages again.
CACHE defaults to ${XDG_CACHE_HOME:-~/.cache}/lukspack-test-images.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("LUKSPACK_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("systemd-sysv", "udev", "linux-image-cloud-amd64", "initramfs-tools", "zstd",
            "cloud-init", "python3-cffi-backend", "ifupdown", "isc-dhcp-client", "netbase", "xfsprogs")
MiB = 1 << 20
DISK_SIZE = 2048 * MiB
# partition 1: the root (or the LVM PV), so /boot is on the first partition as classic wants;
# partition 2, active: FAT with SYSLINUX, the kernel and the initramfs
ROOT_START = 1 * MiB
BOOT_SIZE = 128 * MiB
BOOT_START = DISK_SIZE - BOOT_SIZE
ROOT_SIZE = BOOT_START - ROOT_START
# fixed identities, so the tests know what the check must find
EXT4_UUID = "5f3c8a1e-2b4d-4e6f-8a9b-0c1d2e3f4a5b"
XFS_UUID = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
BTRFS_UUID = "3b9c2d4e-5f60-4a71-8b82-9c3d4e5f6a7b"
BTRFS_FSTAB = (f"UUID={BTRFS_UUID} / btrfs defaults,subvol=@rootfs 0 0\n"
               f"UUID={BTRFS_UUID} /home btrfs defaults,subvol=@home 0 0\n")
BOOT_VOLID = "1CE0B007"
MBR_ID = "0x1ce0d15c"
HOSTNAME = "lukspack-test"
# LVM2 (lib/format_text/layout.h, lib/label/label.h)
LVM_LABEL = b"LABELONE"
LVM_TYPE = b"LVM2 001"
LVM_MDA_MAGIC = b" LVM2 x[5A%r0N*>"
LVM_CRC_INIT = 0xF597A6CF
LVM_MDA_OFFSET = 4096
LVM_PE_START = 1 * MiB
LVM_EXTENT = 4 * MiB
PV_UUID = "Lp0pv0Lp0pv0Lp0pv0Lp0pv0Lp0pv0Lp"
VG_UUID = "Lp0vg0Lp0vg0Lp0vg0Lp0vg0Lp0vg0Lp"
LV_UUID = "Lp0lv0Lp0lv0Lp0lv0Lp0lv0Lp0lv0Lp"


def log(msg: str) -> None:
    print(f"[build-test-images {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*cmd: str, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def script_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


# -- the root tree -----------------------------------------------------------------------------

def debootstrap(cache: Path) -> Path:
    key = hashlib.sha256(f"{SUITE} {' '.join(PACKAGES)}".encode()).hexdigest()[:16]
    root = cache / f"rootfs-{key}"
    done = cache / f"rootfs-{key}.complete"
    if done.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    log(f"debootstrap {SUITE} from {MIRROR} into {root}")
    t = time.monotonic()
    run("debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root),
        MIRROR, stdout=subprocess.DEVNULL)
    run("chroot", str(root), "apt-get", "clean")
    done.write_text("ok\n")
    log(f"debootstrap took {time.monotonic() - t:.0f} s")
    return root


def configure(tree: Path, fstab: str, cloud_init: bool) -> None:
    """Settings shared by every image: host name, network, serial console, fstab."""
    (tree / "etc/hostname").write_text(HOSTNAME + "\n")
    (tree / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n")
    (tree / "etc/fstab").write_text(fstab)
    (tree / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n")
    if not cloud_init:  # without cloud-init nothing else configures the NIC
        (tree / "etc/network/interfaces.d/ens3").write_text("allow-hotplug ens3\niface ens3 inet dhcp\n")
    if cloud_init:
        # Debian's debconf list names every datasource; the tests want cloud-init's own default
        (tree / "etc/cloud/cloud.cfg.d/90_dpkg.cfg").unlink(missing_ok=True)
    # the image must never wait for a root password on the console
    (tree / "etc/machine-id").write_text("")


def copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    run("cp", "-a", "--reflink=auto", str(src), str(dst))


def purge_cloud_init(tree: Path) -> None:
    run("chroot", str(tree), "dpkg", "--purge", "cloud-init", stdout=subprocess.DEVNULL,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


# -- the disk ----------------------------------------------------------------------------------

def partition(disk: Path, root_type: str) -> None:
    with open(disk, "wb") as f:
        f.truncate(DISK_SIZE)
    table = (f"label: dos\nlabel-id: {MBR_ID}\nunit: sectors\n"
             f"start={ROOT_START // 512}, size={ROOT_SIZE // 512}, type={root_type}\n"
             f"start={BOOT_START // 512}, size={BOOT_SIZE // 512}, type=6, bootable\n")
    run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk), input=table.encode())
    mbr = Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()
    with open(disk, "r+b") as f:
        f.write(mbr[:440])


def boot_partition(disk: Path, tree: Path, root_arg: str) -> None:
    """FAT16 at BOOT_START with SYSLINUX, the kernel and initramfs of the tree, syslinux.cfg."""
    img = f"{disk}@@{BOOT_START}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    run("mformat", "-i", img, "-T", str(BOOT_SIZE // 512), "-h", "64", "-s", "32", "-H",
        str(BOOT_START // 512), "-N", BOOT_VOLID, "-v", "BOOT", "::", env=env)
    run("syslinux", "--offset", str(BOOT_START), "--install", str(disk))
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise SystemExit(f"no kernel in {tree}/boot")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    cfg = ("SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\n"
           f"LABEL linux\n  KERNEL /vmlinuz-{version}\n  INITRD /initrd.img-{version}\n"
           f"  APPEND root={root_arg} ro console=tty0 console=ttyS0,115200n8\n")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "syslinux.cfg").write_text(cfg)
        run("mcopy", "-i", img, str(Path(tmp) / "syslinux.cfg"), f"{tree}/boot/vmlinuz-{version}",
            f"{tree}/boot/initrd.img-{version}", "::/", env=env)


def ext4_root(disk: Path, tree: Path) -> None:
    run("mkfs.ext4", "-q", "-F", "-d", str(tree), "-U", EXT4_UUID, "-L", "root",
        "-E", f"offset={ROOT_START}", str(disk), f"{ROOT_SIZE // 1024}k")


def xfs_protofile(tree: Path, out: Path) -> None:
    """mkfs.xfs's prototype file (xfsprogs 6.1 takes no directory): one line an entry."""
    lines = ["/dev/null", "0 0"]
    skipped = []

    def mode_field(st: os.stat_result, kind: str) -> str:
        return (kind + ("u" if st.st_mode & 0o4000 else "-") + ("g" if st.st_mode & 0o2000 else "-")
                + f"{st.st_mode & 0o777:03o}")

    def walk(d: Path, depth: int) -> None:
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            name = entry.name
            if any(c.isspace() for c in name) or name == "$":
                skipped.append(entry.path)
                continue
            st = entry.stat(follow_symlinks=False)
            own = f"{st.st_uid} {st.st_gid}"
            ind = " " * depth
            if entry.is_symlink():
                target = os.readlink(entry.path)
                if any(c.isspace() for c in target):
                    skipped.append(entry.path)
                    continue
                lines.append(f"{ind}{name} {mode_field(st, 'l')} {own} {target}")
            elif entry.is_dir(follow_symlinks=False):
                lines.append(f"{ind}{name} {mode_field(st, 'd')} {own}")
                walk(Path(entry.path), depth + 1)
                lines.append(f"{ind}$")
            elif entry.is_file(follow_symlinks=False):
                lines.append(f"{ind}{name} {mode_field(st, '-')} {own} {entry.path}")
            elif os.path.stat.S_ISCHR(st.st_mode) or os.path.stat.S_ISBLK(st.st_mode):
                kind = "c" if os.path.stat.S_ISCHR(st.st_mode) else "b"
                lines.append(f"{ind}{name} {mode_field(st, kind)} {own} "
                             f"{os.major(st.st_rdev)} {os.minor(st.st_rdev)}")
            elif os.path.stat.S_ISFIFO(st.st_mode):
                lines.append(f"{ind}{name} {mode_field(st, 'p')} {own}")
            else:
                skipped.append(entry.path)

    st = tree.stat()
    lines.append(f"{mode_field(st, 'd')} {st.st_uid} {st.st_gid}")
    walk(tree, 1)
    lines.append("$")
    out.write_text("\n".join(lines) + "\n")
    if skipped:
        log(f"protofile: {len(skipped)} entries mkfs.xfs -p cannot express were left out")


def copy_sparse(src: Path, dst: Path, offset: int) -> None:
    """Copy src's data ranges into dst at offset (holes stay holes)."""
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        size = os.fstat(fi.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fi.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fi.fileno(), data, os.SEEK_HOLE)
            while data < hole:
                n = min(hole - data, 8 * MiB)
                fo.seek(offset + data)
                fo.write(os.pread(fi.fileno(), n, data))
                data += n
            pos = hole


def lvm_crc(data: bytes) -> int:
    """LVM2's calc_crc: CRC-32 (zlib's polynomial) from 0xf597a6cf, no final inversion."""
    return zlib.crc32(data, LVM_CRC_INIT ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def dashed(uuid: str) -> str:
    return "-".join((uuid[:6], uuid[6:10], uuid[10:14], uuid[14:18], uuid[18:22], uuid[22:26],
                     uuid[26:]))


def lvm_pv(disk: Path, pv_start: int, pv_size: int, lv_extents: int) -> None:
    """An LVM2 PV at pv_start: label (sector 1), one metadata area at 4 KiB, data from 1 MiB,
    holding VG vg0 with a linear LV root of lv_extents 4 MiB extents from extent 0."""
    pe_count = (pv_size - LVM_PE_START) // LVM_EXTENT
    mda_size = LVM_PE_START - LVM_MDA_OFFSET
    text = f"""vg0 {{
id = "{dashed(VG_UUID)}"
seqno = 1
format = "lvm2"
status = ["RESIZEABLE", "READ", "WRITE"]
flags = []
extent_size = {LVM_EXTENT // 512}
max_lv = 0
max_pv = 0
metadata_copies = 0

physical_volumes {{

pv0 {{
id = "{dashed(PV_UUID)}"
device = "/dev/vda2"

status = ["ALLOCATABLE"]
flags = []
dev_size = {pv_size // 512}
pe_start = {LVM_PE_START // 512}
pe_count = {pe_count}
}}
}}

logical_volumes {{

root {{
id = "{dashed(LV_UUID)}"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
creation_time = 1764547200
creation_host = "{HOSTNAME}"
segment_count = 1

segment1 {{
start_extent = 0
extent_count = {lv_extents}

type = "striped"
stripe_count = 1

stripes = [
"pv0", 0
]
}}
}}
}}

}}
# Generated by lukspack's build-test-images.py

contents = "Text Format Volume Group"
version = 1

description = ""

creation_host = "{HOSTNAME}"
creation_time = 1764547200
""".encode() + b"\0"
    # label sector: label_header then pv_header (uuid, size, data areas, metadata areas, ext)
    pv_header = PV_UUID.encode() + struct.pack("<Q", pv_size)
    pv_header += struct.pack("<QQQQ", LVM_PE_START, 0, 0, 0)
    pv_header += struct.pack("<QQQQ", LVM_MDA_OFFSET, mda_size, 0, 0)
    pv_header += struct.pack("<II", 2, 1) + struct.pack("<QQ", 0, 0)  # extension v2, PV in use
    body = struct.pack("<I", 32) + LVM_TYPE + pv_header
    body = body.ljust(512 - 20, b"\0")
    label = LVM_LABEL + struct.pack("<QI", 1, lvm_crc(body)) + body
    # metadata area header: the text sits right after it (offset 512 within the area)
    raw_locn = struct.pack("<QQII", 512, len(text), lvm_crc(text), 0)
    mda_body = LVM_MDA_MAGIC + struct.pack("<IQQ", 1, LVM_MDA_OFFSET, mda_size) + raw_locn
    mda_body = mda_body.ljust(512 - 4, b"\0")
    mda = struct.pack("<I", lvm_crc(mda_body)) + mda_body
    with open(disk, "r+b") as f:
        f.seek(pv_start + 512)
        f.write(label)
        f.seek(pv_start + LVM_MDA_OFFSET)
        f.write(mda + text)


# -- the images --------------------------------------------------------------------------------

def build_ext4(out: Path, tree: Path) -> None:
    partition(out, "83")
    boot_partition(out, tree, f"UUID={EXT4_UUID}")
    ext4_root(out, tree)


def build_xfs_lvm(out: Path, tree: Path, work: Path) -> None:
    partition(out, "8e")
    boot_partition(out, tree, "/dev/mapper/vg0-root")
    lv_extents = (ROOT_SIZE - LVM_PE_START) // LVM_EXTENT
    lvm_pv(out, ROOT_START, ROOT_SIZE, lv_extents)
    proto, lv = work / "proto.txt", work / "lv.img"
    xfs_protofile(tree, proto)
    with open(lv, "wb") as f:
        f.truncate(lv_extents * LVM_EXTENT)
    run("mkfs.xfs", "-q", "-f", "-m", f"uuid={XFS_UUID},bigtime=1", "-i", "nrext64=1",
        "-L", "root", "-p", str(proto), str(lv))
    copy_sparse(lv, out, ROOT_START + LVM_PE_START)
    lv.unlink()


def build_btrfs(out: Path, tree: Path, work: Path) -> None:
    partition(out, "83")
    boot_partition(out, tree, f"UUID={BTRFS_UUID} rootflags=subvol=@rootfs")
    stage, fs = work / "btrfs-stage", work / "btrfs.img"
    stage.mkdir()
    (stage / "@home").mkdir()
    tree.rename(stage / "@rootfs")  # --rootdir takes the directory whose subdirectories become subvolumes
    try:
        with open(fs, "wb") as f:
            f.truncate(ROOT_SIZE)
        run("mkfs.btrfs", "-q", "-f", "-U", BTRFS_UUID, "-L", "root", "--rootdir", str(stage),
            "--subvol", "rw:@rootfs", "--subvol", "rw:@home", "--compress", "zstd", str(fs))
    finally:
        (stage / "@rootfs").rename(tree)
    copy_sparse(fs, out, ROOT_START)
    fs.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lukspack-test-images"
    ap.add_argument("--cache", type=Path, default=default)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("build-test-images: debootstrap and chroot need root", file=sys.stderr)
        return 1
    out_dir = args.cache / script_hash()
    if (out_dir / "BUILD-OK").exists():
        print(out_dir)
        return 0
    t0 = time.monotonic()
    args.cache.mkdir(parents=True, exist_ok=True)
    # one build at a time per cache (worktrees and CI may share it); the loser finds it built
    lock = open(args.cache / ".lock", "w")  # noqa: SIM115 (held until exit)
    fcntl.flock(lock, fcntl.LOCK_EX)
    if (out_dir / "BUILD-OK").exists():
        print(out_dir)
        return 0
    base = debootstrap(args.cache)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=args.cache))
    try:
        tmp_out = work / "out"
        tmp_out.mkdir()
        t = time.monotonic()
        tree = work / "tree"
        copy_tree(base, tree)
        configure(tree, f"UUID={EXT4_UUID} / ext4 errors=remount-ro 0 1\n", cloud_init=True)
        build_ext4(tmp_out / "debian12-cloudinit.raw", tree)
        configure(tree, "/dev/mapper/vg0-root / xfs defaults 0 1\n", cloud_init=True)
        build_xfs_lvm(tmp_out / "debian12-xfs-lvm.raw", tree, work)
        configure(tree, BTRFS_FSTAB, cloud_init=True)
        build_btrfs(tmp_out / "debian12-btrfs.raw", tree, work)
        purge_cloud_init(tree)
        configure(tree, f"UUID={EXT4_UUID} / ext4 errors=remount-ro 0 1\n", cloud_init=False)
        build_ext4(tmp_out / "debian12-nocloudinit.raw", tree)
        log(f"images assembled in {time.monotonic() - t:.0f} s")
        (tmp_out / "BUILD-OK").write_text(f"built in {time.monotonic() - t0:.0f} s\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp_out.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    prune(args.cache, out_dir.name)
    log(f"done in {time.monotonic() - t0:.0f} s: {out_dir}")
    print(out_dir)
    return 0


def prune(cache: Path, keep: str) -> None:
    """Remove image sets (~1.7 GB each) of other script versions not used for a day."""
    for d in cache.iterdir():
        if d.is_dir() and d.name != keep and len(d.name) == 16 and (d / "BUILD-OK").exists():
            last_read = max(f.stat().st_atime for f in d.iterdir())  # relatime: within a day
            if time.time() - last_read > 2 * 86400:
                shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        print(f"build-test-images: {' '.join(map(str, e.cmd))[:200]} failed with exit code "
              f"{e.returncode}", file=sys.stderr)
        sys.exit(1)
