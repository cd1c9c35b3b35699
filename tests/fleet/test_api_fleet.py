"""The fleet jobs from Python (lukspack.api.fleet): the same rules, results and errors as the
CLI, which calls them."""

from __future__ import annotations

import json

import pytest

from lukspack.api import exit_code
from lukspack.api.fleet import FleetRequest, FleetRunRequest, fleet_plan, fleet_run, fleet_status
from lukspack.errors import LukspackError, UsageError
from tests.cloud.test_kms import run_cli
from tests.fleet.conftest import defaults_for, mixed_rows, write_manifest
from tests.fleet.test_run import imports_of


@pytest.mark.parametrize("kw,message", [
    ({"index": 0, "jobs": 2}, "--index runs one row here: no --jobs or --ray with it"),
    ({"index": 1, "ray": "local"}, "--index runs one row here: no --jobs or --ray with it"),
    ({"jobs": 2, "ray": "auto"}, "--jobs is for the local pool, not --ray (Ray places the tasks)"),
])
def test_request_rules(kw: dict, message: str) -> None:
    with pytest.raises(UsageError) as e:
        FleetRunRequest("fleet.yaml", **kw)
    assert str(e.value) == message and exit_code(e.value) == 2


def test_plan_run_status_from_python(cloud, s3, cos_env, images, tmp_path, capsys,
                                     monkeypatch) -> None:
    rows = mixed_rows(cloud, images, "py")[:2]
    path = write_manifest(tmp_path / "fleet.yaml", rows, defaults_for(cloud))
    lines: list[str] = []
    plan = fleet_plan(FleetRequest(str(path)), say=lines.append)
    assert [i.name for i in plan.images] == [r["name"] for r in rows]
    assert all(i.status == "pending" for i in plan.images) and plan.preflights
    assert not imports_of(cloud)
    monkeypatch.setenv("JOB_INDEX", "1")  # read only when the request asks for it
    r = fleet_run(FleetRunRequest(str(path)), say=lines.append)
    assert r.all_done and [i.status for i in r.images] == ["done", "done"]
    r.raise_unless_done()
    assert sorted(imports_of(cloud)) == sorted(r["name"] for r in rows)
    assert all(i.image_id for i in r.images)
    status = fleet_status(FleetRequest(str(path)))
    code, out, err = run_cli(["fleet", "status", str(path), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out) == status.to_dict()
    assert [i.status for i in status.images] == ["done", "done"]


def test_not_done_is_an_error(cloud, s3, cos_env, images, tmp_path) -> None:
    rows = mixed_rows(cloud, images, "nd")[:1]
    path = write_manifest(tmp_path / "fleet.yaml", rows, defaults_for(cloud))
    r = fleet_status(FleetRequest(str(path)))
    assert not r.all_done
    with pytest.raises(LukspackError) as e:
        r.raise_unless_done()
    assert str(e.value) == (f"1 of 1 image(s) not done: {rows[0]['name']}; run again to "
                            "resume them") and exit_code(e.value) == 1
