"""Memory stays bounded while a 2 GiB image streams into object storage: the sink's process,
driven as the engine drives it, never holds more than the parts in flight."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cloud import s3server
from tests.helpers import cli_env

DRIVER = r"""
import hashlib, json, os, sys
from lukspack.sinks.object import ObjectSinkOptions, open_object_sink
MiB = 1 << 20
total, prefix = int(sys.argv[2]), 2 * MiB
sink = open_object_sink(sys.argv[1], ObjectSinkOptions(part_size=8 * MiB, concurrency=2,
                                                        verify_remote=True))
base = hashlib.sha256(b"pattern").digest() * (MiB // 32)
def mib(i):
    return i.to_bytes(8, "little") + base[8:]
whole = hashlib.sha256()
sink.begin(prefix, total)
for i in range(prefix // MiB, total // MiB):
    sink.write(i * MiB, mib(i))
sink.keep_key_material(b"header")
head = b"".join(mib(i) for i in range(prefix // MiB))
sink.write_prefix(0, head)
sink.finish(total)
sink.commit()
for i in range(total // MiB):
    whole.update(mib(i))
# VmHWM is this process's own peak (ru_maxrss would include the forking parent's RSS, which
# Linux carries over exec)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"maxrss_mib": hwm / 1024,
                  "sha256": whole.hexdigest(), "remote": sink.output_sha256()}))
"""


@pytest.mark.slow
def test_2_gib_stream_peak_rss(cos_env, s3, obj) -> None:
    total = 2 << 30
    p = subprocess.run([sys.executable, "-c", DRIVER, obj, str(total)],
                       env={**cli_env(), **cos_env}, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["remote"] == r["sha256"]  # read back from the server, part by part
    # 8 MiB parts, 2 in flight: the held part, the one being filled, two sent (botocore holds a
    # second copy of a body while it sends it), on top of ~50 MiB of Python and boto3
    assert r["maxrss_mib"] < 200, r


ENCRYPT = r"""
import json, sys
from lukspack.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"code": code, "maxrss_mib": hwm / 1024}), file=sys.stderr)
"""


@pytest.mark.slow
def test_2_gib_streamed_encryption_peak_rss(cos_env, s3, obj, keyfile, tmp_path) -> None:
    """The engine and the sink together: `encrypt SOURCE cos://...` of a 2 GiB disk, no local
    copy; the engine's chunks plus 16 MiB parts x (4 + 1) and the held part."""
    src = tmp_path / "disk.img"
    env = {**cli_env(), **cos_env}
    subprocess.run([sys.executable, "-m", "lukspack", "sample", str(src), "--size", "2048"],
                   env=env, check=True, capture_output=True)
    p = subprocess.run([sys.executable, "-c", ENCRYPT, "encrypt", str(src), obj, "--key-file",
                        str(keyfile), "--pbkdf-force-iterations", "1000", "--no-progress",
                        "--output-format", "raw"], env=env, capture_output=True, text=True,
                       timeout=900)
    r = json.loads(p.stderr.strip().splitlines()[-1])  # no local copy is checked below
    assert r["code"] == 0, p.stderr
    size = s3.client().head_object(Bucket=s3server.BUCKET, Key=obj.split("/", 4)[4])
    assert size["ContentLength"] == (2 << 30) + (2 << 20)  # payload + LUKS1 header
    assert sorted(f for f in tmp_path.rglob("*") if f.is_file()) == sorted([src, keyfile])
    assert r["maxrss_mib"] < 320, r
