"""Remote-source rows for bench/bench.py: the same 1 GiB VMDK (half data) to qcow2+LUKS read
from a local file, from `http://127.0.0.1` (bench/range_server.py, a plain-HTTP Range server in
its own process) and from `cos://` (the local SeaweedFS server of the tests), beside the peers:
download the object whole to a file first (curl, boto3 download_file) then encrypt the file, and
qemu-img reading the URL itself (its curl block driver). Wall, CPU (user+sys of the client
processes; the servers are not counted), GETs and bytes fetched (lukspack's `--json`
source_reads; the Range server's own count for curl and qemu-img; boto3's GetObject calls).

Every row is `--no-verify --iter-time 10` (qemu-img: encrypt.iter-time=10), so that key
derivation does not hide the cost of the reads; lukspack rows add `--json --no-digest` (the
summary, without the SHA-256 pass). Rows alternate round after round; the table gives medians.

    .venv/bin/python bench/remote_bench.py VMDK KEY_FILE [--rounds 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
LUKSPACK = [sys.executable, "-m", "lukspack"]
FAST = ["--no-verify", "--iter-time", "10", "--force", "--no-progress"]

BOTO3_GET = """
import json, sys, boto3
from botocore.config import Config
c = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-south",
                 config=Config(s3={"addressing_style": "path"},
                               response_checksum_validation="when_required"))
gets = []
c.meta.events.register("before-call.s3.GetObject", lambda **kw: gets.append(1))
c.download_file(sys.argv[2], sys.argv[3], sys.argv[4])
print(json.dumps({"gets": len(gets)}))
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, user+sys CPU s, stdout) of one process (wait4: the child's own rusage)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode:
            raise SystemExit(f"{cmd[:4]} failed ({p.returncode}): "
                             f"{err.read().decode()[-2000:]}")
        return wall, ru.ru_utime + ru.ru_stime, out.read().decode()


def _lk_reads(stdout: str) -> tuple[int | None, int]:
    s = json.loads(stdout)
    reads = s.get("source_reads")
    if reads:
        return reads["gets"], reads["bytes"]
    return None, s.get("source_bytes_read", 0)


class RangeServer:
    """bench/range_server.py in its own process, serving one directory."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "range_server.py"),
                                      str(root)], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/_stats") as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def bench_remote(work: Path, key: Path, vmdk: Path, rounds: int = 1) -> list[dict]:
    """Rows {name, wall_s, cpu_s, gets, mib}: medians over rounds (gets and bytes: the last)."""
    sys.path.insert(0, str(ROOT))
    from tests.cloud import s3server
    from tests.cloud.s3server import ACCESS_KEY, SECRET_KEY

    work.mkdir(parents=True, exist_ok=True)
    out, dl = work / "remote-out.qcow2", work / "remote-download.vmdk"
    http = RangeServer(vmdk.parent)
    weed = Path(tempfile.mkdtemp(dir=work, prefix="weed"))
    s3 = s3server.start(weed)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COS_", "AWS_"))}
        env.update(s3server.env_for(s3), AWS_ACCESS_KEY_ID=ACCESS_KEY,
                   AWS_SECRET_ACCESS_KEY=SECRET_KEY, PYTHONPATH=str(ROOT / "src"))
        obj = f"bench/{vmdk.name}"
        s3.client().upload_file(str(vmdk), s3server.BUCKET, obj)
        cos = f"cos://{s3server.REGION}/{s3server.BUCKET}/{obj}"
        url = f"{http.url}/{vmdk.name}"
        secret = f"secret,id=s0,file={key}"

        def lk(src: str | Path) -> tuple[float, float, int | None, int]:
            wall, cpu, so = timed([*LUKSPACK, "encrypt", str(src), str(out), "--key-file",
                                   str(key), *FAST, "--json", "--no-digest"], env)
            return (wall, cpu, *_lk_reads(so))

        def then_encrypt(fetch: list[str], counted: bool) -> tuple[float, float, int | None, int]:
            http.stats()
            w1, c1, so = timed(fetch, env)
            gets = json.loads(so)["gets"] if counted else http.stats()["gets"]
            size = dl.stat().st_size
            w2, c2, _, _ = lk(dl)
            dl.unlink()
            return w1 + w2, c1 + c2, gets, size

        def qemu_http() -> tuple[float, float, int | None, int]:
            http.stats()
            wall, cpu, _ = timed(["qemu-img", "convert", "-f", "vmdk", "-O", "qcow2",
                                  "--object", secret, "-o", "encrypt.format=luks,"
                                  "encrypt.key-secret=s0,encrypt.iter-time=10", url, str(out)],
                                 env)
            st = http.stats()
            return wall, cpu, st["gets"], st["bytes"]

        cases = {
            "local file: lukspack encrypt": lambda: lk(vmdk),
            "http://127.0.0.1 (Range server process): lukspack encrypt": lambda: lk(url),
            "http://127.0.0.1: curl -o file, then lukspack encrypt the file": lambda: then_encrypt(
                ["curl", "-sS", "-f", "-o", str(dl), url], False),
            "http://127.0.0.1: qemu-img convert (curl block driver)": qemu_http,
            "cos:// (local SeaweedFS): lukspack encrypt": lambda: lk(cos),
            "cos://: boto3 download_file, then lukspack encrypt the file": lambda: then_encrypt(
                [sys.executable, "-c", BOTO3_GET, s3.endpoint, s3server.BUCKET, obj, str(dl)],
                True),
        }
        got: dict[str, list[tuple[float, float, int | None, int]]] = {k: [] for k in cases}
        for r in range(rounds):
            for name, case in cases.items():
                if out.exists():
                    out.unlink()
                os.sync()
                got[name].append(case())
                print(f"round {r + 1}: {name}: {got[name][-1][0]:.2f} s", file=sys.stderr)
        if out.exists():
            out.unlink()
        rows = []
        for name, samples in got.items():
            rows.append({"name": name, "wall_s": statistics.median(s[0] for s in samples),
                         "cpu_s": statistics.median(s[1] for s in samples),
                         "gets": samples[-1][2], "mib": samples[-1][3] / MiB})
        return rows
    finally:
        http.stop()
        s3.stop()
        shutil.rmtree(weed, ignore_errors=True)  # the uploaded copy of the VMDK


def print_rows(rows: list[dict], vmdk: Path, rounds: int) -> None:
    print(f"\n| remote source -> qcow2+LUKS (1 GiB VMDK, half data, {vmdk.stat().st_size / MiB:.0f} "
          f"MiB file; --no-verify --iter-time 10; {rounds} round(s), medians) | wall s | CPU s "
          "| GETs | MiB fetched |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        gets = "-" if r["gets"] is None else str(r["gets"])
        mib = f"{r['mib']:.1f}" + (" (read)" if r["gets"] is None else "")
        print(f"| {r['name']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {gets} | {mib} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vmdk", type=Path)
    ap.add_argument("key_file", type=Path)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    a = ap.parse_args()
    print_rows(bench_remote(a.work, a.key_file, a.vmdk, a.rounds), a.vmdk, a.rounds)


if __name__ == "__main__":
    main()
