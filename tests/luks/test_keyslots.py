"""add-key and remove-key, LUKS1 and LUKS2: cryptsetup opens with added keys, not with removed
ones; both LUKS2 copies are rewritten with seqid + 1; the last key slot is never removed."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from lukspack.luks import luks2
from lukspack.luks.format import KdfOptions
from lukspack.luks.keyslots import add_key
from tests.helpers import Cli, InProcessCli, MiB, cryptsetup, pattern_disk
from tests.luks.luks_helpers import (
    CS_ARGON2ID,
    CS_PBKDF2,
    LP_ARGON2,
    LP_FAST,
    cs_dump,
    cs_format,
    cs_opens,
    qemu_fill,
    reencrypt_fill,
    write_key,
)

HDR = 16384
FAST = ["--pbkdf", "pbkdf2", *LP_FAST]  # without --pbkdf, LUKS2 slots are argon2id


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One LUKS1 and one LUKS2 image made by lukspack, copied by each test."""
    d = tmp_path_factory.mktemp("made")
    src = pattern_disk(d / "src.raw", 1)
    key = write_key(d / "dek", b"Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWo=")
    cli = InProcessCli(d)
    cli("encrypt", src, d / "l2.img", "--key-file", key, "--type", "luks2", *FAST)
    cli("encrypt", src, d / "l1.img", "--key-file", key, "--type", "luks1", *FAST)
    return {"luks2": d / "l2.img", "luks1": d / "l1.img", "key": key, "src": src}


def _copy(made: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copy(made[kind], tmp_path / f"{kind}.img"))


def _seqids(image: Path) -> tuple[int, int]:
    raw = image.read_bytes()[: 2 * HDR]
    return struct.unpack_from(">Q", raw, 16)[0], struct.unpack_from(">Q", raw, HDR + 16)[0]


@pytest.mark.parametrize("kind", ["luks1", "luks2"])
def test_add_then_remove(cli: Cli, made: dict[str, Path], tmp_path: Path, kind: str) -> None:
    image, key = _copy(made, kind, tmp_path), made["key"]
    new = write_key(tmp_path / "new", b"a passphrase, not a DEK\n")
    before = _seqids(image) if kind == "luks2" else None
    p = cli("add-key", image, "--key-file", key, "--new-key-file", new, *FAST, "--json")
    r = json.loads(p.stdout)
    assert (r["opened_slot"], r["added_slot"], r["active_slots"]) == (0, 1, [0, 1])
    assert "not a valid IBM Cloud data encryption key" in p.stderr.decode()  # a warning only
    assert cs_opens(image, new) and cs_opens(image, key)
    if kind == "luks2":
        assert _seqids(image) == (before[0] + 1, before[1] + 1)
        assert "  1: luks2" in cs_dump(image)
    cli("verify", image, "--key-file", new, "--source", made["src"])

    r = json.loads(cli("remove-key", image, "--key-file", key, "--json").stdout)
    assert (r["removed_slot"], r["active_slots"]) == (0, [1])
    assert not cs_opens(image, key) and cs_opens(image, new)
    assert "no key slot opens" in cli.fails("verify", image, "--key-file", key)
    if kind == "luks2":
        assert _seqids(image) == (before[0] + 2, before[1] + 2)
        assert "  0: luks2" not in cs_dump(image)
    err = cli.fails("remove-key", image, "--key-file", new)
    assert "key slot 1 is the last" in err and cs_opens(image, new)


def test_removed_slot_material_is_overwritten(cli: Cli, made: dict[str, Path],
                                              tmp_path: Path) -> None:
    image, key = _copy(made, "luks2", tmp_path), made["key"]
    new = write_key(tmp_path / "new", b"second")
    cli("add-key", image, "--key-file", key, "--new-key-file", new, *FAST)
    area = slice(32768, 32768 + 258048)
    old = image.read_bytes()[area]
    cli("remove-key", image, "--key-file", key)
    wiped = image.read_bytes()[area]
    assert sum(a == b for a, b in zip(old, wiped, strict=True)) < 4000  # random, not the same
    assert json.loads(image.read_bytes()[4096:HDR].rstrip(b"\0"))["digests"]["0"]["keyslots"] \
        == ["1"]


def test_luks2_argon2id_slot_and_key_slot_choice(cli: Cli, made: dict[str, Path],
                                                 tmp_path: Path) -> None:
    image, key = _copy(made, "luks2", tmp_path), made["key"]
    new = write_key(tmp_path / "new", b"argon")
    r = json.loads(cli("add-key", image, "--key-file", key, "--new-key-file", new, "--key-slot",
                       "7", "--pbkdf", "argon2id", *LP_ARGON2, "--json").stdout)
    assert r["added_slot"] == 7 and r["pbkdf"] == "argon2id"
    dump = cs_dump(image)
    assert "  7: luks2" in dump and "PBKDF:      argon2id" in dump
    assert cs_opens(image, new, "--key-slot", "7")
    assert "key slot 7 is in use" in cli.fails("add-key", image, "--key-file", key,
                                               "--new-key-file", new, "--key-slot", "7", *FAST)
    assert "--key-slot 32 is outside 0..31" in cli.fails(
        "add-key", image, "--key-file", key, "--new-key-file", new, "--key-slot", "32", *FAST)


