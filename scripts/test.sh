#!/usr/bin/env bash
# The whole test suite: installs qemu-utils, cryptsetup-bin, gcc (for the XTS loop) and the venv,
# then lint and pytest.
LUKSPACK_NEED_CC=1 source "$(dirname "$0")/_env.sh"
need_debs qemu-img qemu-utils cryptsetup cryptsetup-bin
# source kinds (tests/images/test_input_kinds.py, the corpus generator): compressors, file systems
need_debs zstd zstd xz xz-utils bzip2 bzip2 zip zip lz4 lz4 xorriso xorriso sfdisk fdisk \
  mkfs.ext4 e2fsprogs mkfs.xfs xfsprogs mkfs.vfat dosfstools mkswap util-linux losetup mount
ruff check .
python -m pytest -q "$@"
