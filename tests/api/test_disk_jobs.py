"""lukspack.api's disk jobs (encrypt, verify, decrypt, check) called from Python: their outputs
checked by cryptsetup and qemu-img, their results equal to what the CLI prints with --json, and
their rules raising the typed errors the CLI maps to exit code 2."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from lukspack import api
from lukspack.errors import LukspackError, UsageError, WrongKeyError
from lukspack.luks.format import HeaderFields, KdfOptions
from tests.helpers import FAST, Cli, MiB, cryptsetup, pattern_disk, qemu_img, qemu_luks_decrypt, same_prefix

KDF = KdfOptions(force_iterations=1000)


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    return pattern_disk(tmp_path / "s.raw", 3, tail=512)


def _capture(monkeypatch: pytest.MonkeyPatch, job: str) -> list[Any]:
    """The results the CLI's call of api.<job> returns, in this process."""
    seen: list[Any] = []
    real = getattr(api, job)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(api, job, spy)
    return seen


def _sha256_padded(path: Path, size: int) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data + bytes(size - len(data))).hexdigest()


def test_encrypt_luks2_checked_by_cryptsetup(tmp_path: Path, disk: Path,
                                                      keyfile: Path) -> None:
    out = tmp_path / "o.img"
    u = str(uuid.uuid4())
    r = api.encrypt(api.EncryptRequest(str(disk), str(out), api.KeySource(path=str(keyfile)),
                                       luks_type="luks2", kdf=KdfOptions(pbkdf="pbkdf2",
                                                                         force_iterations=1000),
                                       key_size=256, sector_size=4096,
                                       header=HeaderFields(uuid=u, label="api-test"),
                                       digests=True))
    assert isinstance(r, api.EncryptResult)
    dump = cryptsetup("luksDump", str(out)).stdout.decode()
    assert "Version:       \t2" in dump and u in dump and "api-test" in dump, dump
    assert "aes-xts-plain64" in dump and "256 bits" in dump and "sector: 4096" in dump, dump
    assert (r.kind, r.cipher, r.key_bits, r.sector_size) == ("luks2", "aes-xts-plain64", 256, 4096)
    assert r.total_bytes == out.stat().st_size == r.header_bytes + r.payload_bytes
    assert r.source_sha256 == hashlib.sha256(disk.read_bytes()).hexdigest()
    assert r.output_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert r.verified and r.verification in ("tee", "read back")
    assert r.disk_sha256 == _sha256_padded(disk, r.disk_bytes)
    assert cryptsetup("open", "--test-passphrase", "--key-file", str(keyfile),
                      str(out)).returncode == 0


def test_encrypt_luks1_decrypted_by_qemu(tmp_path: Path, disk: Path, keyfile: Path) -> None:
    out = tmp_path / "o.img"
    r = api.encrypt(api.EncryptRequest(str(disk), str(out), api.KeySource(path=str(keyfile)),
                                       kdf=KDF))
    assert "Version:       \t1" in cryptsetup("luksDump", str(out)).stdout.decode()
    plain = qemu_luks_decrypt(out, keyfile, tmp_path / "plain.raw")
    assert plain.stat().st_size == r.disk_bytes and same_prefix(plain, disk)
    assert r.source_sha256 is None and r.digests is None  # not asked for


@pytest.mark.parametrize(("fmt", "passphrase"), [("raw", False), ("qcow2", False), ("vhd", False),
                                                 ("qcow2", True)])
