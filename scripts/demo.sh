#!/usr/bin/env bash
# The main job on an embedded example: build a sample disk as a dynamic VHD, make a DEK,
# encrypt it to a LUKS1 RAW image in one pass, and verify it decrypts to the source.
source "$(dirname "$0")/_env.sh"
rm -rf example && mkdir -p example
set -x
lukspack sample example/disk.raw --size 64
lukspack convert example/disk.raw example/disk.vhd --to vhd-dynamic
lukspack keygen example/dek.key
lukspack size example/disk.vhd --type luks1
lukspack encrypt example/disk.vhd example/disk-encrypted.img --key-file example/dek.key
lukspack info example/disk-encrypted.img
lukspack verify example/disk-encrypted.img --key-file example/dek.key --source example/disk.vhd
