"""`lukspack fleet`: publish many images from a manifest, each as one idempotent `publish`.

manifest.py (rows, defaults, checks), plan.py (sources, sizes, pre-flight once per bucket / root
key / region), image.py (the per-image function), state.py (state directory, record beside the
object, per-image lock), executors.py (indexed row, local process pool), worker.py (a pool
worker), report.py (table, JSON, progress lines). See docs/fleet.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lukspack.fleet import manifest as mf
from lukspack.fleet import report
from lukspack.fleet.plan import FleetPlan, default_jobs, default_state_dir, make_plan

Say = Callable[[str], None]
__all__ = ["plan_fleet", "run_fleet", "fleet_status", "default_jobs"]


def _load(path: str, defaults: dict[str, Any] | None, state_dir: str | None
          ) -> tuple[mf.Manifest, str]:
    m = mf.load(path, defaults)
    return m, state_dir or default_state_dir(path)


def plan_fleet(path: str, defaults: dict[str, Any] | None = None, *, state_dir: str | None = None,
               say: Say = lambda _l: None) -> dict[str, Any]:
    m, sd = _load(path, defaults, state_dir)
    p = make_plan(m, sd, say)
    return {"manifest": path, "state_dir": sd, "preflights": p.preflights,
            "images": [_planned(t) for t in p.tasks]}


def _planned(t: dict[str, Any]) -> dict[str, Any]:
    fmt = mf.publish_plan(t).format
    return {"index": t["index"], "name": t["name"], "source": t["source"],
            "input": t.get("input"), "size": t.get("size"), "target": t["target"],
            "format": fmt, "output": t["output"],
            "key": ("new: " if t["key"] == "new" else "") + t["key_file"],
            "skip_check": t["skip_check"], "status": t.get("status", "pending")}


def run_fleet(path: str, defaults: dict[str, Any] | None = None, *,
              state_dir: str | None = None, jobs: int | None = None, index: int | None = None,
              ray: str | None = None, ray_cpus: float = 1, say: Say = lambda _l: None
              ) -> dict[str, Any]:
    """Run the images not done yet: in a local pool of `jobs` processes, on the Ray cluster
    `ray` (auto, local or an address), or (index) just that row, in this process; the
    summary's all_done says whether every image (every row, or the indexed one) is done."""
    from lukspack.fleet import executors

    m, sd = _load(path, defaults, state_dir)
    p: FleetPlan = make_plan(m, sd, say, only=index)
    todo = [t for t in p.tasks if (index is None or t["index"] == index)]
    if index is not None:
        p.task(index)
    progress = report.Progress(todo, say)
    if index is not None:
        executors.run_indexed(todo[0], progress)
    else:
        for t in todo:
            if t.get("status") == "done":
                progress({"event": "end", "name": t["name"], "status": "done", "skipped": True})
        left = [t for t in todo if t.get("status") != "done"]
        if left and ray is not None:
            from lukspack.fleet.ray_executor import run_ray

            run_ray(left, ray, progress, num_cpus=ray_cpus)
        elif left:
            executors.run_local(left, jobs or default_jobs(), progress)
    rows = report.rows_of(todo)
    return {"manifest": path, "state_dir": sd, **report.summary(rows)}


def fleet_status(path: str, defaults: dict[str, Any] | None = None, *,
                 state_dir: str | None = None, bucket: bool = False) -> dict[str, Any]:
    """The table from the state directory; bucket: images it knows nothing of from the record
    beside their object."""
    m, sd = _load(path, defaults, state_dir)
    from lukspack.fleet.plan import make_tasks

    rows = report.rows_of(make_tasks(m, sd), bucket=bucket)
    return {"manifest": path, "state_dir": sd, **report.summary(rows)}
