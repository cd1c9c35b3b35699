"""Find the guest's block devices, its root filesystem (as libguestfs's inspection does) and
mount what its /etc/fstab names."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Protocol

from lukspack.check.blockio import DiskFile
from lukspack.check.btrfs import BtrfsFS
from lukspack.check.filesystems import FileSystem, Volume, btrfs_of, open_fs, probe, readable
from lukspack.check.guest import Guest
from lukspack.check.partitions import PartitionTable, read_table
from lukspack.check.report import Report


class LogicalVolume(Protocol):
    """What LvFile reads of a pyvslvm logical volume (libvslvm has no type stubs)."""

    size: int

    def read_buffer_at_offset(self, size: int, offset: int) -> bytes: ...


class LvFile:
    """A logical volume as a file object for the filesystem readers (reads go through the PV's
    DiskFile, which counts them)."""

    def __init__(self, lv: LogicalVolume) -> None:
        self.lv = lv
        self.size = int(lv.size)
        self.pos = 0

    def pread(self, offset: int, size: int) -> bytes:
        if offset >= self.size or size <= 0:
            return b""
        return bytes(self.lv.read_buffer_at_offset(min(size, self.size - offset), offset))

    def read(self, size: int = -1) -> bytes:
        data = self.pread(self.pos, self.size - self.pos if size is None or size < 0 else size)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset + (self.pos if whence == 1 else self.size if whence == 2 else 0)
        return self.pos

    def tell(self) -> int:
        return self.pos

    get_offset = tell

    def get_size(self) -> int:
        return self.size


@dataclass
class Layout:
    table: PartitionTable
    volumes: list[Volume] = field(default_factory=list)
    lvm: list[str] = field(default_factory=list)  # "vg/lv" names
    lvm_pv_partitions: list[int] = field(default_factory=list)
    handles: list[object] = field(default_factory=list)  # keep libyal objects alive


def discover(disk: DiskFile, report: Report, device: str = "/dev/vda") -> Layout:
    table = read_table(disk)
    for status, what, ev in table.notes:
        report.add(status, "layout", what, ev)
    layout = Layout(table)
    if not table.partitions:
        layout.volumes.append(Volume(device, disk))
    for p in table.partitions:
        layout.volumes.append(Volume(f"{device}{p.number}", disk.slice(p.start, p.size),
                                     partuuid=p.uuid, partition_number=p.number))
    for vol in list(layout.volumes):
        probe(vol)
        if vol.kind == "lvm2":
            _open_lvm(vol, layout, report)
    for vol in layout.volumes:
        if vol.partition_number or vol.device.startswith("/dev/mapper/"):
            desc = vol.detail or vol.kind
            ev = f"{vol.device}: {desc}" + (f" UUID={vol.uuid}" if vol.uuid else "") + (
                f" LABEL={vol.label}" if vol.label else "")
            report.add("INFO", "layout", "volume", ev)
    return layout


def _open_lvm(pv: Volume, layout: Layout, report: Report) -> None:
    try:
        import pyvslvm
    except ImportError:
        report.add("WARN", "layout", "LVM", f"{pv.device}: LVM2 PV, but libvslvm-python is missing")
        return
    handle = pyvslvm.handle()
    try:
        handle.open_file_object(pv.file)
        handle.open_physical_volume_files_as_file_objects([pv.file])
        vg = handle.get_volume_group()
    except OSError as e:
        report.add("FAIL", "layout", "LVM", f"{pv.device}: LVM2 metadata unreadable: {str(e)[:160]}")
        return
    layout.handles.append(handle)
    layout.lvm_pv_partitions.append(pv.partition_number)
    for i in range(vg.number_of_logical_volumes):
        lv = vg.get_logical_volume(i)
        segs = lv.number_of_segments
        name = f"{vg.name}/{lv.name}"
        layout.lvm.append(name)
        mapper = f"/dev/mapper/{vg.name.replace('-', '--')}-{lv.name.replace('-', '--')}"
        vol = Volume(mapper, LvFile(lv))
        probe(vol)
        layout.handles.append(lv)
        layout.volumes.append(vol)
        report.add("PASS" if segs == 1 else "WARN", "layout", "LVM",
                   f"LV {name} on {pv.device}: {lv.size} bytes, {segs} segment(s), holds "
                   f"{vol.detail or vol.kind}")


def looks_like_root(fs: FileSystem) -> bool:
    """libguestfs's rule (inspect-fs.c): /etc a directory, /bin a directory or a link to usr/bin,
    and /etc/fstab or /etc/hosts there."""
    g = Guest(fs)
    if not g.is_dir("/etc"):
        return False
    bin_node = g.node("/bin", follow=False)
    if bin_node is None:
        return False
    if bin_node.is_link():
        if posixpath.normpath(bin_node.link_target().lstrip("/")) != "usr/bin":
            return False
    elif not bin_node.is_dir():
        return False
    return g.exists("/etc/fstab") or g.exists("/etc/hosts")


def _candidates(vol: Volume, report: Report) -> list[FileSystem]:
    """The filesystems of vol that could be a root: the filesystem itself, or for Btrfs its default
    subvolume and then every other subvolume (as libguestfs inspects each one)."""
    try:
        first = open_fs(vol)
    except OSError as e:
        report.add("WARN", "root", "filesystem", f"{vol.device}: {vol.kind} unreadable: {str(e)[:120]}")
        return []
    if not isinstance(first, BtrfsFS):
        return [first]
    out: list[FileSystem] = [first]
    try:
        subs = btrfs_of(vol).subvolumes()
        for sub in subs:
            if sub.id != first.subvolume:
                out.append(open_fs(vol, sub.id))
    except OSError as e:
        report.add("WARN", "root", "Btrfs subvolumes", f"{vol.device}: {str(e)[:120]}")
        return out
    listed = ", ".join(f"{s.path} (id {s.id}{', read-only' if s.readonly else ''})" for s in subs)
    report.add("INFO", "layout", "Btrfs", f"{vol.device}: default {first.description}; "
               f"subvolumes: {listed or 'none'}")
    return out


def _describe(vol: Volume, fs: FileSystem) -> str:
    sub = f", {fs.description}" if isinstance(fs, BtrfsFS) else ""
    return f"{vol.device} ({vol.detail or vol.kind}, UUID={vol.uuid}{sub})"


def find_root(layout: Layout, report: Report) -> tuple[Volume, FileSystem] | None:
    found: list[tuple[Volume, FileSystem]] = []
    for vol in layout.volumes:
        if not readable(vol) or vol.kind == "vfat":
            continue
        roots = [fs for fs in _candidates(vol, report) if looks_like_root(fs)]
        if roots:
            found.append((vol, roots[0]))  # Btrfs: the default subvolume if it is one, else the first
        if len(roots) > 1:
            report.add("INFO", "root", "root filesystem", f"{vol.device}: also root-like (snapshots?): "
                       + ", ".join(fs.description for fs in roots[1:]))
    if not found:
        report.add("FAIL", "root", "root filesystem",
                   "no filesystem has /etc, /bin (or bin -> usr/bin) and /etc/fstab or /etc/hosts")
        return None
    vol, fs = found[0]
    report.add("PASS", "root", "root filesystem",
               f"{_describe(vol, fs)}: /etc, /bin and /etc/fstab or /etc/hosts present")
    if len(found) > 1:
        report.add("WARN", "root", "root filesystem",
                   "more than one operating system: " + ", ".join(v.device for v, _ in found))
    return vol, fs


def parse_fstab(text: str) -> list[tuple[str, str, str, str]]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else "defaults"))
    return out


def resolve_spec(spec: str, layout: Layout) -> tuple[Volume | None, str]:
    """The volume an fstab source names, and a note on how it names it."""
    def match(attr: str, value: str) -> Volume | None:
        for v in layout.volumes:
            named = v.names()[attr]
            if named and named.lower() == value.lower():
                return v
        return None

    for prefix, attr in (("UUID=", "uuid"), ("LABEL=", "label"), ("PARTUUID=", "partuuid")):
        if spec.startswith(prefix):
            return match(attr, spec[len(prefix):].strip('"')), ""
    for prefix, attr in (("/dev/disk/by-uuid/", "uuid"), ("/dev/disk/by-label/", "label"),
                         ("/dev/disk/by-partuuid/", "partuuid")):
        if spec.startswith(prefix):
            return match(attr, spec[len(prefix):]), ""
    if spec.startswith("/dev/mapper/"):
        return match("device", spec), ""
    parts = spec.split("/")
    if len(parts) == 4 and parts[1] == "dev" and spec.count("/") == 3 and parts[2] in {
            n.split("/")[0] for n in layout.lvm}:
        return match("device", f"/dev/mapper/{parts[2]}-{parts[3]}"), ""
    for disk in ("vda", "xvda", "sda", "hda"):
        if spec.startswith(f"/dev/{disk}") and spec[len(disk) + 5:].isdigit():
            n = int(spec[len(disk) + 5:])
            note = "" if disk in ("vda", "xvda") else (
                f"{spec}: the disk is vda under KVM (VPC) and xvda under Xen (classic)")
            return next((v for v in layout.volumes if v.partition_number == n), None), note
    return None, ""


def mount_fstab(guest: Guest, root_vol: Volume, layout: Layout, report: Report
                ) -> list[tuple[str, str, str, str]]:
    text = guest.read_text("/etc/fstab")
    if text is None:
        report.add("WARN", "root", "/etc/fstab", "/etc/fstab missing: only the root filesystem is read")
        return []
    entries = parse_fstab(text)
    for spec, where, fstype, opts in entries:
        if fstype in ("swap", "proc", "sysfs", "tmpfs", "devpts", "none") or where == "none":
            continue
        vol, note = resolve_spec(spec, layout)
        optional = "nofail" in opts.split(",") or "noauto" in opts.split(",")
        if vol is None:
            report.add("WARN" if optional else "FAIL", "root", "/etc/fstab",
                       f"{where}: {spec} names no volume of this image"
                       + ("" if optional else " (the boot would stop in emergency mode)"))
            continue
        if note:
            report.add("WARN", "root", "/etc/fstab", note)
        subvolume, named = None, vol.device
        if vol.kind == "btrfs" and fstype in ("btrfs", "auto"):
            try:
                btrfs = btrfs_of(vol)
                subvolume = btrfs.mounted_subvolume(opts)
                named = f"{vol.device} {btrfs.subvolume_path(subvolume) or '<top level>'}"
            except OSError as e:
                report.add("WARN" if optional else "FAIL", "root", "/etc/fstab",
                           f"{where}: {spec} ({opts}) on {vol.device}: {str(e)[:120]}")
                continue
        if where == "/":
            root = guest.mounts["/"]
            same = vol is root_vol and (subvolume is None or subvolume == root.subvolume)
            report.add("PASS" if same else "FAIL", "root", "/etc/fstab",
                       f"/ is {spec} -> {named}" + ("" if same else
                                                    f", not the root found ({_describe(root_vol, root)})"))
            continue
        if not readable(vol):
            report.add("INFO", "root", "/etc/fstab",
                       f"{where}: {spec} -> {vol.device} ({vol.kind}), not read")
            continue
        try:
            guest.mount(where, open_fs(vol, subvolume))
        except OSError as e:
            report.add("WARN", "root", "/etc/fstab", f"{where}: {vol.device} unreadable: {str(e)[:100]}")
            continue
        report.add("PASS", "root", "/etc/fstab", f"{where} is {spec} -> {named} ({vol.kind})")
    return entries

