"""The malformed corpus's source-kind cases (issue 10): compressed files, tars that are not OVAs,
broken OVAs, and a fixed VHD whose footer checksum is wrong. Called by make_malformed.main();
`python -m tests.tools.make_malformed_inputs` adds (or rewrites) only these files and their
MANIFEST rows, leaving the rest of the checked-in corpus as it is."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from tests.images.ova_files import make_ova, ovf
from tests.tools.make_malformed import OUT, Corpus, KiB, MiB, run

PREFIXES = ("compressed-", "tar-", "ova-", "vhd-fixed-footer-")
COMPRESSORS = {"gzip": (["gzip", "-c"], "gunzip"), "xz": (["xz", "-c"], "unxz"),
               "zstd": (["zstd", "-q", "-c"], "unzstd"), "bzip2": (["bzip2", "-c"], "bunzip2"),
               "lz4": (["lz4", "-q", "-c"], "unlz4")}


def input_cases(c: Corpus) -> None:
    w = c.work
    raw = c.raw("in.raw", 1 * MiB, (0, 512 * KiB))
    for name, (cmd, undo) in COMPRESSORS.items():
        data = subprocess.run([*cmd, str(raw)], check=True, capture_output=True).stdout
        c.add(f"compressed-{name}.img", data, "encrypt",
              f"is {name}-compressed; decompress it first ({undo})")
    run("zip", "-q", "-j", w / "in.zip", raw)
    c.add("compressed-zip.img", (w / "in.zip").read_bytes(), "encrypt",
          "is zip-compressed; decompress it first (unzip)")

    vmdk = w / "disk1.vmdk"
    run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw,
        vmdk)
    vmdk2 = w / "disk2.vmdk"
    shutil.copy(vmdk, vmdk2)
    run("tar", "-cf", w / "plain.tar", "-C", w, "disk1.vmdk")
    c.add("tar-not-ova.tar", (w / "plain.tar").read_bytes(), "encrypt",
          "is a tar archive with no .ovf descriptor, not an OVA")

    def ova(name: str, text: str, disks: list[Path]) -> bytearray:
        return bytearray(make_ova(w / name, text, disks).read_bytes())

    one = ova("one.ova", ovf([("disk1.vmdk", MiB)]), [vmdk])
    c.add("ova-two-disks.ova", ova("two.ova", ovf([("disk1.vmdk", MiB), ("disk2.vmdk", MiB)]),
                                   [vmdk, vmdk2]), "encrypt", "OVA holds 2 disks: 0 disk1.vmdk")
    c.add("ova-disk-missing.ova", ova("missing.ova", ovf([("gone.vmdk", MiB)]), [vmdk]), "info",
          "names disk file 'gone.vmdk', which is not in the archive")
    with tarfile.open(w / "one.ova") as t:  # cut in the middle of the disk member
        m = t.getmember("disk1.vmdk")
        cut = m.offset_data + m.size // 2
    c.add("ova-truncated.ova", one[:cut], "encrypt", "the archive is truncated")
    second = 512 + -(-len(ovf([("disk1.vmdk", MiB)]).encode()) // 512) * 512  # vm.mf's header
    damaged = bytearray(one)
    damaged[second + 10] ^= 0x20
    c.add("ova-member-checksum.ova", damaged, "info", "is damaged (its checksum is wrong)")
    c.add("ova-ovf-not-xml.ova", ova("notxml.ova", "<Envelope><References>", [vmdk]), "info",
          "OVF descriptor is not valid XML")
    c.add("ova-compressed-disk.ova",
          ova("gz.ova", ovf([("disk1.vmdk", MiB)], file_attrs=' ovf:compression="gzip"'), [vmdk]),
          "encrypt", "(ovf:compression)")
    c.add("ova-no-disk.ova", ova("nodisk.ova", ovf([]), []), "info", "OVA holds no disk")
    inner = w / "inner.vmdk"  # a tar where the disk should be
    shutil.copy(w / "plain.tar", inner)
    c.add("ova-nested-tar.ova", ova("nested.ova", ovf([("inner.vmdk", MiB)]), [inner]), "encrypt",
          "is a tar archive inside the archive")
    desc = w / "desc.vmdk"
    desc.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                    'createType="monolithicFlat"\nRW 2048 FLAT "desc-flat.vmdk" 0\n')
    c.add("ova-disk-descriptor.ova", ova("desc.ova", ovf([("desc.vmdk", MiB)]), [desc]), "info",
          "is a descriptor naming extent files")

    fixed = w / "fixed.vhd"
    run("qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
        c.raw("small.raw", 64 * KiB, (0,)), fixed)
    d = bytearray(fixed.read_bytes())
    d[len(d) - 512 + 24] ^= 0xFF  # the footer's timestamp: the checksum no longer matches
    c.add("vhd-fixed-footer-checksum.vhd", d, "encrypt", "is a damaged VHD: its footer checksum")
    c.add("vhd-fixed-footer-checksum.img", d, "info", "is a damaged VHD: its footer checksum")


def main() -> None:
    """Rewrite only this module's files and MANIFEST rows."""
    manifest = OUT / "MANIFEST.tsv"
    lines = manifest.read_text().splitlines()
    keep = [ln for ln in lines if ln.startswith("#") or not ln.startswith(PREFIXES) or
            ln.startswith(("vhd-fixed-size", "vhd-fixed-truncated"))]
    for p in OUT.iterdir():
        if p.name.startswith(PREFIXES) and not p.name.startswith(("vhd-fixed-size",
                                                                  "vhd-fixed-truncated")):
            p.unlink()
    with tempfile.TemporaryDirectory() as work:
        c = Corpus(Path(work))
        input_cases(c)
    manifest.write_text("\n".join([*keep, *("\t".join(r) for r in c.rows)]) + "\n")
    print(f"{len(c.rows)} source-kind cases written to {OUT}")


if __name__ == "__main__":
    main()
