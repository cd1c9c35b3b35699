"""Fleet rows for the benchmark: 8 images (mixed formats: raw, qcow2, vmdk, vhd) into the local
S3 server (SeaweedFS, as the tests use) and the tests' IBM stand-ins, published by a shell loop
of `lukspack publish`, by `fleet run --jobs 1` and `--jobs 2`, and by `fleet run --ray local`
with one and two tasks at once. Wall time of each; peak RSS of each worker (from the fleet
state, the worker's own getrusage) and of the whole run (GNU time: the largest process).

    .venv/bin/python bench/fleet_bench.py [--size-mib 256] [--images 8] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
FORMATS = (("raw", "raw"), ("qcow2", "qcow2"), ("vmdk", "vmdk"), ("vhd", "vpc"))


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    from cloud_bench import timed as t  # bench/ is the script's folder

    return t(cmd, env)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--work", type=Path,
                    default=Path(tempfile.gettempdir()) / "lukspack-fleet-bench")
    a = ap.parse_args()
    from tests.cloud import s3server
    from tests.cloud.conftest import API_KEY, INSTANCE, Cloud

    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    srv = s3server.start(a.work / "s3")
    cloud = Cloud(srv)
    env = {**s3server.clean_env(), **s3server.env_for(srv), "IBMCLOUD_API_KEY": API_KEY,
           "LUKSPACK_POLL_S": "0.2", "XDG_CACHE_HOME": str(a.work / "cache"),
           "PYTHONPATH": str(ROOT / "src"), "RAY_USAGE_STATS_ENABLED": "0"}
    lp = [sys.executable, "-m", "lukspack"]
    raw = a.work / "disk.raw"
    subprocess.run(lp + ["sample", str(raw), "--size", str(a.size_mib)], env=env, check=True)
    sources = []
    for i in range(a.images):
        ext, qfmt = FORMATS[i % len(FORMATS)]
        p = a.work / f"disk{i}.{ext}"
        subprocess.run(["qemu-img", "convert", "-O", qfmt, str(raw), str(p)], check=True)
        sources.append(p)
    opts = ["--kms-url", cloud.kp.url, "--iam-url", cloud.iam_url, "--pbkdf-force-iterations",
            "1000"]
    rows_out: list[dict] = []

    def manifest(tag: str) -> Path:
        d = a.work / tag
        d.mkdir()
        rows = []
        for i, src in enumerate(sources):
            vpc = i % 2 == 0
            rows.append({"source": str(src), "target": "vpc" if vpc else "classic",
                         "name": f"{tag}-{i}", "os": "debian-12-amd64" if vpc else "UBUNTU_22_64",
                         "api_url": cloud.vpc.url if vpc else f"{cloud.sl.url}/rest/v3.1"})
        import yaml

        (d / "fleet.yaml").write_text(yaml.safe_dump({"defaults": {
            "output": f"cos://us-south/{s3server.BUCKET}/{tag}/", "key": "new",
            "skip_check": True, "root_key_crn": cloud.root_key_crn, "kms_instance": INSTANCE},
            "images": rows}))
        return d / "fleet.yaml"

    def fleet_row(label: str, tag: str, *extra: str) -> None:
        m = manifest(tag)
        wall, rss = timed(lp + ["fleet", "run", str(m), *opts, *extra], env)
        states = [json.loads(p.read_text()) for p in (m.parent / "fleet.yaml.state").glob("*.json")]
        per = max(s.get("peak_rss_mib") or 0 for s in states)
        rows_out.append({"row": label, "wall_s": round(wall, 1), "peak_rss_run_mib": round(rss),
                         "peak_rss_worker_mib": round(per)})
        print(json.dumps(rows_out[-1]), flush=True)

    # a shell loop of publish, one image after the other
    d = a.work / "loop"
    d.mkdir()
    t0 = time.perf_counter()
    peak = 0.0
    for i, src in enumerate(sources):
        vpc = i % 2 == 0
        args = ["publish", str(src), "--to", "vpc" if vpc else "classic", "--cos",
                f"cos://us-south/{s3server.BUCKET}/loop/loop-{i}"
                + (".qcow2" if vpc else ".vhd-0.vhd"), "--root-key-crn", cloud.root_key_crn,
                "--kms-instance", INSTANCE, "--name", f"loop-{i}", "--os",
                "debian-12-amd64" if vpc else "UBUNTU_22_64", "--new-key-file",
                str(d / f"{i}.key"), "--api-url",
                cloud.vpc.url if vpc else f"{cloud.sl.url}/rest/v3.1",
                # the sample disks hold no OS (the manifests say skip_check too); the encrypted
                # VHD has no key slots, so no KDF option for it
                "--skip-check", *(opts if vpc else opts[:4]), "--no-progress"]
        _, rss = timed(lp + args, env)
        peak = max(peak, rss)
    rows_out.append({"row": "shell loop of publish", "wall_s": round(time.perf_counter() - t0, 1),
                     "peak_rss_run_mib": round(peak), "peak_rss_worker_mib": round(peak)})
    print(json.dumps(rows_out[-1]), flush=True)
    fleet_row("fleet run --jobs 1", "j1", "--jobs", "1")
    fleet_row("fleet run --jobs 2", "j2", "--jobs", "2")
    ncpu = os.cpu_count() or 2
    fleet_row("fleet run --ray local, 1 task at once", "r1", "--ray", "local", "--ray-cpus",
              str(ncpu))
    fleet_row("fleet run --ray local, 2 tasks at once", "r2", "--ray", "local", "--ray-cpus",
              str(max(ncpu / 2, 0.1)))
    print(f"\n{a.images} images of {a.size_mib} MiB (raw, qcow2, vmdk, vhd in turn), half VPC, "
          f"half classic, {ncpu} CPUs")
    print(f"{'row':42} {'wall s':>7} {'peak RSS run MiB':>17} {'peak RSS worker MiB':>20}")
    for r in rows_out:
        print(f"{r['row']:42} {r['wall_s']:>7} {r['peak_rss_run_mib']:>17} "
              f"{r['peak_rss_worker_mib']:>20}")
    cloud.stop()
    srv.stop()


if __name__ == "__main__":
    main()
