"""Indexed mode: each row run on its own (`--index N`, JOB_INDEX of Code Engine array jobs,
JOB_COMPLETION_INDEX of Kubernetes Indexed Jobs) gives what `fleet run` gives; pods that share no
state directory still see finished images (the record beside each object). The Containerfile's
entrypoint is run as a batch system runs it (no container builder installs here: buildah and
podman are absent, docker has no daemon, so the image itself is not built by the tests)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.cloud.test_kms import run_cli
from tests.fleet.conftest import defaults_for, mixed_rows, write_manifest
from tests.fleet.test_kill import env_of
from tests.fleet.test_run import imports_of
from tests.helpers import ROOT


def entrypoint(manifest: Path) -> list[str]:
    """The Containerfile's ENTRYPOINT + CMD, with this checkout's lukspack and the manifest."""
    text = (ROOT / "Containerfile").read_text()
    cmd = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1)) + \
        json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[0] == "lukspack" and cmd[-1] == "/fleet/fleet.yaml"
    return [sys.executable, "-m", "lukspack", *cmd[1:-1], str(manifest)]


def comparable(r: dict) -> list[tuple]:
    return [(i["index"], i["format"], i["size"], i["status"]) for i in r["images"]]


def test_each_index_alone_equals_fleet_run(cloud, s3, cos_env, images, tmp_path,
                                          capsys) -> None:
    whole = write_manifest(tmp_path / "whole.yaml", mixed_rows(cloud, images, "wh"),
                           defaults_for(cloud))
    code, out, err = run_cli(["fleet", "run", str(whole), "--json"], capsys)
    assert code == 0, err
    expected = comparable(json.loads(out))
    idx = write_manifest(tmp_path / "fleet.yaml", mixed_rows(cloud, images, "ix"),
                         defaults_for(cloud))
    env = env_of(cos_env)
    for i, var in enumerate(["JOB_INDEX", "JOB_COMPLETION_INDEX", "JOB_INDEX", "--index"]):
        args = entrypoint(idx) + (["--index", str(i)] if var == "--index" else [])
        extra = {} if var == "--index" else {var: str(i)}
        p = subprocess.run(args + ["--json"], env={**env, **extra}, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        assert [x["index"] for x in r["images"]] == [i] and r["all_done"]
        if var != "--index":
            assert f"row {i} (from {var})" in p.stderr
    assert imports_of(cloud) == sorted([f"{p}-{x}" for p in ("wh", "ix")
                                        for x in ("qcow2", "raw", "vhd", "vmdk")])
    code, out, err = run_cli(["fleet", "status", str(idx), "--json"], capsys)
    assert code == 0 and comparable(json.loads(out)) == expected
    code, out, err = run_cli(["fleet", "run", str(idx), "--json"], capsys)  # nothing left
    assert code == 0 and comparable(json.loads(out)) == expected
    assert len(imports_of(cloud)) == 8


def test_pods_without_a_shared_state_dir(cloud, s3, cos_env, images, tmp_path, capsys) -> None:
    path = write_manifest(tmp_path / "fleet.yaml", mixed_rows(cloud, images, "pod")[:2],
                          defaults_for(cloud))
    env = env_of(cos_env)
    for i in (0, 1):
        p = subprocess.run(entrypoint(path) + ["--state-dir", str(tmp_path / f"pod-{i}")],
                           env={**env, "JOB_COMPLETION_INDEX": str(i)}, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
    # a third pod, a fresh state directory, the same row: the record in the bucket says done
    p = subprocess.run(entrypoint(path) + ["--state-dir", str(tmp_path / "pod-2")],
                       env={**env, "JOB_INDEX": "1"}, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "pod-qcow2: done (already done), skipped" in p.stderr
    assert imports_of(cloud) == ["pod-qcow2", "pod-vmdk"]
    # the driver's view, with no state directory of its own: from the records in the bucket
    code, out, err = run_cli(["fleet", "status", str(path), "--json"], capsys)
    assert code == 0 and [i["status"] for i in json.loads(out)["images"]] == ["pending"] * 2
    code, out, err = run_cli(["fleet", "status", str(path), "--bucket", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["all_done"] and all(i["image_id"] for i in r["images"])


def test_bad_index(cloud, images, tmp_path, capsys, monkeypatch) -> None:
    path = write_manifest(tmp_path / "fleet.yaml", mixed_rows(cloud, images, "bad")[:2],
                          defaults_for(cloud))
    code, _, err = run_cli(["fleet", "run", str(path), "--index", "2"], capsys)
    assert code == 1 and err == (f"lukspack: error: {path}: --index 2: the manifest has rows 0 "
                                 "to 1\n")
    monkeypatch.setenv("JOB_INDEX", "x")
    code, _, err = run_cli(["fleet", "run", str(path)], capsys)
    assert code == 1 and err == "lukspack: error: JOB_INDEX='x' is not a row index\n"
    code, _, err = run_cli(["fleet", "run", str(path), "--index", "0", "--jobs", "2"], capsys)
    assert code == 2 and "--index runs one row here: no --jobs or --ray with it" in err
    assert not imports_of(cloud)
