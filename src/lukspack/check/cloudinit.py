"""cloud-init: installed (and its version), enabled, its datasource list and final modules, as
IBM Cloud VPC (NoCloud) and classic (ConfigDrive) need them."""

from __future__ import annotations

import re
from typing import Any

from lukspack.check.guest import Guest
from lukspack.check.report import Report

# each stage's unit; cloud-init 24.3 renamed cloud-init.service to cloud-init-network.service
# (and added cloud-init-main.service, which its stages need)
UNITS = (("cloud-init-local.service",), ("cloud-init-network.service", "cloud-init.service"),
         ("cloud-config.service",), ("cloud-final.service",))
MAIN_UNIT = "cloud-init-main.service"
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
WANTS_DIRS = ("/etc/systemd/system/cloud-init.target.wants", "/etc/systemd/system/multi-user.target.wants")
GENERATORS = ("/lib/systemd/system-generators/cloud-init-generator",
              "/usr/lib/systemd/system-generators/cloud-init-generator")
DPKG_STATUS = "/var/lib/dpkg/status"
VERSION_PY = ("/usr/lib/python3/dist-packages/cloudinit/version.py",)
SITE_DIRS = ("/usr/lib/python3", "/usr/lib64/python3", "/usr/lib")
MIN_VERSION = {"vpc": (0, 7, 9), "classic": (0, 7, 7)}
DATASOURCE = {"vpc": "NoCloud", "classic": "ConfigDrive"}
SINGLE_LINE_LIST = re.compile(r"^datasource_list\s*:\s*\[.*\]\s*(#.*)?$")


def version_tuple(v: str) -> tuple[int, ...]:
    m = re.match(r"(?:\d+:)?(\d+(?:\.\d+)*)", v)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def dpkg_version(guest: Guest, package: str) -> str | None:
    text = guest.read_text(DPKG_STATUS, limit=64 << 20)
    if text is None:
        return None
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line
                      and not line.startswith(" "))
        if fields.get("Package") == package and fields.get("Status", "").endswith(" installed"):
            return fields.get("Version")
    return None


def _version_py(guest: Guest) -> tuple[str, str] | None:
    candidates = list(VERSION_PY)
    for base in SITE_DIRS:
        for name in guest.listdir(base):
            if name.startswith("python3"):
                for sub in ("site-packages", "dist-packages"):
                    candidates.append(f"{base}/{name}/{sub}/cloudinit/version.py")
    for path in candidates:
        text = guest.read_text(path)
        if text:
            m = re.search(r"__VERSION__\s*=\s*[\"']([^\"']+)", text)
            if m:
                return path, m.group(1)
    return None


def load_configs(guest: Guest, report: Report) -> list[tuple[str, str, dict[str, Any]]]:
    import yaml

    out = []
    paths = ["/etc/cloud/cloud.cfg"] + [f"/etc/cloud/cloud.cfg.d/{n}" for n in
                                        sorted(guest.listdir("/etc/cloud/cloud.cfg.d")) if n.endswith(".cfg")]
    for path in paths:
        text = guest.read_text(path)
        if text is None:
            continue
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            report.add("FAIL", "cloud-init", "configuration", f"{path}: not YAML: {str(e).splitlines()[0]}")
            continue
        if isinstance(data, dict):
            out.append((path, text, data))
    return out


def _module_names(items: Any) -> list[str]:
    names = []
    for item in items or []:
        name = item[0] if isinstance(item, list) and item else item
        if isinstance(name, str):
            names.append(name.replace("_", "-"))
    return names


def check_cloud_init(guest: Guest, report: Report, target: str, cmdlines: list[tuple[str, str]]
                     ) -> dict[str, Any]:
    area = "cloud-init"
    version = dpkg_version(guest, "cloud-init")
    where = f"{DPKG_STATUS}: cloud-init {version}" if version else ""
    if version is None:
        from lukspack.check.rpmdb import rpm_version

        rpm = rpm_version(guest, "cloud-init")
        if rpm is not None:
            where, version = f"{rpm[0]}: cloud-init {rpm[1]}", rpm[1]
    if version is None:
        found = _version_py(guest)
        if found:
            where, version = f"{found[0]}: __VERSION__ = {found[1]!r}", found[1]
    if version is None:
        report.add("FAIL", area, "installed", "cloud-init is not installed: no cloud-init package in "
                   f"{DPKG_STATUS} or the rpm database and no cloudinit/version.py (IBM Cloud "
                   "requires cloud-init)")
        return {"installed": False}
    need = MIN_VERSION[target]
    ok = version_tuple(version) >= need
    report.add("PASS" if ok else "FAIL", area, "installed",
               where + ("" if ok else f" (IBM Cloud {target} needs >= {'.'.join(map(str, need))})"))
    _check_enabled(guest, report, cmdlines)
    configs = load_configs(guest, report)
    _check_datasources(report, target, configs)
    if target == "vpc":
        final = [(p, d["cloud_final_modules"]) for p, _t, d in configs if "cloud_final_modules" in d]
        if final:
            path, mods = final[-1]
            has = "scripts-vendor" in _module_names(mods)
            what = "listed" if has else "missing (IBM Cloud VPC runs its vendor data through it)"
            report.add("PASS" if has else "FAIL", area, "cloud_final_modules",
                       f"{path}: scripts-vendor {what}")
        else:
            report.add("WARN", area, "cloud_final_modules", "no cloud_final_modules in /etc/cloud/cloud.cfg")
    net = [(p, d["network"]) for p, _t, d in configs if isinstance(d.get("network"), dict)]
    disabled = bool(net) and str(net[-1][1].get("config", "")).lower() == "disabled"
    return {"installed": True, "version": version, "network_disabled": disabled,
            "network_source": net[-1][0] if net else ""}


