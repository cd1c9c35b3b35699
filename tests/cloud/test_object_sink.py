"""ObjectSink driven as the engine drives it (begin, ascending writes, key material, the prefix
last, finish, commit), against the real S3 server; then downloaded and compared byte for byte."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from lukspack.cloud.location import parse_cos
from lukspack.cloud.multipart import MiB, source_identity
from lukspack.errors import Interrupted, VerifyError
from lukspack.sinks.base import AfterCommit
from lukspack.sinks.object import ObjectSink, ObjectSinkOptions, open_object_sink
from tests.cloud import s3server


def image_bytes(total: int, seed: int) -> bytearray:
    return bytearray(random.Random(seed).randbytes(total))


def drive(sink: ObjectSink, image: bytes | bytearray, prefix_size: int, *, hole: tuple[int, int] |
          None = None, stop_at: int | None = None, material: bytes = b"HEADER-AREA") -> None:
    """Feed image to the sink as the engine does; raise Interrupted at output offset stop_at."""
    try:
        sink.begin(prefix_size, len(image))
        pos, rng = prefix_size, random.Random(7)
        while pos < len(image):
            n = min(len(image) - pos, rng.choice([4096, 65536, 1 << 20, 3 * MiB + 512]))
            if hole and hole[0] <= pos < hole[1]:
                pos = hole[1]  # the engine writes nothing for a hole: the sink fills zeros
                continue
            if stop_at is not None and pos >= stop_at:
                raise Interrupted(2)
            sink.write(pos, memoryview(bytes(image[pos:pos + n])))
            pos += n
            if pos > prefix_size + 8 * MiB:
                sink.keep_key_material(material)
        half = prefix_size // 2
        sink.write_prefix(half, bytes(image[half:prefix_size]))
        sink.write_prefix(0, bytes(image[:half]))
        sink.finish(len(image))
    except BaseException:
        sink.abort()
        raise
    sink.commit()


def download(s3: s3server.S3Server, location: str) -> bytes:
    loc = parse_cos(location)
    return s3.client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()


def no_uploads(s3: s3server.S3Server) -> bool:
    return not s3.client().list_multipart_uploads(Bucket=s3server.BUCKET).get("Uploads")


@pytest.mark.parametrize("prefix_size,total", [
    (2 * MiB + 4096, 23 * MiB + 512),  # LUKS1-like header, a short last part
    (16 * MiB, 30 * MiB),  # a LUKS2 header spans parts 1-4 of 5 MiB: all held until the end
    (65536, 3 * MiB),  # smaller than one part: part 1 is the only part
])
def test_stream_assembles_parts_by_number(cos_env, s3, obj, prefix_size, total) -> None:
    image = image_bytes(total, prefix_size)
    hole = (prefix_size + 5 * MiB, prefix_size + 6 * MiB + 4096)
    image[hole[0]:hole[1]] = bytes(hole[1] - hole[0])
    sink = open_object_sink(obj, ObjectSinkOptions(part_size=5 * MiB, concurrency=2,
                                                   verify_remote=True))
    assert isinstance(sink.read_back(), AfterCommit) and sink.concurrent_writes is False
    drive(sink, image, prefix_size, hole=hole if total > hole[1] else None)
    assert download(s3, obj) == image
    assert sink.output_sha256() == hashlib.sha256(image).hexdigest()
    assert no_uploads(s3)


def test_prefix_must_be_complete(cos_env, s3, obj) -> None:
    sink = open_object_sink(obj, ObjectSinkOptions(part_size=5 * MiB))
    sink.begin(MiB, 8 * MiB)
    sink.write(MiB, bytes(7 * MiB))
    sink.write_prefix(0, bytes(4096))
    with pytest.raises(Exception, match="prefix bytes were written"):
        try:
            sink.finish(8 * MiB)
        except BaseException:
            sink.abort()
            raise
    assert no_uploads(s3)  # a failure that will not pass: aborted, nothing left billed


def test_interrupted_stream_resumes_from_the_saved_state(cos_env, s3, obj, tmp_path: Path) -> None:
    src = tmp_path / "source.img"
    src.write_bytes(b"source" * 1000)
    opts = ObjectSinkOptions(part_size=5 * MiB, concurrency=2, source_identity=source_identity(
        str(src)), fingerprint={"format": "qcow2"}, state_dir=str(tmp_path / "state"))
    image = image_bytes(40 * MiB, 3)
    sink = open_object_sink(obj, opts)
    with pytest.raises(Interrupted, match="--resume"):
        drive(sink, image, 2 * MiB, stop_at=30 * MiB, material=b"LUKS-AREA")
    state = Path(sink.state_file)
    assert state.exists() and oct(state.stat().st_mode & 0o777) == "0o600"
    assert b"LUKS-AREA" not in state.read_bytes()  # base64, and only the header area
    assert not no_uploads(s3)  # kept for --resume

    opts.resume = True
    again = open_object_sink(obj, opts)
    assert again.saved_key_material == b"LUKS-AREA"
    image[35 * MiB] ^= 1  # a part that regenerates differently is sent again
    drive(again, image, 2 * MiB, material=b"LUKS-AREA")
    assert again.kept_parts >= 3
    assert download(s3, obj) == image
    assert not state.exists() and no_uploads(s3)


def test_resume_refuses_another_source(cos_env, s3, obj, tmp_path: Path) -> None:
    src = tmp_path / "source.img"
    src.write_bytes(b"a" * 5000)
    opts = ObjectSinkOptions(part_size=5 * MiB, source_identity=source_identity(str(src)),
                             state_dir=str(tmp_path))
    sink = open_object_sink(obj, opts)
    with pytest.raises(Interrupted):
        drive(sink, image_bytes(20 * MiB, 1), MiB, stop_at=14 * MiB)
    src.write_bytes(b"b" * 5001)
    opts.source_identity, opts.resume = source_identity(str(src)), True
    with pytest.raises(Exception, match="source changed.*size was 5000, is 5001"):
        open_object_sink(obj, opts)
    opts.resume = False
    fresh = open_object_sink(obj, opts)  # without --resume the kept upload is discarded
    assert fresh.discarded_upload and no_uploads(s3)


def test_verify_error_aborts_even_when_resumable(cos_env, s3, obj) -> None:
    sink = open_object_sink(obj, ObjectSinkOptions(part_size=5 * MiB))
    with pytest.raises(VerifyError):
        try:
            sink.begin(MiB, 20 * MiB)
            sink.write(MiB, bytes(12 * MiB))
            sink.keep_key_material(b"x")
            raise VerifyError("decrypted again before it was sent")
        except BaseException:
            sink.abort()
            raise
    assert no_uploads(s3)


def test_the_object_sink_provides_every_declared_member(cos_env, s3, obj) -> None:
    """As tests/sinks/test_declared.py for the file sinks: nothing the engine uses is probed."""
    from lukspack.sinks.base import Sink
    from tests.sinks.test_declared import missing

    sink = open_object_sink(obj, ObjectSinkOptions(part_size=5 * MiB))
    try:
        assert missing(sink, Sink) == [] and isinstance(sink, Sink)
        assert sink.direct is False and sink.saved_key_material is None
        assert sink.output_sha256() is None  # without verify_remote: a streamed object's
        sink.start_writeback()  # nothing to start: a no-op
    finally:
        sink.abort()
