"""kill -9 part way: of one local-pool worker, and of the whole `fleet run` (--jobs 4, qcow2 x2,
LUKS RAW and the encrypted VHD, every upload open when the kill comes). A rerun completes every
image; each object decrypts to its source byte for byte (`verify --source`), matches the
checksum its image reports, and each resumed object is byte-identical to an uninterrupted run
with the same key and the same saved header (identical.py); no image is imported twice; no
multipart upload is left open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lukspack.cloud.location import parse_cos
from lukspack.cloud.multipart import state_name
from tests.cloud import s3server
from tests.cloud.s3proxy import S3Proxy, hold_parts_from, kill_9_and_stop
from tests.fleet.conftest import FORMATS, classic_row, defaults_for, vpc_row, write_manifest
from tests.fleet.identical import resumed_identical, saved_key_material, sources_of
from tests.fleet.test_run import download, imports_of
from tests.helpers import cli_env, run, tool


@pytest.fixture(scope="module")
def big_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fleet-big")
    raw = d / "disk.raw"
    run([sys.executable, "-m", "lukspack", "sample", str(raw), "--size", "32"], env=cli_env())
    out = {"raw": raw}
    for fmt in ("qcow2", "vmdk"):
        out[fmt] = d / f"disk.{fmt}"
        run([tool("qemu-img"), "convert", "-O", FORMATS[fmt], str(raw), str(out[fmt])])
    return out


def rows_of(cloud, imgs: dict[str, Path], prefix: str) -> list[dict]:
    """qcow2 (from a VMDK), LUKS RAW (from a qcow2), qcow2 (from RAW), encrypted VHD (RAW)."""
    return [vpc_row(cloud, imgs["vmdk"], f"{prefix}-a"),
            classic_row(cloud, imgs["qcow2"], f"{prefix}-b", format="raw"),
            vpc_row(cloud, imgs["raw"], f"{prefix}-c"),
            classic_row(cloud, imgs["raw"], f"{prefix}-d")]


def manifest(cloud, imgs: dict[str, Path], tmp_path: Path, prefix: str) -> Path:
    return write_manifest(tmp_path / "f.yaml", rows_of(cloud, imgs, prefix), defaults_for(cloud))


def env_of(cos_env: dict[str, str]) -> dict[str, str]:
    return {**cli_env(), **cos_env, "IBMCLOUD_API_KEY": os.environ["IBMCLOUD_API_KEY"],
            "LUKSPACK_POLL_S": "0.05", "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}


def fleet(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lukspack", "fleet", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def journal_parts(path: Path) -> int:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    return data.count(b'"part"') if b"key_material" in data else 0


def kill_victim_part_way(cmd: list[str], env: dict[str, str], proxy: S3Proxy, journal: Path,
                         state_file: Path, wait_s: float = 120
                         ) -> tuple[subprocess.Popen[str], int, str, str, dict[str, bytes]]:
    """Run `fleet run` through the proxy, kill -9 the worker of the victim once its upload journal
    holds two parts (and the key material), drop the requests the proxy held for it, let the run
    end; (the fleet process, the victim worker's pid, stdout, stderr, the key material saved at
    the kill: identical.saved_key_material, read before a retry can finish and remove it)."""
    p = subprocess.Popen(cmd, env={**env, "COS_ENDPOINT": proxy.url}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + wait_s
        while journal_parts(journal) < 2 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert journal_parts(journal) >= 2, p.stderr.read() if p.poll() is not None else ""
        pid = json.loads(state_file.read_text())["pid"]
        saved = saved_key_material(journal.parent)
        os.kill(pid, signal.SIGKILL)
        proxy.release()
        out, err = p.communicate(timeout=300)
    finally:
        proxy.stop()
        if p.poll() is None:
            p.kill()
    return p, pid, out, err, saved


def check_complete(cloud, s3, imgs, tmp_path: Path, r: dict, prefix: str) -> None:
    assert r["all_done"], r
    assert imports_of(cloud) == [f"{prefix}-{x}" for x in "abcd"]  # once each
    for i, src in zip(r["images"], ("vmdk", "qcow2", "raw", "raw"), strict=True):
        got = download(s3, i["output"], tmp_path / f"dl-{i['name']}")
        run([sys.executable, "-m", "lukspack", "verify", str(got), "--key-file",
             str(tmp_path / "keys" / f"{i['name']}.key"), "--source", str(imgs[src])],
            env=cli_env())
    vpc = [i for i in cloud.vpc.images.values()]
    assert all(i["status"] == "available" for i in vpc)  # the image's SHA-256 matched
    left = s3.client().list_multipart_uploads(Bucket=s3server.BUCKET, Prefix="fleet/")
    assert not [u for u in left.get("Uploads") or [] if u["Key"].startswith(f"fleet/{prefix}")]


def test_kill_9_a_worker_then_rerun(cloud, s3, cos_env, big_images, tmp_path) -> None:
    path = manifest(cloud, big_images, tmp_path, "kw")
    env = env_of(cos_env)
    # the victim's parts from the 4th on wait: its upload is open when the kill comes (the
    # read-back after an upload, or a fast machine, would otherwise let it finish first)
    proxy = S3Proxy(s3.endpoint, delay_s=0.2, hold=hold_parts_from("kw-a.qcow2", 4))
    state_dir = tmp_path / "f.yaml.state"
    victim = "kw-a"
    journal = state_dir / "uploads" / (
        state_name(parse_cos(f"cos://us-south/{s3server.BUCKET}/fleet/{victim}.qcow2"))
        + ".lukspack-upload")
    p, pid, out, err, saved = kill_victim_part_way(
        [sys.executable, "-m", "lukspack", "fleet", "run", str(path), "--jobs", "2", "--json"],
        env, proxy, journal, state_dir / f"{victim}.json")
    assert proxy.dropped >= 1  # the victim's held parts: never forwarded
    assert pid != p.pid
    assert p.returncode == 1, err
    r = json.loads(out)
    status = {i["name"]: i["status"] for i in r["images"]}
    assert status == {"kw-a": "failed", "kw-b": "done", "kw-c": "done", "kw-d": "done"}, err
    assert "the worker killed by signal 9" in r["images"][0]["error"]
    assert imports_of(cloud) == ["kw-b", "kw-c", "kw-d"]
    q = fleet(["run", str(path), "--json"], env)
    assert q.returncode == 0, q.stderr
    r = json.loads(q.stdout)
    assert r["images"][0]["attempts"] == 2
    resumed = json.loads((state_dir / f"{victim}.json").read_text())["resumed_parts"]
    assert resumed >= 2  # the kept multipart upload continued, not started again
    check_complete(cloud, s3, big_images, tmp_path, r, "kw")
    sources = sources_of(rows_of(cloud, big_images, "kw"))
    # the victim; and any image whose upload was open then (it finished in the first run)
    assert victim in resumed_identical(s3, r, saved, sources, tmp_path / "keys", tmp_path)


def test_kill_9_the_fleet_run_then_rerun(cloud, s3, cos_env, big_images, tmp_path) -> None:
    rows = rows_of(cloud, big_images, "kf")
    path = write_manifest(tmp_path / "f.yaml", rows, defaults_for(cloud))
    env = env_of(cos_env)
    uploads = tmp_path / "f.yaml.state" / "uploads"
    # every image's parts from the 4th on wait: all four uploads are open, each with parts on
    # the server and its header saved, when the kill comes
    proxy = S3Proxy(s3.endpoint, delay_s=0.1, hold=hold_parts_from("/fleet/kf-", 4),
                    hold_s=120)
    p = subprocess.Popen([sys.executable, "-m", "lukspack", "fleet", "run", str(path), "--jobs",
                          "4"], env={**env, "COS_ENDPOINT": proxy.url}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and p.poll() is None and not (
                len(js := list(uploads.glob("*.lukspack-upload"))) == 4
                and all(journal_parts(j) >= 2 for j in js)):
            time.sleep(0.05)
        assert p.poll() is None, p.communicate()[1]
        saved = saved_key_material(uploads)
    finally:
        kill_9_and_stop(p, proxy)
    assert len(saved) == 4, sorted(saved)
    time.sleep(0.5)  # the workers die with the run (PR_SET_PDEATHSIG)
    states = [json.loads(p.read_text()) for p in (tmp_path / "f.yaml.state").glob("*.json")]
    assert len(states) == 4 and all(s["status"] == "running" for s in states)
    st = fleet(["status", str(path), "--json"], env)
    assert st.returncode == 0 and {i["status"] for i in json.loads(st.stdout)["images"]} == \
        {"interrupted"}
    assert not imports_of(cloud)
    q = fleet(["run", str(path), "--jobs", "4", "--json"], env)
    assert q.returncode == 0, q.stderr
    r = json.loads(q.stdout)
    check_complete(cloud, s3, big_images, tmp_path, r, "kf")
    resumed = [json.loads(p.read_text()).get("resumed_parts") or 0
               for p in (tmp_path / "f.yaml.state").glob("*.json")]
    assert min(resumed) >= 2  # every kept upload continued
    assert resumed_identical(s3, r, saved, sources_of(rows), tmp_path / "keys", tmp_path) == \
        ["kf-a", "kf-b", "kf-c", "kf-d"]


def test_sigterm_stops_the_run_and_keeps_the_uploads(cloud, s3, cos_env, big_images,
                                                     tmp_path) -> None:
    path = manifest(cloud, big_images, tmp_path, "ts")
    env = env_of(cos_env)
    uploads = tmp_path / "f.yaml.state" / "uploads"
    proxy = S3Proxy(s3.endpoint, delay_s=0.4)
    p = subprocess.Popen([sys.executable, "-m", "lukspack", "fleet", "run", str(path), "--jobs",
                          "2"], env={**env, "COS_ENDPOINT": proxy.url}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None and \
                not any(journal_parts(j) >= 2 for j in uploads.glob("*.lukspack-upload")):
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        proxy.stop()
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    assert err.rstrip().splitlines()[-1] == "lukspack: interrupted by SIGTERM"
    states = [json.loads(s.read_text()) for s in (tmp_path / "f.yaml.state").glob("*.json")]
    stopped = [s for s in states if s["status"] == "failed"]
    assert stopped and all("SIGTERM" in s["error"] for s in stopped), states
    kept = list(uploads.glob("*.lukspack-upload"))  # an upload that had not finished
    q = fleet(["run", str(path), "--json"], env)
    assert q.returncode == 0, q.stderr
    check_complete(cloud, s3, big_images, tmp_path, json.loads(q.stdout), "ts")
    resumed = [json.loads(p.read_text()).get("resumed_parts") or 0
               for p in (tmp_path / "f.yaml.state").glob("*.json")]
    assert not kept or max(resumed) >= 1  # what was kept was resumed, not sent again
