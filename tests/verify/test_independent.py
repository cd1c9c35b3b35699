"""Verification is independent of the writer: `encrypt` reads its output back through the
decrypting reader `verify` uses (offsets and IVs from the header and tables as written), so a
container whose plan is self-consistent but wrong (a run under the wrong IV, a run at the wrong
offset, a wrong qcow2 L2 entry, a wrong VHD BAT entry) fails the default `encrypt`: exit 1, one
line naming the first bad guest byte, and no output left (no file, no temporary, no object)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lukspack.cloud.location import parse_cos
from tests.cloud import s3server
from tests.helpers import FAST, Cli, leftovers, pattern_disk
from tests.verify.faults import FAULTS, Fault, expected_first_bad_byte, inject

FORMATS = {"raw": ("out.img", "raw"), "qcow2": ("out.qcow2", "qcow2"),
           "vhd": ("out.vhd", "vhd")}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = pattern_disk(tmp_path / "source.raw", 8)  # MiB 4: 0x04, MiB 5: random
    with open(src, "r+b") as f:  # a boot sector: no RAW note before the work, one line is ours
        f.seek(510)
        f.write(b"\x55\xaa")
    return src


@pytest.fixture
def key(tmp_path: Path) -> Path:
    import base64

    p = tmp_path / "dek.key"
    p.write_bytes(base64.b64encode(bytes(range(100, 132))))  # fixed: the oracle knows it
    p.chmod(0o600)
    return p


def _encrypt_args(source: Path, out: str, fmt: str, key: Path) -> list[str]:
    return ["encrypt", str(source), out, "--key-file", str(key), "--output-format",
            FORMATS[fmt][1], *(FAST if fmt != "vhd" else []), "--no-progress"]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.ident)
def test_a_wrong_container_fails_encrypt_to_a_file(fault: Fault, source: Path, key: Path,
                                                   tmp_path: Path, cli: Cli,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, fault)
    out = tmp_path / FORMATS[fault.fmt][0]
    err = cli.fails(*_encrypt_args(source, str(out), fault.fmt, key))
    at = expected_first_bad_byte(fault, source, key)
    assert f"{out}: verification failed: guest byte {at}," in err, err
    assert "does not decrypt to the source" in err
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.ident)
def test_a_wrong_container_fails_encrypt_to_an_object(fault: Fault, source: Path, key: Path,
                                                      tmp_path: Path, cli: Cli, cos_env, s3,
                                                      obj: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, fault)
    err = cli.fails(*_encrypt_args(source, obj, fault.fmt, key))
    at = expected_first_bad_byte(fault, source, key)
    assert f"verification failed: guest byte {at}," in err, err
    assert "the object was deleted" in err
    loc = parse_cos(obj)
    client = s3.client()
    assert client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.key).get("KeyCount", 0) == 0
    assert not client.list_multipart_uploads(Bucket=s3server.BUCKET).get("Uploads")
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["source.raw", "dek.key"]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_an_honest_container_verifies_through_the_reader(fmt: str, source: Path, key: Path,
                                                         tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / FORMATS[fmt][0]
    s = json.loads(cli(*_encrypt_args(source, str(out), fmt, key), "--json").stdout)
    assert s["verified"] is True and s["verification"] == "read back"
    assert out.exists()


def test_an_honest_object_verifies_after_upload(source: Path, key: Path, cli: Cli, cos_env, s3,
                                                obj: str) -> None:
    s = json.loads(cli(*_encrypt_args(source, obj, "qcow2", key), "--json").stdout)
    assert s["verification"] == "read back after upload"
    loc = parse_cos(obj)
    assert s3.client().head_object(Bucket=loc.bucket, Key=loc.key)["ContentLength"] == \
        s["total_bytes"]


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.fmt == "raw"], ids=lambda f: f.ident)
def test_a_wrong_container_fails_encrypt_to_a_block_device(fault: Fault, source: Path, key: Path,
                                                           tmp_path: Path, cli: Cli,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """A block device is read back through the reader too before encrypt reports it done (its
    content is then undefined, as after a failed `dd`). A loop device stands in for a disk."""
    from tests.helpers import loop_device

    backing = tmp_path / "disk.bin"
    with open(backing, "wb") as f:
        f.truncate(16 * (1 << 20))
    with loop_device(backing) as dev:  # skips only where the machine cannot have one, saying why
        inject(monkeypatch, fault)
        err = cli.fails(*_encrypt_args(source, dev, fault.fmt, key), "--force")
        at = expected_first_bad_byte(fault, source, key)
        assert f"{dev}: verification failed: guest byte {at}," in err, err


@pytest.mark.parametrize("fmt,luks_type", [("raw", "luks1"), ("raw", "luks2"), ("qcow2", "luks1")])
def test_the_read_back_spends_no_second_key_derivation(fmt: str, luks_type: str, source: Path,
                                                       key: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader unlocks the header as written with the key file; the derivations come from
    this encryption's KdfCache (the same inputs, read from those bytes), so verification adds
    no PBKDF2/Argon2 run: as many are computed as with --no-verify."""
    from lukspack.encrypt import encrypt
    from lukspack.luks.format import KdfOptions
    from lukspack.luks.kdf import KdfCache
    from lukspack.options import EncryptOptions, StreamOptions

    computed: list[object] = []
    real = KdfCache.derive

    def counting(self: KdfCache, k: tuple[object, ...], compute: object) -> bytearray:
        def once() -> bytes:
            computed.append(k)
            return compute()  # type: ignore[operator]

        return real(self, k, once)

    monkeypatch.setattr(KdfCache, "derive", counting)
    counts = {}
    for verify in (False, True):
        computed.clear()
        opts = EncryptOptions(luks_type=luks_type, output_format=fmt,
                              kdf=KdfOptions(pbkdf="pbkdf2", force_iterations=1000),
                              stream=StreamOptions(verify=verify))
        s = encrypt(str(source), str(tmp_path / f"o-{verify}.{fmt}"), key.read_bytes(), opts)
        assert s["verified"] is verify
        counts[verify] = len(computed)
    assert counts[True] == counts[False] > 0
