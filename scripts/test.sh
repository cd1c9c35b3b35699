#!/usr/bin/env bash
# The whole test suite: installs qemu-utils, cryptsetup-bin, gcc (for the XTS loop), the tools that
# build and boot the Debian test images (debootstrap, xfsprogs, mtools, syslinux, qemu-system-x86)
# and the venv,
# then lint and pytest.
LUKSPACK_NEED_CC=1 LUKSPACK_EXTRAS=test source "$(dirname "$0")/_env.sh"
need_debs qemu-img qemu-utils cryptsetup cryptsetup-bin
# source kinds (tests/images/test_input_kinds.py, the corpus generator) and tests/check (its tests
# fail, never skip, without them: tests/helpers.py require): compressors, file systems
need_debs gzip gzip zstd zstd xz xz-utils bzip2 bzip2 zip zip lz4 lz4 xorriso xorriso sfdisk fdisk \
  mkfs.ext4 e2fsprogs mkfs.xfs xfsprogs mkfs.vfat dosfstools mkswap util-linux losetup mount
# check and boot-test (tests/check, tests/boot): build and boot the Debian test images; rpm and
# rpmbuild make the real rpm database of tests/check/test_rpmdb.py, db5.3_load its Berkeley DB form
need_debs qemu-system-x86_64 qemu-system-x86 debootstrap debootstrap mformat mtools rpmbuild rpm \
  syslinux syslinux cpio cpio db5.3_load db5.3-util
# Btrfs test filesystems and the Debian Btrfs image (tests/check/test_btrfs_*.py): mkfs.btrfs
# --rootdir --subvol --compress, from bookworm-backports on Debian 12
need_btrfs_progs
# syslinux only recommends syslinux-common, which holds the MBR code the test images use
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || need_debs /nonexistent/mbr.bin syslinux-common
ruff check .
mypy
python -m pytest -q "$@"