def test_cryptsetup_made_luks2_cbc_essiv(cli: Cli, tmp_path: Path) -> None:
    """The new slot's area is encrypted like the segment (aes-cbc-essiv:sha256, 256 bits), in
    the first free gap of cryptsetup's keyslots area."""
    key = write_key(tmp_path / "k", b"old")
    src = pattern_disk(tmp_path / "src.raw", 1)
    image = reencrypt_fill(tmp_path / "cs.img", src, key, "--cipher", "aes-cbc-essiv:sha256",
                           "--key-size", "256", *CS_ARGON2ID, "--sector-size", "4096")
    k2 = write_key(tmp_path / "k2", b"second")
    k3 = write_key(tmp_path / "k3", b"third")
    cryptsetup("luksAddKey", "-q", "--key-file", str(key), *CS_PBKDF2, "-S", "2", str(image),
               str(k2))
    r = json.loads(cli("add-key", image, "--key-file", k2, "--new-key-file", k3, "--hash",
                       "sha512", *FAST, "--json").stdout)
    assert (r["opened_slot"], r["added_slot"]) == (2, 0) or r["added_slot"] == 1
    j = json.loads(image.read_bytes()[4096:HDR].rstrip(b"\0"))
    ks = j["keyslots"][str(r["added_slot"])]
    assert ks["area"]["encryption"] == "aes-cbc-essiv:sha256" and ks["area"]["key_size"] == 32
    assert ks["af"]["hash"] == "sha512" and ks["kdf"]["hash"] == "sha512"
    spans = sorted((int(v["area"]["offset"]), int(v["area"]["size"])) for v in
                   j["keyslots"].values())
    assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:], strict=False))
    assert cs_opens(image, k3)
    cli("remove-key", image, "--key-file", key)
    assert not cs_opens(image, key) and cs_opens(image, k2) and cs_opens(image, k3)


def test_cryptsetup_made_luks1_cbc_essiv(cli: Cli, tmp_path: Path) -> None:
    """LUKS1 slots use the header's cipher (CBC-ESSIV here) and hash (sha1 here)."""
    key = write_key(tmp_path / "k", b"old")
    image = cs_format(tmp_path / "cs.img", key, 4 * MiB, "--type", "luks1", "--cipher",
                      "aes-cbc-essiv:sha256", "--key-size", "256", "--hash", "sha1",
                      "--pbkdf-force-iterations", "1000")
    src = pattern_disk(tmp_path / "src.raw", 2)
    qemu_fill(image, src, key)
    new = write_key(tmp_path / "new", b"new")
    r = json.loads(cli("add-key", image, "--key-file", key, "--new-key-file", new, *FAST,
                       "--json").stdout)
    assert r["hash"] == "sha1" and r["iterations"] == 1000
    assert cs_opens(image, new)
    err = cli.fails("add-key", image, "--key-file", key, "--new-key-file", new, "--hash",
                    "sha256", *FAST)
    assert "use the header's hash sha1" in err
    cli("remove-key", image, "--key-file", key)
    assert not cs_opens(image, key) and cs_opens(image, new)
    out = tmp_path / "plain.raw"
    cli("decrypt", image, out, "--key-file", new)
    assert out.read_bytes()[: 2 * MiB] == src.read_bytes()


def test_luks1_all_slots_in_use(cli: Cli, made: dict[str, Path], tmp_path: Path) -> None:
    image, key = _copy(made, "luks1", tmp_path), made["key"]
    for i in range(1, 8):
        k = write_key(tmp_path / f"k{i}", f"key {i}".encode())
        add_key(str(image), key.read_bytes(), k.read_bytes(), KdfOptions(force_iterations=1000))
    assert cs_opens(image, tmp_path / "k7")
    err = cli.fails("add-key", image, "--key-file", key, "--new-key-file", tmp_path / "k7",
                    *FAST)
    assert "all 8 key slots are in use" in err


