#!/usr/bin/env bash
# The main job on an embedded example: build a sample disk as a dynamic VHD, make a key, encrypt
# it in one pass for each IBM Cloud target (VPC: qcow2+LUKS; classic: the vhd-util encrypted
# VHD; IBM's 2018 classic procedure: LUKS1 RAW), and verify each decrypts to the source.
source "$(dirname "$0")/_env.sh"
rm -rf example && mkdir -p example
set -x
lukspack sample example/disk.raw --size 64
lukspack convert example/disk.raw example/disk.vhd --to vhd-dynamic
lukspack keygen example/dek.key
lukspack size example/disk.vhd --type luks1
lukspack encrypt example/disk.vhd example/disk-vpc.qcow2 --key-file example/dek.key
lukspack encrypt example/disk.vhd example/disk-classic.vhd --key-file example/dek.key
lukspack encrypt example/disk.vhd example/disk-encrypted.img --key-file example/dek.key
lukspack info example/disk-vpc.qcow2
lukspack keyhash example/disk-classic.vhd --key-file example/dek.key
for image in disk-vpc.qcow2 disk-classic.vhd disk-encrypted.img; do
  lukspack verify "example/$image" --key-file example/dek.key --source example/disk.vhd
done