def test_encrypt_result_is_the_cli_json(cli: Cli, tmp_path: Path, disk: Path, keyfile: Path,
                                        monkeypatch: pytest.MonkeyPatch, fmt: str,
                                        passphrase: bool) -> None:
    """The CLI prints result.to_dict(), key for key and in the engine summary's order; the
    warnings always where the engine puts the source's (before direct_io), also when only the
    key rule gave one (a passphrase that is not a DEK, for qcow2+LUKS)."""
    from lukspack import encrypt as engine_encrypt

    if passphrase:
        keyfile = tmp_path / "pass"
        keyfile.write_bytes(b"correct horse battery staple")
        keyfile.chmod(0o600)
    summaries: list[dict[str, Any]] = []
    real = engine_encrypt.encrypt

    def keep(*args: Any, **kwargs: Any) -> dict[str, Any]:
        summaries.append(dict(real(*args, **kwargs)))
        return summaries[-1]

    monkeypatch.setattr(engine_encrypt, "encrypt", keep)
    seen = _capture(monkeypatch, "encrypt")
    p = cli("encrypt", disk, tmp_path / f"o.{fmt}", "-O", fmt, "--key-file", keyfile, "--json",
            *(FAST if fmt != "vhd" else []))
    printed = json.loads(p.stdout)
    assert len(seen) == 1 and printed == seen[0].to_dict()
    keys = [k for k in printed if k != "warnings"]
    assert keys == [k for k in summaries[0] if k != "warnings"]  # the same keys, same order
    assert list(printed)[list(printed).index("direct_io") - 1] == "warnings"  # s.raw: no table
    if passphrase:
        assert any("not a data encryption key" in w for w in printed["warnings"]), printed
    # the text lines name what the result says
    text = cli("encrypt", disk, tmp_path / f"t.{fmt}", "-O", fmt, "--key-file", keyfile,
               *(FAST if fmt != "vhd" else [])).stdout.decode()
    assert text.startswith(f"{tmp_path / f't.{fmt}'}: ") and f"source {disk} (raw," in text


