"""`fleet plan`: what a fleet run will do, checked before anything is uploaded.

Every row is checked (manifest.load), every source opened (reachable, its format read, its
virtual size within IBM's limits: VPC 250 GB, classic 100 GB, decimal GB as IBM counts them),
and publish's pre-flight (IAM token, bucket, root key wrap and unwrap) run once per distinct
bucket / root key / region / endpoint, not once per image. Rows already done (in the state
directory) are not checked again: a finished image's source may be gone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lukspack.errors import LukspackError
from lukspack.fleet import manifest as mf
from lukspack.fleet import state as st

GB = 10**9
SIZE_LIMITS = {"vpc": 250 * GB, "classic": 100 * GB}
Say = Callable[[str], None]


@dataclass
class FleetPlan:
    manifest: mf.Manifest
    state_dir: str
    tasks: list[dict[str, Any]] = field(default_factory=list)
    preflights: list[dict[str, Any]] = field(default_factory=list)

    def task(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.tasks):
            raise LukspackError(f"{self.manifest.path}: --index {index}: the manifest has rows 0 "
                                f"to {len(self.tasks) - 1}")
        return self.tasks[index]


def default_state_dir(manifest_path: str) -> str:
    return os.path.abspath(manifest_path) + ".state"


def make_tasks(m: mf.Manifest, state_dir: str) -> list[dict[str, Any]]:
    tasks = []
    for row in m.rows:
        t = dict(row.values)
        t.update(index=row.index, state_dir=state_dir, key_file=mf.key_path(row))
        tasks.append(t)
    return tasks


def status_of(task: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    s = st.ImageState(task["state_dir"], task["name"])
    s.load()
    return s.status, s.data


def check_source(m: mf.Manifest, row: mf.Row, task: dict[str, Any]) -> None:
    """Open the source: reachable, a disk image, within the target's size limit."""
    from lukspack.images import open_image
    from lukspack.remote import RemoteOptions

    plan = mf.publish_plan(task)
    try:
        with open_image(task["source"], task.get("input_format"),
                        remote=RemoteOptions(cos=plan.cos_options)) as image:
            task["size"] = int(image.virtual_size)
            task["input"] = image.format_name
    except LukspackError as e:
        raise mf.ManifestError(f"{m.where(row, 'source')}: {e}") from None
    limit = SIZE_LIMITS[task["target"]]
    if task["size"] > limit:
        raise mf.ManifestError(f"{m.where(row, 'source')}: a {task['size'] / GB:.1f} GB disk; "
                               f"{task['target']} imports images of at most {limit // GB} GB")
    if task["key"] != "new" and not os.path.isfile(task["key_file"]):
        raise mf.ManifestError(f"{m.where(row, 'key')}: {task['key_file']}: no such key file")


def preflight_key(task: dict[str, Any]) -> tuple[Any, ...]:
    from lukspack.cloud.location import parse_cos

    loc = parse_cos(task["output"])
    return (loc.region, loc.bucket, task["root_key_crn"], task["kms_instance"],
            task.get("endpoint_url"), task["endpoint_type"], task.get("kms_url"),
            task["private_kms"], task.get("iam_url"), task.get("credentials_file"))


def make_plan(m: mf.Manifest, state_dir: str, say: Say, *, only: int | None = None,
              preflight: bool = True) -> FleetPlan:
    """Check the rows still to run (only: just that row) and run the pre-flights."""
    from lukspack.cloud.publish import preflight as publish_preflight

    plan = FleetPlan(m, state_dir, make_tasks(m, state_dir))
    groups: dict[tuple[Any, ...], list[int]] = {}
    for row, task in zip(m.rows, plan.tasks, strict=True):
        if only is not None and row.index != only:
            continue
        status, data = status_of(task)
        task["status"] = status
        if status == "done":
            task["size"] = data.get("size")
            continue
        check_source(m, row, task)
        groups.setdefault(preflight_key(task), []).append(row.index)
    if not preflight:
        return plan
    for indexes in groups.values():
        first = plan.tasks[indexes[0]]
        lines: list[str] = []
        try:
            publish_preflight(mf.publish_plan(first), lines.append)
        except LukspackError as e:
            raise LukspackError(f"{m.where(m.rows[indexes[0]])}: pre-flight: {e}") from None
        plan.preflights.append({"rows": indexes, "region": preflight_key(first)[0],
                                "bucket": preflight_key(first)[1],
                                "root_key_crn": first["root_key_crn"], "checked": lines})
        for line in lines:
            say(f"rows {','.join(map(str, indexes))}: {line}")
    return plan


def default_jobs() -> int:
    """Workers for the local pool: one per two CPUs (each image's encryption has threads of its
    own), at most one per 768 MiB of available memory (object parts in flight, the remote
    source's cache, the engine's buffers), at least one."""
    cpus = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f
                         if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        avail = 1 << 30
    return max(1, min(max(1, cpus // 2), avail // (768 << 20)))
