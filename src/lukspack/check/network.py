"""Network: an interface configured by DHCP, by the distribution's tools or by cloud-init."""

from __future__ import annotations

import re
from typing import Any

from lukspack.check.guest import Guest
from lukspack.check.report import Report


def _dhcp_configs(guest: Guest) -> list[str]:
    found = []
    files = ["/etc/network/interfaces"] + [f"/etc/network/interfaces.d/{n}" for n in
                                           guest.listdir("/etc/network/interfaces.d")]
    for path in files:
        text = guest.read_text(path) or ""
        for m in re.finditer(r"^\s*iface\s+(\S+)\s+inet6?\s+dhcp", text, re.M):
            found.append(f"{path}: iface {m.group(1)} dhcp (ifupdown)")
    for name in guest.listdir("/etc/netplan"):
        text = guest.read_text(f"/etc/netplan/{name}") or ""
        if re.search(r"dhcp4\s*:\s*(true|yes)", text):
            found.append(f"/etc/netplan/{name}: dhcp4 (netplan)")
    for name in guest.listdir("/etc/systemd/network"):
        text = guest.read_text(f"/etc/systemd/network/{name}") or ""
        if name.endswith(".network") and re.search(r"^\s*DHCP\s*=\s*(yes|true|ipv4|both)", text, re.M):
            found.append(f"/etc/systemd/network/{name}: DHCP (systemd-networkd)")
    for name in guest.listdir("/etc/NetworkManager/system-connections"):
        text = guest.read_text(f"/etc/NetworkManager/system-connections/{name}") or ""
        if re.search(r"^\s*method\s*=\s*auto", text, re.M):
            found.append(f"/etc/NetworkManager/system-connections/{name}: method=auto (NetworkManager)")
    for name in guest.listdir("/etc/sysconfig/network-scripts"):
        text = guest.read_text(f"/etc/sysconfig/network-scripts/{name}") or ""
        if name.startswith("ifcfg-") and re.search(r"^\s*BOOTPROTO=\"?dhcp", text, re.M):
            found.append(f"/etc/sysconfig/network-scripts/{name}: BOOTPROTO=dhcp")
    return found


def check_network(guest: Guest, report: Report, cloud: dict[str, Any]) -> None:
    found = _dhcp_configs(guest)
    if cloud.get("installed") and not cloud.get("network_disabled"):
        report.add("PASS", "network", "network configuration",
                   "cloud-init writes it from the datasource's network data (fallback: DHCP on the "
                   "first NIC)" + (f"; also {found[0]}" if found else ""))
    elif found:
        report.add("PASS", "network", "network configuration", "; ".join(found[:3]))
    else:
        why = (f"{cloud['network_source']}: network: {{config: disabled}}" if cloud.get("network_disabled")
               else "no cloud-init")
        report.add("FAIL", "network", "network configuration",
                   f"no interface configured by DHCP (ifupdown, netplan, NetworkManager, "
                   f"systemd-networkd) and {why}")
