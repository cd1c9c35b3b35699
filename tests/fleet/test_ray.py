"""The Ray executor against a real Ray: a head (`ray start --head --node-ip-address 127.0.0.1`)
and a second node joining it, started by the tests, and `--ray local` (a Ray started in the
driver). A 6-image manifest mixing formats and both targets; the IBM stand-ins record one import
per image; kill -9 of the Ray worker running an image: Ray retries the task, which resumes into
an object byte-identical to an uninterrupted run with the same key and saved header.
Without Ray installed, --ray is one clear line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lukspack.cloud.location import parse_cos
from lukspack.cloud.multipart import state_name
from tests.cloud import s3server
from tests.cloud.conftest import API_KEY
from tests.cloud.s3proxy import S3Proxy, hold_parts_from
from tests.cloud.s3server import free_ports
from tests.fleet.conftest import classic_row, defaults_for, mixed_rows, vpc_row, write_manifest
from tests.fleet.identical import resumed_identical, sources_of
from tests.fleet.test_kill import kill_victim_part_way
from tests.fleet.test_run import imports_of
from tests.helpers import SRC, cli_env

RAY = str(Path(sys.executable).parent / "ray")


def ray_env(s3, cache: Path, home: Path) -> dict[str, str]:
    """A node's environment: the credentials are the node's own, never sent by the driver.
    HOME is the cluster's own: Ray's token (HOME/.ray/auth_token) is shared by its nodes and
    drivers, and no other Ray on the machine."""
    return {**s3server.clean_env(), **s3server.env_for(s3), "IBMCLOUD_API_KEY": API_KEY,
            "PYTHONPATH": str(SRC), "LUKSPACK_POLL_S": "0.05", "XDG_CACHE_HOME": str(cache),
            "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(home)}


@pytest.fixture(scope="module")
def ray_cluster(s3, tmp_path_factory) -> Iterator[tuple[str, str]]:
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths
    home = tmp_path_factory.mktemp("ray-home")
    env = ray_env(s3, tmp_path_factory.mktemp("ray-cache"), home)
    port, = free_ports(1)
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address", "127.0.0.1", "--block", "--disable-usage-stats"]
    logs = tmp_path_factory.mktemp("ray-logs")
    with open(logs / "head.log", "wb") as out:
        head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--num-cpus", "2",
                                 "--include-dashboard", "false", "--temp-dir", temp, *common],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    nodes = [head]
    try:
        wait_nodes(address, 1, logs / "head.log", env)
        with open(logs / "node.log", "wb") as out:
            nodes.append(subprocess.Popen([RAY, "start", "--address", address, "--num-cpus",
                                           "2", *common], env=env, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        wait_nodes(address, 2, logs / "node.log", env)
        yield address, str(home)
    finally:
        for p in reversed(nodes):  # --block: SIGTERM stops the node and what it started
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(nodes):
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(temp, ignore_errors=True)


def wait_nodes(address: str, n: int, log: Path, env: dict[str, str]) -> None:
    code = ("import ray, sys, time\n"
            "ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "for _ in range(240):\n"
            "    if sum(1 for x in ray.nodes() if x['Alive']) >= int(sys.argv[2]): sys.exit(0)\n"
            "    time.sleep(0.5)\n"
            "sys.exit(1)\n")
    deadline = time.monotonic() + 180
    p = None
    while time.monotonic() < deadline:
        p = subprocess.run([sys.executable, "-c", code, address, str(n)], capture_output=True,
                           text=True, timeout=180, env=env)
        if p.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"Ray at {address} did not get {n} node(s): {log.read_text()[-3000:]}"
                         f"\n{p.stderr[-2000:] if p else ''}")


def driver_env(cos_env: dict[str, str], home: str | None = None) -> dict[str, str]:
    env = {**cli_env(), **cos_env, "LUKSPACK_POLL_S": "0.05", "RAY_USAGE_STATS_ENABLED": "0"}
    if home is not None:
        env["HOME"] = home  # the cluster's token
    for k in ("COS_HMAC_ACCESS_KEY_ID", "COS_HMAC_SECRET_ACCESS_KEY", "IBMCLOUD_API_KEY"):
        env[k] = os.environ.get(k, env.get(k, ""))  # the driver's pre-flight needs them too
    return env


def six_rows(cloud, images, prefix: str) -> list[dict]:
    return mixed_rows(cloud, images, prefix) + [
        vpc_row(cloud, images["vhd"], f"{prefix}-vhd2"),
        classic_row(cloud, images["qcow2"], f"{prefix}-qcow2c", format="raw")]


def test_six_images_on_a_two_node_ray(ray_cluster, cloud, s3, cos_env, images, tmp_path) -> None:
    address, home = ray_cluster
    path = write_manifest(tmp_path / "f.yaml", six_rows(cloud, images, "ray"),
                          defaults_for(cloud))
    p = subprocess.run([sys.executable, "-m", "lukspack", "fleet", "run", str(path), "--ray",
                        address, "--json"], env=driver_env(cos_env, home), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["all_done"] and len(r["images"]) == 6
    assert imports_of(cloud) == sorted(i["name"] for i in r["images"])
    assert "fleet: 6/6 done, 0 failed" in p.stderr and "ray-vmdk: started" in p.stderr
    code = subprocess.run([sys.executable, "-m", "lukspack", "fleet", "run", str(path),
                           "--ray", address], env=driver_env(cos_env, home), capture_output=True,
                          text=True, timeout=600)
    assert code.returncode == 0 and code.stderr.count("(already done), skipped") == 6
    assert len(imports_of(cloud)) == 6


def test_kill_9_a_ray_worker(ray_cluster, cloud, s3, cos_env, tmp_path) -> None:
    address, home = ray_cluster
    imgs = _big(tmp_path)
    rows = [vpc_row(cloud, imgs["raw"], "rk-a"), classic_row(cloud, imgs["raw"], "rk-b")]
    path = write_manifest(tmp_path / "f.yaml", rows, defaults_for(cloud))
    state_dir = tmp_path / "f.yaml.state"
    journal = state_dir / "uploads" / (state_name(parse_cos(
        f"cos://us-south/{s3server.BUCKET}/fleet/rk-a.qcow2")) + ".lukspack-upload")
    # rk-a's parts from the 4th on wait: its upload is open when the kill comes
    proxy = S3Proxy(s3.endpoint, delay_s=0.2, hold=hold_parts_from("rk-a.qcow2", 4))
    p, _, out, err, saved = kill_victim_part_way(
        [sys.executable, "-m", "lukspack", "fleet", "run", str(path), "--ray", address, "--json"],
        driver_env(cos_env, home), proxy, journal, state_dir / "rk-a.json", wait_s=180)
    assert p.returncode == 0 and out.startswith("{"), out[:2000]  # Ray retried; it resumed
    r = json.loads(out)
    a = json.loads((state_dir / "rk-a.json").read_text())
    assert a["attempts"] == 2 and a["resumed_parts"] >= 2
    assert imports_of(cloud) == ["rk-a", "rk-b"]
    left = s3.client().list_multipart_uploads(Bucket=s3server.BUCKET, Prefix="fleet/rk-")
    assert not left.get("Uploads")
    assert r["all_done"]
    assert "rk-a" in resumed_identical(s3, r, saved, sources_of(rows), tmp_path / "keys",
                                       tmp_path)


def _big(tmp_path: Path) -> dict[str, Path]:
    from tests.helpers import run

    raw = tmp_path / "big.raw"
    run([sys.executable, "-m", "lukspack", "sample", str(raw), "--size", "32"], env=cli_env())
    return {"raw": raw}


def test_ray_local(cloud, s3, cos_env, images, tmp_path) -> None:
    path = write_manifest(tmp_path / "f.yaml", mixed_rows(cloud, images, "rl")[:2],
                          defaults_for(cloud))
    env = {**driver_env(cos_env, str(tmp_path / "ray-home"))}  # a Ray of its own
    p = subprocess.run([sys.executable, "-m", "lukspack", "fleet", "run", str(path), "--ray",
                        "local", "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["all_done"] and imports_of(cloud) == ["rl-qcow2", "rl-vmdk"]


def test_without_ray_one_line(cloud, images, tmp_path) -> None:
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    path = write_manifest(tmp_path / "f.yaml", mixed_rows(cloud, images, "nr")[:1],
                          defaults_for(cloud))
    env = cli_env()
    env["PYTHONPATH"] = f"{fake.parent}{os.pathsep}{env['PYTHONPATH']}"
    p = subprocess.run([sys.executable, "-m", "lukspack", "fleet", "run", str(path), "--ray",
                        "auto"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr == ("lukspack: error: --ray needs Ray, which is not "
                                              "installed: pip install 'lukspack[ray]'\n")
    assert not imports_of(cloud)


def test_kill_9_the_ray_driver(ray_cluster, cloud, s3, cos_env, tmp_path) -> None:
    """The driver killed part way: Ray ends its tasks (their owner is gone), their locks go with
    them, and a rerun completes every image once."""
    from tests.cloud.s3proxy import kill_9_part_way

    address, home = ray_cluster
    imgs = _big(tmp_path)
    rows = [vpc_row(cloud, imgs["raw"], "rd-a"), classic_row(cloud, imgs["raw"], "rd-b")]
    path = write_manifest(tmp_path / "f.yaml", rows, defaults_for(cloud))
    uploads = tmp_path / "f.yaml.state" / "uploads"
    env = driver_env(cos_env, home)
    kill_9_part_way([sys.executable, "-m", "lukspack", "fleet", "run", str(path), "--ray",
                     address], env, s3.endpoint, lambda: sorted(uploads.glob("*.lukspack-upload")),
                    parts=2, need=b"key_material", delay_s=0.2)
    deadline = time.monotonic() + 60
    q = None
    while time.monotonic() < deadline:
        q = subprocess.run([sys.executable, "-m", "lukspack", "fleet", "run", str(path), "--ray",
                            address, "--json"], env=env, capture_output=True, text=True,
                           timeout=600)
        if q.returncode == 0:
            break
        running = [i for i in json.loads(q.stdout)["images"] if i["status"] == "running"]
        assert running, q.stderr  # only a task of the killed driver not ended yet may be left
        time.sleep(2)
    assert q is not None and q.returncode == 0, q.stderr if q else ""
    assert json.loads(q.stdout)["all_done"] and imports_of(cloud) == ["rd-a", "rd-b"]
    left = s3.client().list_multipart_uploads(Bucket=s3server.BUCKET, Prefix="fleet/rd-")
    assert not left.get("Uploads")
