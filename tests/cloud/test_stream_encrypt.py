"""`encrypt SOURCE cos://...`: the one engine streams each output format into a multipart
upload (no local copy); the object is downloaded and opened by cryptsetup, qemu-img and
lukspack."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lukspack.cloud.location import parse_cos
from lukspack.cloud.multipart import MiB
from tests.cloud import s3server
from tests.cloud.test_kms import run_cli
from tests.helpers import FAST, cli_env, run, tool


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("disk") / "disk.img"
    run([sys.executable, "-m", "lukspack", "sample", str(p), "--size", "40"], env=cli_env())
    return p


def fetch(s3: s3server.S3Server, location: str, to: Path) -> Path:
    loc = parse_cos(location)
    to.write_bytes(s3.client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
    return to


@pytest.mark.parametrize("fmt,extra", [
    ("raw", ["--type", "luks1"]),
    ("raw", ["--type", "luks2", "--pbkdf", "pbkdf2"]),  # a 16 MiB header: several held parts
    ("qcow2", []),
    ("vhd", []),
])
def test_streamed_encryption_opens_with_the_peers(cos_env, s3, disk, keyfile, tmp_path, capsys,
                                                  fmt, extra) -> None:
    name = "img.vhd-0.vhd" if fmt == "vhd" else f"img.{fmt}"
    loc = f"cos://{s3server.REGION}/{s3server.BUCKET}/stream/{tmp_path.name}/{name}"
    code, out, err = run_cli(["encrypt", str(disk), loc, "--key-file", str(keyfile),
                              "--output-format", fmt, *extra,
                              *([] if fmt == "vhd" else FAST),  # the VHD has no key slots
                              "--no-progress", "--json"],
                             capsys)
    assert code == 0, err
    s = json.loads(out)
    # no local copy, no state file left: the only file is the key
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [keyfile]
    assert not s3.client().list_multipart_uploads(Bucket=s3server.BUCKET).get("Uploads")
    got = fetch(s3, loc, tmp_path / f"dl.{fmt}")
    assert got.stat().st_size == s["total_bytes"]
    run([sys.executable, "-m", "lukspack", "verify", str(got), "--key-file", str(keyfile),
         "--source", str(disk)], env=cli_env())
    if fmt == "raw":
        dump = run([tool("cryptsetup"), "luksDump", str(got)]).stdout.decode()
        assert ("Version:       \t2" in dump or "Version: \t2" in dump) == ("luks2" in extra)
        run([tool("cryptsetup"), "open", "--test-passphrase", "--key-file", str(keyfile),
             str(got)])
    if fmt == "vhd":  # the independent decryptor (struct + `cryptography`), as cryptsetup for RAW
        from lukspack.keys import vhd_key
        from tests.vhd_crypt.drive import independent_decrypt

        plain = independent_decrypt(got, bytes(vhd_key(keyfile.read_bytes())))
        want = disk.read_bytes()
        assert plain[: len(want)] == want and not plain[len(want):].strip(b"\0")
    if fmt == "qcow2":
        opts = f"driver=qcow2,encrypt.key-secret=s0,file.filename={got}"
        run([tool("qemu-img"), "compare", "--object", f"secret,id=s0,file={keyfile}",
             "--image-opts", opts, f"driver=raw,file.filename={disk}"])


def test_streamed_encryption_uses_sink_options(cos_env, s3, disk, keyfile, tmp_path) -> None:
    """The library call the CLI makes: ObjectSinkOptions in EncryptOptions.sink_options; with
    verify_remote the object's SHA-256 is read back."""
    import hashlib

    from lukspack.encrypt import encrypt
    from lukspack.luks.format import KdfOptions
    from lukspack.options import EncryptOptions
    from lukspack.sinks.object import ObjectSinkOptions, open_object_sink

    loc = f"cos://{s3server.REGION}/{s3server.BUCKET}/stream/opts.qcow2"
    sink_opts = ObjectSinkOptions(part_size=5 * MiB, concurrency=2, verify_remote=True)
    sink = open_object_sink(loc, sink_opts)
    opts = EncryptOptions(kdf=KdfOptions(force_iterations=1000), sink_options=sink_opts)
    s = encrypt(str(disk), loc, bytearray(keyfile.read_bytes()), opts, sink=lambda: sink)
    data = fetch(s3, loc, tmp_path / "o.qcow2").read_bytes()
    assert sink.output_sha256() == hashlib.sha256(data).hexdigest()
    assert len(data) == s["total_bytes"]


def test_open_streamed_resumes_an_interrupted_encryption(cos_env, s3, disk, keyfile,
                                                          tmp_path) -> None:
    """What `encrypt --resume` does with the sink: the engine, interrupted part way, keeps the
    upload; a second run recovers the volume key from the saved header and sends the rest."""
    from lukspack.encrypt import encrypt
    from lukspack.errors import Interrupted
    from lukspack.luks.format import KdfOptions
    from lukspack.options import EncryptOptions
    from lukspack.sinks.object import ObjectSink, ObjectSinkOptions, open_streamed

    loc = f"cos://{s3server.REGION}/{s3server.BUCKET}/stream/resumed.qcow2"
    opts = EncryptOptions(kdf=KdfOptions(force_iterations=1000))
    sink_opts = ObjectSinkOptions(part_size=5 * MiB, concurrency=1)
    fp = {"format": "qcow2"}
    first = open_streamed(loc, str(disk), sink_opts, fp)
    real_send = ObjectSink._send

    def send_then_stop(self, n, buf):  # interrupted after the third part went out
        real_send(self, n, buf)
        if n == 4:
            self._sender.wait()
            raise Interrupted(2)

    ObjectSink._send = send_then_stop  # type: ignore[method-assign]
    try:
        with pytest.raises(Interrupted, match="--resume"):
            encrypt(str(disk), loc, bytearray(keyfile.read_bytes()), opts, sink=lambda: first)
    finally:
        ObjectSink._send = real_send  # type: ignore[method-assign]
    sink_opts.resume = True
    again = open_streamed(loc, str(disk), sink_opts, fp)
    assert again.saved_key_material
    encrypt(str(disk), loc, bytearray(keyfile.read_bytes()), opts, sink=lambda: again,
            key_material=again.saved_key_material)
    assert again.kept_parts == 3  # parts 2-4 were on the server with the same MD5
    got = fetch(s3, loc, tmp_path / "r.qcow2")
    run([sys.executable, "-m", "lukspack", "verify", str(got), "--key-file", str(keyfile),
         "--source", str(disk)], env=cli_env())
