#!/usr/bin/env bash
# The main job on an embedded example: build a sample disk as a dynamic VHD, make a key for each
# IBM Cloud target, encrypt it in one pass for each (VPC: qcow2+LUKS; classic: the vhd-util
# encrypted VHD, AES-256-XTS; IBM's 2018 classic procedure: LUKS1 RAW), and verify each decrypts
# to the source. It installs only what lukspack needs to run (scripts/test.sh adds the test tools).
source "$(dirname "$0")/_env.sh"
rm -rf example && mkdir -p example
set -x
lukspack sample example/disk.raw --size 64
lukspack convert example/disk.raw example/disk.vhd --to vhd-dynamic
lukspack keygen example/vpc.key --for vpc          # a 44-character passphrase (qcow2+LUKS)
lukspack keygen example/classic.key --for classic  # 64 random bytes, base64: AES-256-XTS
lukspack keygen example/dek.key                    # a 32-byte DEK: the LUKS RAW passphrase
lukspack size example/disk.vhd --type luks1
lukspack encrypt example/disk.vhd example/disk-vpc.qcow2 --key-file example/vpc.key
lukspack encrypt example/disk.vhd example/disk-classic.vhd --key-file example/classic.key
lukspack encrypt example/disk.vhd example/disk-encrypted.img --key-file example/dek.key
lukspack info example/disk-vpc.qcow2
lukspack keyhash example/disk-classic.vhd --key-file example/classic.key
lukspack verify example/disk-vpc.qcow2 --key-file example/vpc.key --key-only
lukspack verify example/disk-vpc.qcow2 --key-file example/vpc.key --source example/disk.vhd
lukspack verify example/disk-classic.vhd --key-file example/classic.key --source example/disk.vhd
lukspack verify example/disk-encrypted.img --key-file example/dek.key --source example/disk.vhd
