"""The boot loader (MBR code, BIOS boot partition, ESP, SYSLINUX on a boot partition) and the
kernel command lines of its configuration."""

from __future__ import annotations

import re

from lukspack.check.btrfs import BtrfsFS
from lukspack.check.filesystems import FileSystem, open_fs, readable
from lukspack.check.guest import Guest
from lukspack.check.inspection import Layout
from lukspack.check.report import Report

MBR_LOADERS = ((b"GRUB ", "GRUB"), (b"Missing operating system.", "SYSLINUX mbr.bin"),
               (b"Multiple active partitions.", "SYSLINUX mbr.bin"), (b"LILO", "LILO"),
               (b"ISOLINUX", "ISOLINUX"))
ROOT_CONFIGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/etc/default/grub",
                "/boot/extlinux/extlinux.conf", "/boot/syslinux/syslinux.cfg", "/etc/kernel/cmdline",
                "/boot/grub2/grubenv", "/boot/grub/grubenv", "/boot/efi/EFI/debian/grub.cfg")
PART_CONFIGS = ("/syslinux.cfg", "/syslinux/syslinux.cfg", "/extlinux.conf", "/extlinux/extlinux.conf",
                "/boot/syslinux/syslinux.cfg", "/grub/grub.cfg", "/boot/grub/grub.cfg")
CMDLINE = re.compile(r"^\s*(?:linux|linux16|linuxefi|APPEND|append|options|kernelopts=|"
                     r"GRUB_CMDLINE_LINUX(?:_DEFAULT)?=)\s*(.*)$")


def _cmdlines_in(text: str, path: str) -> list[tuple[str, str]]:
    out = []
    if path.endswith("/etc/kernel/cmdline"):
        return [(path, text.strip())] if text.strip() else []
    for line in text.splitlines():
        m = CMDLINE.match(line)
        if m:
            out.append((path, m.group(1).strip().strip("\"'")))
    return out


def kernel_cmdlines(guest: Guest, layout: Layout) -> list[tuple[str, str]]:
    """(where, command line) of every boot entry found in the root's and boot partitions'
    boot loader configurations."""
    out: list[tuple[str, str]] = []
    for path in ROOT_CONFIGS:
        text = guest.read_text(path)
        if text:
            out += _cmdlines_in(text, path)
    for entry in guest.listdir("/boot/loader/entries"):
        text = guest.read_text(f"/boot/loader/entries/{entry}")
        if text:
            out += _cmdlines_in(text, f"/boot/loader/entries/{entry}")
    mounted = {id(fs.vol) for fs in guest.mounts.values()}
    for vol in layout.volumes:
        if not readable(vol) or id(vol) in mounted or not vol.partition_number:
            continue
        try:
            g = Guest(open_fs(vol))
        except (OSError, ValueError):
            continue
        for path in PART_CONFIGS:
            text = g.read_text(path)
            if text:
                out += _cmdlines_in(text, f"{vol.device}:{path}")
    return out


def check_boot(guest: Guest, layout: Layout, report: Report, cmdlines: list[tuple[str, str]]) -> None:
    code = layout.table.mbr_boot_code
    loaders = []
    if code and code.strip(b"\0"):
        name = next((n for magic, n in MBR_LOADERS if magic in code), "unknown boot code")
        loaders.append(f"MBR boot code: {name}")
    for p in layout.table.partitions:
        if p.is_bios_boot:
            loaders.append(f"BIOS boot partition #{p.number}")
        if p.is_esp:
            loaders.append(f"EFI system partition #{p.number}")
    if loaders:
        report.add("PASS", "boot", "boot loader", "; ".join(loaders))
    else:
        report.add("FAIL", "boot", "boot loader",
                   "no boot code in the MBR, no BIOS boot partition, no EFI system partition")
    if layout.table.scheme == "mbr" and not any(p.bootable for p in layout.table.partitions) and \
            "SYSLINUX" in " ".join(loaders):
        report.add("WARN", "boot", "active partition",
                   "SYSLINUX's MBR code boots the active partition; none is")
    if not cmdlines:
        report.add("WARN", "boot", "kernel command line", "no boot loader configuration with a kernel "
                   "command line found (grub.cfg, /etc/default/grub, syslinux.cfg, loader entries)")
        return
    serial = [(p, c) for p, c in cmdlines if re.search(r"(^|\s)console=ttyS0", c)]
    if serial:
        report.add("PASS", "boot", "serial console", f"{serial[0][0]}: {serial[0][1]}")
    else:
        where, line = cmdlines[0]
        report.add("WARN", "boot", "serial console",
                   f"{where}: {line!r} has no console=ttyS0 (advised: IBM Cloud's serial console "
                   "shows nothing)")


def check_root_subvolume(root: FileSystem, cmdlines: list[tuple[str, str]], report: Report) -> None:
    """A Btrfs root in a subvolume boots only if the kernel mounts that subvolume: it is the
    default one, or each boot entry's rootflags= names it (subvol= or subvolid=)."""
    if not isinstance(root, BtrfsFS):
        return
    try:
        _check_root_subvolume(root, cmdlines, report)
    except OSError as e:  # the root tree damaged past what finding the root needed
        report.add("WARN", "boot", "root subvolume", f"Btrfs root tree unreadable: {str(e)[:120]}")


def _check_root_subvolume(root: BtrfsFS, cmdlines: list[tuple[str, str]], report: Report) -> None:
    btrfs = root.btrfs
    default = btrfs.default_subvolume()
    if default == root.subvolume:
        report.add("PASS", "boot", "root subvolume", f"the root is the Btrfs default {root.description}: "
                   "the kernel mounts it without rootflags=")
        return
    entries = [(p, c) for p, c in cmdlines if re.search(r"(^|\s)root=", c)]
    if not entries:
        report.add("WARN", "boot", "root subvolume", f"the root is {root.description}, not the default "
                   "subvolume, and no boot entry with root= was found to check its rootflags=subvol=")
        return
    for path, line in entries:
        flags = re.search(r"(?:^|\s)rootflags=(\S+)", line)
        got: int | None = None
        try:
            mounted = btrfs.mounted_subvolume(flags.group(1) if flags else "")
        except OSError as e:
            why = str(e)
        else:
            got = mounted
            why = f"it mounts {btrfs.subvolume_path(mounted) or 'the top level'} (id {mounted})"
        if got != root.subvolume:
            report.add("FAIL", "boot", "root subvolume", f"{path}: {line!r}: the root is {root.description} "
                       f"but {why} (add rootflags=subvol={btrfs.subvolume_path(root.subvolume)})")
            return
    report.add("PASS", "boot", "root subvolume", f"{entries[0][0]}: rootflags= names the root's "
               f"{root.description}" + (f" ({len(entries)} boot entries)" if len(entries) > 1 else ""))