def test_verify_and_decrypt(cli: Cli, tmp_path: Path, disk: Path, keyfile: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    enc = tmp_path / "o.qcow2"
    key = api.KeySource(path=str(keyfile))
    api.encrypt(api.EncryptRequest(str(disk), str(enc), key, kdf=KDF))
    info = json.loads(qemu_img("info", "--output=json", str(enc)).stdout)
    assert info["format"] == "qcow2" and info["encrypted"] is True
    v = api.verify(api.VerifyRequest(str(enc), key, source=str(disk)))
    assert v.matches_source is True and v.source_bytes == disk.stat().st_size
    assert v.disk_sha256 == _sha256_padded(disk, v.disk_bytes or 0)
    alone = api.verify(api.VerifyRequest(str(enc), key))
    assert alone.matches_source is None and alone.to_dict()["matches_source"] is None
    only = api.verify(api.VerifyRequest(str(enc), key, key_only=True))
    assert only.key_opens is True and "matches_source" not in only.to_dict()

    plain = tmp_path / "d.raw"
    d = api.decrypt(api.DecryptRequest(str(enc), str(plain), key))
    assert qemu_img("compare", "-f", "raw", "-F", "raw", str(disk), str(plain)).returncode == 0
    assert d.bytes == plain.stat().st_size and d.disk_sha256 == v.disk_sha256
    assert (plain.stat().st_mode & 0o777) == 0o600

    for args, job in ((["verify", enc, "--key-file", keyfile, "--source", disk], "verify"),
                      (["verify", enc, "--key-file", keyfile, "--key-only"], "verify"),
                      (["decrypt", enc, tmp_path / "d2.raw", "--key-file", keyfile], "decrypt")):
        seen = _capture(monkeypatch, job)
        printed = json.loads(cli(*args, "--json").stdout)
        assert printed == seen[-1].to_dict()
        monkeypatch.undo()

    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not the key")
    wrong.chmod(0o600)
    with pytest.raises(WrongKeyError) as e:
        api.verify(api.VerifyRequest(str(enc), api.KeySource(path=str(wrong))))
    assert api.exit_code(e.value) == 1


def test_check_result_is_the_cli_json(cli: Cli, disk: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk with no Linux on it: the check's FAIL is a result; raise_on_fail is exit 1."""
    r = api.check(api.CheckRequest(str(disk), "vpc"))
    assert r.failed and r.counts["FAIL"] == sum(f.status == "FAIL" for f in r.findings) > 0
    with pytest.raises(LukspackError) as e:
        r.raise_on_fail()
    assert api.exit_code(e.value) == 1 and str(disk) in str(e.value)
    seen = _capture(monkeypatch, "check")
    p = cli("check", disk, "--json", check=False)
    assert p.returncode == 1 and json.loads(p.stdout) == seen[0].to_dict()
    text = cli("check", disk, check=False).stdout.decode()
    assert text.splitlines() == r.lines()[:-1] + [text.splitlines()[-1]]  # the timing line aside


def _request(tmp_path: Path, disk: Path, **kw: Any) -> api.EncryptRequest:
    # a key file that does not exist: a rule broken is said before any key is read
    return api.EncryptRequest(str(disk), str(tmp_path / kw.pop("output", "o.img")),
                              api.KeySource(path=str(tmp_path / "missing.key")), **kw)


@pytest.mark.parametrize(("kw", "said"), [
    ({"key_size": 300}, "--key-size 300 is not a whole number of bytes"),
    ({"key_size": 128}, "--key-size 128 is not supported for aes-xts-plain64"),
    ({"cipher": "serpent-xts-plain64"}, "--cipher serpent-xts-plain64 is not supported"),
    ({"kdf": KdfOptions(pbkdf="argon2id")}, "LUKS1 key slots use pbkdf2 only, not --pbkdf argon2id"),
    ({"output_format": "vmdk"}, "lukspack does not write vmdk images"),
    ({"output_format": "vhd", "sector_size": 4096}, "--sector-size 4096 does not apply to vhd"),
    ({"skip_check": True}, "--skip-check skips the check of --target"),
    ({"upload": api.ObjectUpload(resume=True, part_size_mib=8)},
     "--resume, --part-size apply to a cos:// OUTPUT (a multipart upload), not "),
    ({"kdf": KdfOptions(hash="md4x")}, "--hash md4x is not a known hash"),
])
def test_encrypt_rules_raise_usage_errors(tmp_path: Path, disk: Path, kw: dict[str, Any],
                                          said: str) -> None:
    with pytest.raises(UsageError) as e:
        api.encrypt(_request(tmp_path, disk, **kw))
    assert said in str(e.value) and api.exit_code(e.value) == 2
    assert not (tmp_path / "o.img").exists()


def test_cli_says_the_jobs_messages(cli: Cli, tmp_path: Path, disk: Path, keyfile: Path) -> None:
    """The CLI's line for a broken rule is the job's message."""
    with pytest.raises(UsageError) as e:
        api.encrypt(_request(tmp_path, disk, key_size=300))
    err = cli.fails("encrypt", disk, tmp_path / "o.img", "--key-file", keyfile, "-s", "300",
                    code=2)
    assert err == f"lukspack: usage error: {e.value}"


def test_digest_and_verify_rules(tmp_path: Path, disk: Path) -> None:
    with pytest.raises(UsageError, match="--no-digest skips the SHA-256 of --json") as e:
        api.json_digests(False, True)
    assert api.exit_code(e.value) == 2
    assert api.json_digests(True, False) and not api.json_digests(True, True)
    key = api.KeySource(path=str(tmp_path / "missing.key"))
    for req, said in ((api.VerifyRequest(str(disk), key, source=str(disk), key_only=True),
                       "--key-only decrypts nothing"),
                      (api.VerifyRequest(str(disk), key, input_format="raw"),
                       "--input-format and --disk describe --source"),
                      (api.VerifyRequest(str(disk), key, disk=0),
                       "--input-format and --disk describe --source")):
        with pytest.raises(UsageError, match=said) as e:
            api.verify(req)
        assert api.exit_code(e.value) == 2


def test_results_refuse_undeclared_keys() -> None:
    with pytest.raises(TypeError, match="does not declare"):
        api.DecryptResult.from_summary({"image": "i", "format": "raw", "type": "luks1",
                                        "cipher": "c", "output": "o", "bytes": MiB,
                                        "disk_bytes": MiB, "disk_sha256": "0", "new_key": 1})