def test_key_files_from_stdin(cli: Cli, made: dict[str, Path], tmp_path: Path) -> None:
    image, key = _copy(made, "luks2", tmp_path), made["key"]
    new = write_key(tmp_path / "new", b"from a file")
    cli("add-key", image, "--key-file", "-", "--new-key-file", new, *FAST,
        input=key.read_bytes())
    assert cs_opens(image, new)
    newer = b"from stdin"
    cli("add-key", image, "--key-file", new, "--new-key-file", "-", *FAST, input=newer)
    assert cs_opens(image, write_key(tmp_path / "check", newer))
    cli("remove-key", image, "--key-file", "-", input=newer)
    assert not cs_opens(image, tmp_path / "check")
    err = cli.fails("add-key", image, "--key-file", "-", "--new-key-file", "-", code=2)
    assert "only one of --key-file and --new-key-file" in err


def test_wrong_key_changes_nothing(cli: Cli, made: dict[str, Path], tmp_path: Path) -> None:
    image, key = _copy(made, "luks2", tmp_path), made["key"]
    before = image.read_bytes()
    wrong = write_key(tmp_path / "wrong", b"wrong")
    assert "no key slot opens" in cli.fails("add-key", image, "--key-file", wrong,
                                            "--new-key-file", key, *FAST)
    assert "no key slot opens" in cli.fails("remove-key", image, "--key-file", wrong)
    assert image.read_bytes() == before


def test_add_key_repairs_a_damaged_copy(cli: Cli, made: dict[str, Path], tmp_path: Path) -> None:
    image, key = _copy(made, "luks2", tmp_path), made["key"]
    with open(image, "r+b") as f:
        f.seek(HDR + 5000)
        f.write(b"X")  # secondary JSON damaged
    new = write_key(tmp_path / "new", b"new")
    p = cli("add-key", image, "--key-file", key, "--new-key-file", new, *FAST)
    assert "secondary header checksum mismatch" in p.stderr.decode()
    data = image.read_bytes()
    hdr = luks2.read_header(lambda o, n: data[o : o + n], len(data), "x")
    assert hdr.status == ("ok", "ok") and _seqids(image)[0] == _seqids(image)[1]
    assert cs_opens(image, new)


def test_any_key_file_opens_existing_images(cli: Cli, made: dict[str, Path],
                                            tmp_path: Path) -> None:
    """Opening commands take any key file (its whole content); DEK rules are for creating."""
    image, key = _copy(made, "luks2", tmp_path), made["key"]
    odd = write_key(tmp_path / "odd", b"\x00\xff binary key\nwith lines\n")
    cli("add-key", image, "--key-file", key, "--new-key-file", odd, *FAST)
    assert cs_opens(image, odd)
    cli("verify", image, "--key-file", odd, "--source", made["src"])
    info = json.loads(cli("info", image, "--json").stdout)
    assert [k["id"] for k in info["luks"]["keyslots"]] == ["0", "1"]
    err = cli.fails("encrypt", made["src"], tmp_path / "x.img", "--key-file", odd, *FAST)
    assert "not a valid data encryption key" in err


def test_sigterm_during_a_long_kdf_changes_nothing(made: dict[str, Path], tmp_path: Path) -> None:
    """Argon2 with a huge cost runs in a thread: SIGTERM ends add-key at once (exit 143) and
    the image is untouched."""
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import cli_env

    image, key = _copy(made, "luks2", tmp_path), made["key"]
    before = image.read_bytes()
    new = write_key(tmp_path / "new", b"new")
    p = subprocess.Popen([sys.executable, "-m", "lukspack", "add-key", str(image), "--key-file",
                          str(key), "--new-key-file", str(new), "--pbkdf", "argon2id",
                          "--pbkdf-force-iterations", "10000", "--pbkdf-memory", "65536"],
                         env=cli_env(), stderr=subprocess.PIPE)
    time.sleep(2.0)
    assert p.poll() is None  # still deriving
    start = time.monotonic()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 143 and time.monotonic() - start < 2, err
    assert image.read_bytes() == before


def test_add_key_after_an_interrupted_write(cli: Cli, made: dict[str, Path],
                                            tmp_path: Path) -> None:
    """An older primary (a write stopped between the copies): the secondary is used, and the
    next write brings both copies to one seqid above it."""
    image, key = _copy(made, "luks2", tmp_path), made["key"]
    old_primary = image.read_bytes()[:HDR]
    k1, k2 = write_key(tmp_path / "k1", b"one"), write_key(tmp_path / "k2", b"two")
    cli("add-key", image, "--key-file", key, "--new-key-file", k1, *FAST)
    with open(image, "r+b") as f:
        f.write(old_primary)
    seq = _seqids(image)
    assert seq[0] + 1 == seq[1]
    p = cli("add-key", image, "--key-file", k1, "--new-key-file", k2, *FAST)
    assert "primary header is older" in p.stderr.decode()
    assert _seqids(image) == (seq[1] + 1, seq[1] + 1)
    assert cs_opens(image, k1) and cs_opens(image, k2) and cs_opens(image, key)
