"""The fleet jobs: `fleet_plan`, `fleet_run` and `fleet_status` over a manifest (YAML or CSV),
each image one `publish` (lukspack.fleet runs them; docs/fleet.md).

The rules of a fleet request live here: which executor options go together, where the row of
an indexed batch job comes from (`JOB_COMPLETION_INDEX`, then `JOB_INDEX`, when the request
asks for it), that Ray is installed before anything runs, and that a run succeeded only when
every image (or the indexed one) is done (`FleetRunResult.raise_unless_done`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lukspack.api.common import Result
from lukspack.errors import LukspackError, UsageError

Say = Callable[[str], None]

__all__ = ["FleetRequest", "FleetRunRequest", "FleetImage", "FleetPlanImage", "FleetPlanResult",
           "FleetRunResult", "fleet_plan", "fleet_run", "fleet_status"]


def _quiet(_line: str) -> None:
    pass


@dataclass(frozen=True)
class FleetRequest:
    """A manifest and publish's options as defaults for every row (`defaults`: the option
    names with underscores, as a manifest column overrides them); `state_dir` defaults to
    MANIFEST.state beside the manifest. `bucket` (status only): images the state directory
    does not know are read from the record beside their object."""

    manifest: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    state_dir: str | None = None
    bucket: bool = False


@dataclass(frozen=True)
class FleetRunRequest(FleetRequest):
    """What `fleet run` does: the local pool (`jobs` processes, default from the CPUs and
    memory), Ray (`ray`: auto, local or the head's address; `ray_cpus` per task) or one row
    (`index`, or with `index_from_environment` the batch system's index variable)."""

    jobs: int | None = None
    index: int | None = None
    ray: str | None = None
    ray_cpus: float = 1.0
    index_from_environment: bool = False

    def __post_init__(self) -> None:
        if self.index is not None and (self.jobs is not None or self.ray is not None):
            raise UsageError("--index runs one row here: no --jobs or --ray with it")
        if self.ray is not None and self.jobs is not None:
            raise UsageError("--jobs is for the local pool, not --ray (Ray places the tasks)")


@dataclass(frozen=True)
class FleetImage(Result):
    """One row of the fleet's table (run and status)."""

    ALWAYS: ClassVar[tuple[str, ...]] = ("size", "seconds", "image_id", "image", "error")
    index: int
    name: str
    target: str
    format: str
    output: str
    size: int | None
    seconds: float | None
    status: str
    image_id: str | None
    image: Mapping[str, Any] | None
    error: str | None
    attempts: int


@dataclass(frozen=True)
class FleetPlanImage(Result):
    """One row of `fleet plan`."""

    ALWAYS: ClassVar[tuple[str, ...]] = ("input", "size")
    index: int
    name: str
    source: str
    input: str | None
    size: int | None
    target: str
    format: str
    output: str
    key: str
    skip_check: bool
    status: str


@dataclass(frozen=True)
class FleetPlanResult(Result):
    manifest: str
    state_dir: str
    preflights: tuple[Mapping[str, Any], ...]
    images: tuple[FleetPlanImage, ...]


@dataclass(frozen=True)
class FleetRunResult(Result):
    """The fleet's table (`images`), the count of images per status and whether all are
    done: what `fleet run --json` and `fleet status --json` print."""

    manifest: str
    state_dir: str
    images: tuple[FleetImage, ...]
    counts: Mapping[str, int]
    all_done: bool

    def raise_unless_done(self) -> None:
        """The run's outcome as an error (exit 1) when an image is not done."""
        if not self.all_done:
            bad = [i.name for i in self.images if i.status != "done"]
            raise LukspackError(f"{len(bad)} of {len(self.images)} image(s) not done: "
                                f"{', '.join(bad)}; run again to resume them")


def _run_result(summary: Mapping[str, Any]) -> FleetRunResult:
    images = tuple(FleetImage.from_summary(i) for i in summary["images"])
    return FleetRunResult.from_summary({**summary, "images": images})


def fleet_plan(request: FleetRequest, say: Say = _quiet) -> FleetPlanResult:
    """Check every row, open every source, run the pre-flight once per bucket / root key /
    region. Nothing is uploaded and no key is written."""
    from lukspack.fleet import plan_fleet

    r = plan_fleet(request.manifest, dict(request.defaults), state_dir=request.state_dir,
                   say=say)
    images = tuple(FleetPlanImage.from_summary(i) for i in r["images"])
    return FleetPlanResult.from_summary({**r, "images": images,
                                         "preflights": tuple(r["preflights"])})


def _index(request: FleetRunRequest, say: Say) -> int | None:
    if request.index is not None or not request.index_from_environment:
        return request.index
    from lukspack.fleet.executors import index_from_env

    found = index_from_env()
    if found is None:
        return None
    if request.jobs is not None or request.ray is not None:
        raise UsageError(f"{found[1]} runs one row here: no --jobs or --ray with it")
    say(f"row {found[0]} (from {found[1]})")
    return found[0]


def fleet_run(request: FleetRunRequest, say: Say = _quiet) -> FleetRunResult:
    """Publish every image not done yet; a rerun skips finished images and resumes the
    others. The result says whether every image is done (`raise_unless_done`)."""
    from lukspack.fleet import run_fleet

    index = _index(request, say)
    if request.ray is not None:
        from lukspack.fleet.ray_executor import require_ray

        require_ray()  # before any check or pre-flight: one line when Ray is not installed
    r = run_fleet(request.manifest, dict(request.defaults), state_dir=request.state_dir,
                  jobs=request.jobs, index=index, ray=request.ray, ray_cpus=request.ray_cpus,
                  say=say)
    return _run_result(r)


def fleet_status(request: FleetRequest) -> FleetRunResult:
    """The table of `fleet run` from the state, without running anything."""
    from lukspack.fleet import fleet_status as status

    return _run_result(status(request.manifest, dict(request.defaults),
                              state_dir=request.state_dir, bucket=request.bucket))
