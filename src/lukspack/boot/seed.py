"""cloud-init seeds as IBM Cloud attaches them: NoCloud (`cidata`, VPC) and ConfigDrive v2
(`config-2`, classic), ISO 9660 images with Rock Ridge and Joliet names, written by pycdlib
(pure Python, LGPL: no xorriso or genisoimage needed on the host)."""

from __future__ import annotations

import io
import json
import uuid

DATASOURCES = ("nocloud", "configdrive")
MARKER_PREFIX = "LUKSPACK-BOOT"


def user_data(token: str) -> str:
    """Cloud-config whose runcmd prints MARKER_PREFIX-token on the serial console; the joined
    marker is not in this text, so only a run of the command can show it."""
    return ("#cloud-config\n"
            "runcmd:\n"
            f"  - [sh, -c, \"printf '%s-%s\\\\n' {MARKER_PREFIX} {token} > /dev/ttyS0\"]\n")


def marker(token: str) -> str:
    return f"{MARKER_PREFIX}-{token}"


def _files(datasource: str, token: str, instance: str) -> tuple[str, list[tuple[str, bytes]]]:
    ud = user_data(token).encode()
    if datasource == "nocloud":
        meta = f"instance-id: {instance}\nlocal-hostname: lukspack-boot-test\n".encode()
        return "cidata", [("meta-data", meta), ("user-data", ud)]
    if datasource == "configdrive":
        meta = json.dumps({"uuid": instance, "hostname": "lukspack-boot-test",
                           "name": "lukspack-boot-test", "launch_index": 0,
                           "availability_zone": "nova"}).encode()
        return "config-2", [("openstack/latest/meta_data.json", meta),
                            ("openstack/latest/user_data", ud)]
    raise ValueError(f"datasource {datasource!r} is not one of {', '.join(DATASOURCES)}")


def _clean(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s.upper())


def _iso_name(part: str, is_dir: bool) -> str:
    """The ISO 9660 (level 3) name beside the Rock Ridge and Joliet ones the guest reads."""
    if is_dir:
        return _clean(part)[:31]
    stem, dot, ext = part.rpartition(".")
    if not dot:
        return f"{_clean(part)[:30]};1"
    return f"{_clean(stem)[:27]}.{_clean(ext)[:3]};1"


def write_seed(path: str, datasource: str, token: str) -> str:
    """Write the seed ISO at path; returns its volume label."""
    import pycdlib

    label, files = _files(datasource, token, f"lukspack-{uuid.uuid4()}")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
    made: set[str] = set()
    try:
        for name, data in files:
            parts = name.split("/")
            iso_path = ""
            for i, part in enumerate(parts[:-1]):
                iso_path += "/" + _iso_name(part, True)
                joliet = "/" + "/".join(parts[:i + 1])
                if iso_path not in made:
                    iso.add_directory(iso_path, rr_name=part, joliet_path=joliet)
                    made.add(iso_path)
            iso.add_fp(io.BytesIO(data), len(data), f"{iso_path}/{_iso_name(parts[-1], False)}",
                       rr_name=parts[-1], joliet_path="/" + name)
        iso.write(path)
    finally:
        iso.close()
    return label
