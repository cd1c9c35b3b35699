"""Installed kernels and the drivers IBM Cloud's hypervisors need at boot: virtio (VPC, KVM) or
Xen front-ends (classic), in the initramfs or built into the kernel."""

from __future__ import annotations

import re

from lukspack.check.guest import Guest
from lukspack.check.initramfs import list_initramfs
from lukspack.check.report import Report
from lukspack.errors import FormatError

DRIVERS = {
    "vpc": (("virtio_blk", "CONFIG_VIRTIO_BLK"), ("virtio_pci", "CONFIG_VIRTIO_PCI")),
    "classic": (("xen-blkfront", "CONFIG_XEN_BLKDEV_FRONTEND"),
                ("xen-netfront", "CONFIG_XEN_NETDEV_FRONTEND")),
}
INITRD_NAMES = ("/boot/initrd.img-{v}", "/boot/initramfs-{v}.img", "/boot/initrd-{v}")
MODULE_SUFFIX = re.compile(r"\.ko(\.(xz|zst|gz))?$")


def _vkey(v: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\-+_]", v)]


def kernel_versions(guest: Guest) -> list[str]:
    names = guest.listdir("/boot")
    return sorted((n[len("vmlinuz-"):] for n in names if n.startswith("vmlinuz-")), key=_vkey)


def _builtin(guest: Guest, version: str, module: str, config: str) -> str | None:
    cfg = guest.read_text(f"/boot/config-{version}")
    if cfg and re.search(rf"^{config}=y$", cfg, re.M):
        return f"/boot/config-{version}: {config}=y"
    builtin = guest.read_text(f"/lib/modules/{version}/modules.builtin")
    if builtin and re.search(rf"/{re.escape(module).replace('_', '[_-]')}\.ko$", builtin, re.M):
        return f"/lib/modules/{version}/modules.builtin lists {module}"
    return None


def check_kernels(guest: Guest, report: Report, target: str) -> None:
    versions = kernel_versions(guest)
    if not versions:
        report.add("FAIL", "kernel", "kernels", "no /boot/vmlinuz-* in the image")
        return
    report.add("PASS", "kernel", "kernels", "/boot: " + ", ".join(f"vmlinuz-{v}" for v in versions))
    for i, version in enumerate(reversed(versions)):
        _check_one(guest, report, target, version, newest=i == 0)


def _check_one(guest: Guest, report: Report, target: str, version: str, newest: bool) -> None:
    bad = "FAIL" if newest else "WARN"
    if not guest.is_dir(f"/lib/modules/{version}"):
        report.add(bad, "kernel", "modules", f"/lib/modules/{version} missing")
    initrd = next((p.format(v=version) for p in INITRD_NAMES if guest.is_file(p.format(v=version))), None)
    names: list[str] = []
    if initrd is None:
        report.add(bad, "kernel", "initramfs", f"no initramfs for {version} (" +
                   ", ".join(p.format(v=version) for p in INITRD_NAMES) + ")")
    else:
        data = guest.read(initrd) or b""
        try:
            names, formats = list_initramfs(data)
        except FormatError as e:
            report.add(bad, "kernel", "initramfs", f"{initrd}: {e}")
        else:
            report.add("PASS", "kernel", "initramfs",
                       f"{initrd}: {len(data)} bytes, {' + '.join(formats)} cpio, {len(names)} entries")
    modules = {MODULE_SUFFIX.sub("", n.rsplit("/", 1)[-1]).replace("-", "_"): n for n in names
               if MODULE_SUFFIX.search(n)}
    for module, config in DRIVERS[target]:
        key = module.replace("-", "_")
        if key in modules:
            report.add("PASS", "kernel", f"{module} ({version})", f"{initrd} contains {modules[key]}")
            continue
        built = _builtin(guest, version, module, config)
        if built:
            report.add("PASS", "kernel", f"{module} ({version})", f"built in: {built}")
        else:
            report.add(bad, "kernel", f"{module} ({version})",
                       f"not in {initrd or 'the initramfs'} and not built in (/boot/config-{version}"
                       f" has no {config}=y): the root disk would not be found at boot")
