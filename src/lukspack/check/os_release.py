"""The operating system: /etc/os-release (or /usr/lib/os-release, then the release files)."""

from __future__ import annotations

import shlex

from lukspack.check.guest import Guest
from lukspack.check.report import Report

OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
RELEASE_FILES = (("/etc/redhat-release", "rhel"), ("/etc/centos-release", "centos"),
                 ("/etc/SuSE-release", "sles"), ("/etc/debian_version", "debian"),
                 ("/etc/lsb-release", "ubuntu"), ("/etc/alpine-release", "alpine"))


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value.strip("\"'")]
        out[key.strip()] = parts[0] if parts else ""
    return out


def check_os(guest: Guest, report: Report) -> dict[str, str]:
    for path in OS_RELEASE:
        text = guest.read_text(path)
        if text is None:
            continue
        info = parse_os_release(text)
        real = guest.realpath(path)
        where = path if real == path else f"{path} -> {real}"
        info["source"] = where
        name = info.get("PRETTY_NAME") or f"{info.get('NAME', '?')} {info.get('VERSION_ID', '')}"
        report.add("PASS", "os", "operating system",
                   f"{where}: ID={info.get('ID', '?')} VERSION_ID={info.get('VERSION_ID', '?')} ({name})")
        return info
    for path, ident in RELEASE_FILES:
        text = guest.read_text(path)
        if text is not None:
            first = text.strip().splitlines()[0] if text.strip() else ""
            report.add("WARN", "os", "operating system",
                       f"no os-release; {path}: {first!r} (ID {ident} assumed)")
            return {"ID": ident, "VERSION_ID": first, "source": path}
    link = guest.link_target("/etc/os-release")
    ev = (f"/etc/os-release is a link to {link!r}, which does not resolve in the image" if link
          else "none of /etc/os-release, /usr/lib/os-release or a distribution release file")
    report.add("FAIL", "os", "operating system", ev + ": not a Linux distribution lukspack knows")
    return {}


def is_linux(guest: Guest) -> bool:
    return guest.is_dir("/etc") and (guest.exists("/lib/modules") or guest.exists("/usr/lib/modules")
                                     or bool(guest.listdir("/boot")))
