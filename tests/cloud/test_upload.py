"""`upload` against a real S3 server (SeaweedFS): one PUT, multipart, part sizing, resume after
kill -9, abort on failure, a part damaged in flight refused by the server and sent again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lukspack.cloud.errors import CloudError
from lukspack.cloud.location import parse_cos
from lukspack.cloud.multipart import MiB, choose_part_size
from lukspack.cloud.upload import CosOptions, upload_file
from tests.cloud import s3server


def make_file(path: Path, size: int, seed: int = 1) -> Path:
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    with open(path, "wb") as f:
        left = size
        i = 0
        while left:
            chunk = bytes([i % 256]) + block[1:]
            f.write(chunk[:left])
            left -= min(left, len(chunk))
            i += 1
    return path


def stored(s3: s3server.S3Server, location: str) -> tuple[bytes, dict[str, str]]:
    loc = parse_cos(location)
    r = s3.client().get_object(Bucket=loc.bucket, Key=loc.key)
    return r["Body"].read(), r["Metadata"]


def test_part_size_grows_to_fit_10000_parts() -> None:
    assert choose_part_size(100 * MiB, 1 * MiB) == 5 * MiB  # 5 MiB minimum
    assert choose_part_size(100 * MiB, 16 * MiB) == 16 * MiB
    size = choose_part_size(250 * 1000**3, 16 * MiB)  # a 250 GB VPC image
    assert size % MiB == 0 and -(-250 * 1000**3 // size) <= 10_000 and size > 16 * MiB
    with pytest.raises(CloudError, match="10000 parts"):
        choose_part_size(10_000 * 5 * 1024 * MiB + 1)


def test_small_upload_one_put_with_sha256_metadata(cos_env, s3, obj, tmp_path) -> None:
    f = make_file(tmp_path / "small.img", 3 * MiB + 17)
    s = upload_file(str(f), obj, CosOptions(part_size=5 * MiB))
    data, meta = stored(s3, obj)
    assert data == f.read_bytes()
    assert s["parts"] == 1 and s["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["sha256"] == s["sha256"]


def test_multipart_upload_parallel_parts(cos_env, s3, obj, tmp_path) -> None:
    f = make_file(tmp_path / "big.img", 23 * MiB + 5)
    seen: list[tuple[str, int, int]] = []
    s = upload_file(str(f), obj, CosOptions(part_size=5 * MiB, concurrency=3, verify_remote=True),
                    progress=lambda p, d, t: seen.append((p, d, t)))
    data, meta = stored(s3, obj)
    assert data == f.read_bytes()
    assert s["parts"] == 5 and s["sent_parts"] == 5 and s["verified_remote"]
    assert meta["sha256"] == hashlib.sha256(data).hexdigest() == s["sha256"]
    assert ("upload", 23 * MiB + 5, 23 * MiB + 5) in seen
    loc = parse_cos(obj)
    assert not s3.client().list_multipart_uploads(Bucket=loc.bucket).get("Uploads")
    assert not list(tmp_path.glob(".*lukspack-upload"))  # state file removed


def test_wrong_secret_is_refused_by_the_server(cos_env, s3, obj, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COS_HMAC_SECRET_ACCESS_KEY", "not-the-secret")
    f = make_file(tmp_path / "small.img", MiB)
    with pytest.raises(CloudError, match="SignatureDoesNotMatch"):
        upload_file(str(f), obj)


def test_part_damaged_in_flight_is_refused_and_sent_again(cos_env, s3, obj, tmp_path,
                                                         monkeypatch) -> None:
    from tests.cloud.s3proxy import S3Proxy, part_rule

    proxy = S3Proxy(s3.endpoint, corrupt=part_rule(2, times=1))
    monkeypatch.setenv("COS_ENDPOINT", proxy.url)
    try:
        f = make_file(tmp_path / "f.img", 12 * MiB)
        s = upload_file(str(f), obj, CosOptions(part_size=5 * MiB, concurrency=2))
    finally:
        proxy.stop()
    assert proxy.flipped == 1 and ("PUT", 400) in proxy.statuses  # the server refused it
    assert s["retries"] == 1
    data, meta = stored(s3, obj)
    assert data == f.read_bytes() and meta["sha256"] == hashlib.sha256(data).hexdigest()


def test_failing_upload_leaves_no_multipart_upload(cos_env, s3, obj, tmp_path,
                                                   monkeypatch) -> None:
    from tests.cloud.s3proxy import S3Proxy, part_rule

    proxy = S3Proxy(s3.endpoint, corrupt=part_rule(3, times=None))
    monkeypatch.setenv("COS_ENDPOINT", proxy.url)
    f = make_file(tmp_path / "f.img", 16 * MiB)
    try:
        with pytest.raises(CloudError, match="part 3 refused 4 times"):
            upload_file(str(f), obj, CosOptions(part_size=5 * MiB, concurrency=2))
    finally:
        proxy.stop()
    loc = parse_cos(obj)
    assert not s3.client().list_multipart_uploads(Bucket=loc.bucket).get("Uploads")
    assert not list(tmp_path.glob(".*lukspack-upload"))
    with pytest.raises(Exception, match="NoSuchKey|Not Found|404"):
        s3.client().head_object(Bucket=loc.bucket, Key=loc.key)


def test_kill_9_then_resume_gives_the_same_object(cos_env, s3, obj, tmp_path) -> None:
    import sys

    from tests.cloud.s3proxy import kill_9_part_way
    from tests.helpers import cli_env

    f = make_file(tmp_path / "big.img", 41 * MiB + 3)
    cmd = [sys.executable, "-m", "lukspack", "upload", str(f), obj, "--part-size", "5",
           "--concurrency", "2", "--no-progress"]
    state = kill_9_part_way(cmd, {**cli_env(), **cos_env}, s3.endpoint,
                            lambda: list(tmp_path.glob(".big.img.*.lukspack-upload")))
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    loc = parse_cos(obj)
    assert s3.client().list_multipart_uploads(Bucket=loc.bucket).get("Uploads")  # left by kill
    # without --resume the kept upload is refused rather than silently duplicated
    with pytest.raises(CloudError, match="--resume"):
        upload_file(str(f), obj)
    s = upload_file(str(f), obj, CosOptions(resume=True, concurrency=2))
    assert s["resumed"] and s["kept_parts"] >= 3 and s["sent_parts"] < s["parts"] == 9
    data, meta = stored(s3, obj)
    assert data == f.read_bytes() and meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert not state.exists()
    assert not s3.client().list_multipart_uploads(Bucket=loc.bucket).get("Uploads")


def test_resume_refuses_a_changed_file(cos_env, s3, obj, tmp_path, monkeypatch) -> None:
    import lukspack.cloud.multipart as mp
    from lukspack.cloud.upload import abort_kept
    from lukspack.errors import Interrupted

    f = make_file(tmp_path / "f.img", 16 * MiB)
    real = mp.PartSender.done

    def interrupted_after_part_1(self, n, rec, sent=False):
        real(self, n, rec, sent)
        if n == 1:
            raise Interrupted(2)

    monkeypatch.setattr(mp.PartSender, "done", interrupted_after_part_1)
    with pytest.raises(Interrupted, match="run the same command with --resume"):
        upload_file(str(f), obj, CosOptions(part_size=5 * MiB, concurrency=1))
    monkeypatch.setattr(mp.PartSender, "done", real)
    with open(f, "r+b") as fh:
        fh.write(b"changed")
    with pytest.raises(CloudError, match="changed since the kept upload started"):
        upload_file(str(f), obj, CosOptions(resume=True))
    assert abort_kept(str(f), obj)["aborted"]
    loc = parse_cos(obj)
    assert not s3.client().list_multipart_uploads(Bucket=loc.bucket).get("Uploads")
    assert not list(tmp_path.glob(".*lukspack-upload"))


def test_sigint_keeps_the_upload_and_says_how_to_resume(cos_env, s3, obj, tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from tests.cloud.s3proxy import S3Proxy
    from tests.helpers import cli_env

    f = make_file(tmp_path / "f.img", 30 * MiB)
    proxy = S3Proxy(s3.endpoint, delay_s=0.3)
    env = {**cli_env(), **cos_env, "COS_ENDPOINT": proxy.url}
    p = subprocess.Popen([sys.executable, "-m", "lukspack", "upload", str(f), obj, "--part-size",
                          "5", "--concurrency", "1", "--no-progress"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(tmp_path.glob(".f.img.*.lukspack-upload")):
            time.sleep(0.05)
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        proxy.stop()
    assert p.returncode == 130, err
    assert "interrupted by SIGINT" in err and "--resume" in err and err.count("\n") == 1
    s = upload_file(str(f), obj, CosOptions(resume=True))
    assert s["resumed"] and stored(s3, obj)[0] == f.read_bytes()