def _check_enabled(guest: Guest, report: Report, cmdlines: list[tuple[str, str]]) -> None:
    area = "cloud-init"
    problems, evidence = [], []
    if guest.exists("/etc/cloud/cloud-init.disabled"):
        problems.append("/etc/cloud/cloud-init.disabled exists")
    for unit in [u for alts in UNITS for u in alts] + [MAIN_UNIT, "cloud-init.target"]:
        link = guest.link_target(f"/etc/systemd/system/{unit}")
        if link == "/dev/null":
            problems.append(f"/etc/systemd/system/{unit} -> /dev/null (masked)")
    stages = list(UNITS)
    if any(guest.is_file(f"{d}/{MAIN_UNIT}") for d in UNIT_DIRS):
        stages.append((MAIN_UNIT,))
    for alts in stages:
        present = [u for u in alts if any(guest.is_file(f"{d}/{u}") for d in UNIT_DIRS)]
        if not present:
            problems.append(f"{' or '.join(alts)} missing from {', '.join(UNIT_DIRS)}")
            continue
        unit = present[0]
        wanted = [f"{d}/{unit}" for d in WANTS_DIRS if guest.exists(f"{d}/{unit}", follow=False)]
        if wanted:
            evidence.append(wanted[0])
        else:
            problems.append(f"{unit} not in {WANTS_DIRS[0]} (not enabled)")
    if not any(guest.exists(g) for g in GENERATORS) and not guest.exists(
            "/etc/systemd/system/multi-user.target.wants/cloud-init.target", follow=False) \
            and not any(e.startswith(WANTS_DIRS[1]) for e in evidence):
        problems.append("cloud-init.target is wanted by nothing (no cloud-init-generator, not in "
                        "multi-user.target.wants)")
    for path, line in cmdlines:
        if re.search(r"(^|\s)cloud-init=disabled(\s|$)", line):
            problems.append(f"{path}: kernel command line has cloud-init=disabled")
    if problems:
        report.add("FAIL", area, "enabled", "; ".join(problems))
    else:
        report.add("PASS", area, "enabled", f"{len(evidence)} units wanted: " + ", ".join(evidence))


def _check_datasources(report: Report, target: str,
                       configs: list[tuple[str, str, dict[str, Any]]]) -> None:
    area = "cloud-init"
    for path, text, data in configs:
        if "datasource_list" in data:
            lines = [ln for ln in text.splitlines() if ln.startswith("datasource_list")]
            if not lines or not SINGLE_LINE_LIST.match(lines[-1].strip()):
                report.add("WARN", area, "datasource_list",
                           f"{path}: a multi-line list; ds-identify reads only the single-line form "
                           "'datasource_list: [ NoCloud, None ]' and ignores this one")
    lists = [(p, d["datasource_list"]) for p, _t, d in configs if "datasource_list" in d]
    want = DATASOURCE[target]
    if not lists:
        report.add("PASS", area, "datasource_list",
                   f"no datasource_list in /etc/cloud/cloud.cfg{{,.d/*.cfg}}: cloud-init's default "
                   f"list, in which ds-identify finds {want}")
        return
    path, value = lists[-1]
    names = [str(x) for x in value] if isinstance(value, list) else [str(value)]
    ev = f"{path}: datasource_list {names} (the last file that sets it wins)"
    if want not in names:
        report.add("FAIL", area, "datasource_list", ev + f": no {want}, which IBM Cloud {target} uses")
    elif target == "vpc" and set(names) - {"NoCloud", "None"}:
        report.add("WARN", area, "datasource_list",
                   ev + ": IBM Cloud VPC supports NoCloud only (ConfigDrive is not supported)")
    else:
        report.add("PASS", area, "datasource_list", ev)
