"""Small guest trees for the check's edge cases, made into real filesystems by mkfs.ext4 -d and
mkfs.xfs -p (the protofile writer of scripts/build-test-images.py), and real initramfs archives
made by cpio and the compressors."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from tests.helpers import ROOT

KVER = "6.1.0-99-test-amd64"
UNITS = ("cloud-init-local.service", "cloud-init.service", "cloud-config.service",
         "cloud-final.service")
CLOUD_CFG = """\
cloud_init_modules:
 - bootcmd
cloud_config_modules:
 - runcmd
cloud_final_modules:
 - scripts-vendor
 - scripts-user
"""
DPKG_STATUS = """\
Package: base-files
Status: install ok installed
Version: 12.4

Package: cloud-init
Status: install ok installed
Priority: optional
Version: 22.4.2-1+deb12u4
Description: initialization system for infrastructure cloud instances
 a continuation line: Version: 0.1

"""
OS_RELEASE = 'PRETTY_NAME="Lukspack Test Linux 42"\nNAME="Lukspack Test"\nID=lukspacktest\nVERSION_ID="42"\n'
COMPRESSORS = {"gzip": ["gzip", "-9c"], "xz": ["xz", "--check=crc32", "-c"], "zstd": ["zstd", "-q", "-c"],
               "lz4": ["lz4", "-l", "-q", "-c"]}


def build_script():
    spec = importlib.util.spec_from_file_location("build_test_images",
                                                  ROOT / "scripts" / "build-test-images.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def write(root: Path, path: str, text: str | bytes) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text.encode() if isinstance(text, str) else text)


def link(root: Path, path: str, target: str) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_symlink() or p.exists():
        p.unlink()
    os.symlink(target, p)


def cpio(src: Path) -> bytes:
    names = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    return subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], input="\n".join(names).encode(),
                          cwd=src, capture_output=True, check=True).stdout


def initramfs(work: Path, compression: str, modules: tuple[str, ...] = ("virtio_blk", "virtio_pci"),
              microcode: bool = False) -> bytes:
    """A real initramfs: optional uncompressed early-microcode cpio, then the compressed main one."""
    main = work / "main"
    shutil.rmtree(main, ignore_errors=True)
    for m in modules:
        sub = "block" if m.endswith("blk") or m.endswith("blkfront") else "virtio"
        write(main, f"usr/lib/modules/{KVER}/kernel/drivers/{sub}/{m}.ko", b"\x7fELF")
    write(main, "init", "#!/bin/sh\n")
    data = subprocess.run(COMPRESSORS[compression], input=cpio(main), capture_output=True,
                          check=True).stdout
    if microcode:
        early = work / "early"
        shutil.rmtree(early, ignore_errors=True)
        write(early, "kernel/x86/microcode/GenuineIntel.bin", b"\0" * 1000)
        data = cpio(early) + data
    return data


def base_tree(root: Path, work: Path) -> Path:
    """A guest that passes the VPC check: Debian-like layout, merged /usr, cloud-init enabled."""
    for d in ("usr/bin", "usr/lib/systemd/system", "usr/sbin", "var/lib/dpkg", "etc/cloud/cloud.cfg.d",
              "etc/systemd/system/cloud-init.target.wants", f"usr/lib/modules/{KVER}", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    link(root, "bin", "usr/bin")
    link(root, "lib", "usr/lib")
    link(root, "sbin", "usr/sbin")
    write(root, "etc/fstab", "LABEL=root / ext4 defaults 0 1\n")
    write(root, "etc/hosts", "127.0.0.1 localhost\n")
    write(root, "usr/lib/os-release", OS_RELEASE)
    link(root, "etc/os-release", "../usr/lib/os-release")
    write(root, "var/lib/dpkg/status", DPKG_STATUS)
    write(root, "etc/cloud/cloud.cfg", CLOUD_CFG)
    for unit in UNITS:
        write(root, f"usr/lib/systemd/system/{unit}", "[Unit]\n")
        link(root, f"etc/systemd/system/cloud-init.target.wants/{unit}", f"/lib/systemd/system/{unit}")
    write(root, "usr/lib/systemd/system-generators/cloud-init-generator", "#!/bin/sh\n")
    write(root, f"boot/vmlinuz-{KVER}", b"MZ kernel")
    write(root, f"boot/config-{KVER}", "CONFIG_VIRTIO_BLK=m\nCONFIG_VIRTIO_PCI=m\n")
    write(root, f"boot/initrd.img-{KVER}", initramfs(work, "zstd"))
    write(root, "boot/grub/grub.cfg",
          f"menuentry 'Test' {{\n\tlinux /boot/vmlinuz-{KVER} root=LABEL=root ro console=ttyS0\n}}\n")
    return root


def make_ext4(tree: Path, out: Path, size_mib: int = 32) -> Path:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(out), f"{size_mib}M"],
                   check=True)
    return out


def make_xfs(tree: Path, out: Path, work: Path) -> Path:
    proto = work / "proto.txt"
    build_script().xfs_protofile(tree, proto)
    with open(out, "wb") as f:
        f.truncate(300 << 20)  # mkfs.xfs's smallest filesystem
    subprocess.run(["mkfs.xfs", "-q", "-f", "-L", "root", "-p", str(proto), str(out)], check=True)
    return out


def gpt_disk(fs_image: Path, out: Path) -> Path:
    """A GPT disk made by sfdisk: partition 1 a (blank) EFI system partition, partition 2 the
    filesystem image."""
    size = fs_image.stat().st_size
    mib = 1 << 20
    start = 2 * mib
    total = start + size + mib
    with open(out, "wb") as f:
        f.truncate(total)
    table = ("label: gpt\nunit: sectors\n"
             f"start=2048, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n"
             f"start={start // 512}, size={size // 512}, "
             "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n")
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(out)],
                   input=table.encode(), check=True)
    build_script().copy_sparse(fs_image, out, start)
    return out


def gpt_disk_parts(fs_images: list[Path], out: Path) -> Path:
    """A GPT disk by sfdisk with each filesystem image in its own partition, in order."""
    mib = 1 << 20
    starts, pos = [], mib
    for img in fs_images:
        starts.append(pos)
        pos += -(-img.stat().st_size // mib) * mib
    with open(out, "wb") as f:
        f.truncate(pos + mib)
    table = "label: gpt\nunit: sectors\n" + "".join(
        f"start={s // 512}, size={img.stat().st_size // 512}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"
        for s, img in zip(starts, fs_images, strict=True))
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(out)],
                   input=table.encode(), check=True)
    for s, img in zip(starts, fs_images, strict=True):
        build_script().copy_sparse(img, out, s)
    return out
