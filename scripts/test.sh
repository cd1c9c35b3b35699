#!/usr/bin/env bash
# The whole test suite: installs qemu-utils, cryptsetup-bin, gcc (for the XTS loop), the tools that
# build and boot the Debian test images (debootstrap, xfsprogs, mtools, syslinux, qemu-system-x86)
# and the venv,
# then lint and pytest.
LUKSPACK_NEED_CC=1 source "$(dirname "$0")/_env.sh"
need_debs qemu-img qemu-utils cryptsetup cryptsetup-bin \
  qemu-system-x86_64 qemu-system-x86 debootstrap debootstrap mkfs.xfs xfsprogs sfdisk fdisk \
  mformat mtools syslinux syslinux cpio cpio zstd zstd lz4 lz4 xz xz-utils
# syslinux only recommends syslinux-common, which holds the MBR code the test images use
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || need_debs /nonexistent/mbr.bin syslinux-common
ruff check .
python -m pytest -q "$@"
