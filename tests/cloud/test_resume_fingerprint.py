"""A --resume with any option that shapes the output changed is refused before anything is
streamed, naming the option (issue 17): the fingerprint of the kept upload holds the format,
LUKS type, cipher, key size, sector size, hash, PBKDF and its cost, UUID, label, subsystem and
key slot. Against the real S3 server of the session (SeaweedFS)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lukspack.cloud.errors import RemoteError
from lukspack.cloud.location import parse_cos
from lukspack.sinks.object import ObjectSink
from tests.cloud import s3server
from tests.cloud.test_kms import run_cli
from tests.helpers import cli_env, run

UUID = "8a2c5b3e-1234-4abc-8def-0123456789ab"
# the interrupted upload: LUKS2 RAW, PBKDF2 forced, so that every option can change
FIRST = ["--output-format", "raw", "--type", "luks2", "--pbkdf", "pbkdf2",
         "--pbkdf-force-iterations", "1000", "--uuid", UUID, "--label", "a",
         "--part-size", "5", "--concurrency", "1", "--no-progress"]


def _replace(flag: str, value: str) -> list[str]:
    args = list(FIRST)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


CHANGED = {
    "--output-format": [a for a in _replace("--output-format", "qcow2")
                        if a not in ("--type", "luks2", "--label", "a")],
    "--type": [a for a in _replace("--type", "luks1") if a not in ("--label", "a")],
    "--key-size": _replace("--key-size", "256"),
    "--sector-size": _replace("--sector-size", "4096"),
    "--hash": _replace("--hash", "sha512"),
    "--pbkdf": [a if a != "1000" else "4" for a in _replace("--pbkdf", "argon2id")]
    + ["--pbkdf-memory", "64"],
    "--pbkdf-force-iterations": _replace("--pbkdf-force-iterations", "2000"),
    "--iter-time": _replace("--iter-time", "100"),
    "--uuid": _replace("--uuid", "11111111-2222-4333-8444-555555555555"),
    "--label": _replace("--label", "b"),
    "--subsystem": _replace("--subsystem", "s"),
    "--key-slot": _replace("--key-slot", "1"),
}


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("disk") / "disk.img"
    run([sys.executable, "-m", "lukspack", "sample", str(p), "--size", "40"], env=cli_env())
    return p


def _parts(s3: s3server.S3Server, loc: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """Every multipart upload of the object and its parts (number, ETag), as the server has
    them."""
    c, where = s3.client(), parse_cos(loc)
    ups = c.list_multipart_uploads(Bucket=where.bucket, Prefix=where.key).get("Uploads", [])
    out = []
    for u in ups:
        parts = c.list_parts(Bucket=where.bucket, Key=where.key, UploadId=u["UploadId"])
        out.append((u["UploadId"], [(p["PartNumber"], p["ETag"])
                                    for p in parts.get("Parts", [])]))
    return out


def test_resume_with_a_changed_option_is_refused(cos_env, s3, disk, keyfile, tmp_path, capsys,
                                                 monkeypatch) -> None:
    loc = f"cos://{s3server.REGION}/{s3server.BUCKET}/fp/{tmp_path.name}.img"
    real_send = ObjectSink._send

    def send_then_fail(self, n, buf):  # the network goes once a few parts went out
        real_send(self, n, buf)
        # the upload is kept only once its header area is saved (the KDF thread may lag): from
        # part 7 on, or at the held header parts 1-4 that finish() sends last
        if self._journal.key_material is not None and (n >= 7 or n <= 4):
            self._sender.wait()
            raise RemoteError("connection reset by peer")

    monkeypatch.setattr(ObjectSink, "_send", send_then_fail)
    code, _, err = run_cli(["encrypt", str(disk), loc, "--key-file", str(keyfile), *FIRST],
                           capsys)
    assert code == 1 and "--resume" in err, err
    monkeypatch.setattr(ObjectSink, "_send", real_send)
    kept = _parts(s3, loc)
    assert len(kept) == 1 and len(kept[0][1]) >= 3  # parts from 5 on (1-4: the header, held)

    sent: list[int] = []

    def no_part(self, n, buf):  # a refused resume never gets this far
        sent.append(n)
        real_send(self, n, buf)

    monkeypatch.setattr(ObjectSink, "_send", no_part)
    for flag, args in CHANGED.items():
        code, _, err = run_cli(["encrypt", str(disk), loc, "--key-file", str(keyfile), *args,
                                "--resume"], capsys)
        assert code == 1, (flag, err)
        assert "kept upload was made with other output options" in err and flag in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert sent == [] and _parts(s3, loc) == kept, flag  # nothing new uploaded

    # the same options resume: only the parts the server lacks are sent
    monkeypatch.setattr(ObjectSink, "_send", real_send)
    code, out, err = run_cli(["encrypt", str(disk), loc, "--key-file", str(keyfile), *FIRST,
                              "--resume"], capsys)
    assert code == 0, err
    assert _parts(s3, loc) == []
    got = tmp_path / "dl.img"
    where = parse_cos(loc)
    got.write_bytes(s3.client().get_object(Bucket=where.bucket, Key=where.key)["Body"].read())
    run([sys.executable, "-m", "lukspack", "verify", str(got), "--key-file", str(keyfile),
         "--source", str(disk)], env=cli_env())


def test_the_python_api_records_the_fingerprint(cos_env, s3, disk, keyfile) -> None:
    """encrypt(..., EncryptOptions(sink_options=ObjectSinkOptions())) records the whole
    fingerprint without the caller computing it."""
    from lukspack.encrypt import make_sink
    from lukspack.options import EncryptOptions, fingerprint, kdf_options
    from lukspack.sinks.object import ObjectSinkOptions

    loc = f"cos://{s3server.REGION}/{s3server.BUCKET}/fp/api.qcow2"
    opts = EncryptOptions(kdf=kdf_options(hash="sha512"), sink_options=ObjectSinkOptions())
    sink = make_sink(loc, opts, (str(disk),))
    assert sink.options.fingerprint == fingerprint(opts, "qcow2")
    assert sink.options.fingerprint["hash"] == "sha512"
