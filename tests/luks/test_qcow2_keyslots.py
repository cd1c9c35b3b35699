"""add-key and remove-key on qcow2+LUKS images (IBM Cloud VPC's encrypted format), issue 10.

Oracles: images made by `qemu-img convert -o encrypt.format=luks`, key slots added by
`qemu-img amend -o encrypt.state=active,encrypt.new-secret=...`, and qemu-img opening the result
(`qemu-img compare` with the plaintext) with the new key and refusing the removed one. Only the
LUKS area the qcow2 crypto header extension names may change.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from lukspack.images.qcow2_header import EXT_CRYPTO_HEADER
from tests.helpers import pattern_disk, qemu_img, run, tool
from tests.luks.luks_helpers import write_key

FAST = ["--pbkdf-force-iterations", "1000"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """lukspack in-process: (exit code, stdout, stderr)."""
    from lukspack.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def ok(capsys: pytest.CaptureFixture[str], *argv: object) -> dict:
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def opts(image: Path, secret: str = "s0") -> str:
    return f"driver=qcow2,file.filename={image},encrypt.key-secret={secret}"


def qemu_opens(image: Path, key: Path, plain: Path) -> bool:
    """qemu-img compare of the image opened with key against the plaintext: identical (True),
    or the key opens no slot (False); anything else fails the test."""
    p = run([tool("qemu-img"), "compare", "--object", f"secret,id=s0,file={key}", "--image-opts",
             opts(image), f"driver=raw,file.filename={plain}"], check=False)
    err = p.stderr.decode()
    if p.returncode == 0:
        assert "Images are identical" in p.stdout.decode()
        return True
    assert "Invalid password, cannot unlock any keyslot" in err, err
    return False


def qemu_add_key(image: Path, old: Path, new: Path) -> None:
    qemu_img("amend", "--object", f"secret,id=s0,file={old}", "--object",
             f"secret,id=s1,file={new}", "--image-opts", opts(image),
             "-o", "encrypt.state=active,encrypt.new-secret=s1,encrypt.iter-time=10")


def crypto_area(image: Path) -> tuple[int, int]:
    """(offset, length) from the qcow2 crypto header extension, read independently."""
    data = image.read_bytes()[:65536]
    at = struct.unpack_from(">I", data, 100)[0]  # v3 header_length: extensions follow it
    while True:
        kind, length = struct.unpack_from(">II", data, at)
        if kind == 0:
            raise AssertionError("no crypto header extension")
        if kind == EXT_CRYPTO_HEADER:
            return struct.unpack_from(">QQ", data, at + 8)
        at += 8 + -(-length // 8) * 8


def changed_outside(before: bytes, after: bytes, area: tuple[int, int]) -> list[int]:
    start, length = area
    assert len(before) == len(after)
    return [i for i in range(0, len(before), 4096)
            if not start <= i < start + length and before[i : i + 4096] != after[i : i + 4096]]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("qcow2")
    plain = pattern_disk(d / "plain.raw", 4)
    k0 = write_key(d / "k0", b"qemu's first secret")
    image = d / "qemu.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "--object", f"secret,id=s0,file={k0}",
             "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", str(plain),
             str(image))
    return {"plain": plain, "k0": k0, "qemu": image}


def test_keys_of_a_qemu_amended_image(capsys: pytest.CaptureFixture[str], made: dict[str, Path],
                                      tmp_path: Path) -> None:
    image = Path(shutil.copy(made["qemu"], tmp_path / "vpc.qcow2"))
    plain, k0 = made["plain"], made["k0"]
    k1 = write_key(tmp_path / "k1", b"added by qemu-img amend")
    k2 = write_key(tmp_path / "k2", b"added by lukspack")
    qemu_add_key(image, k0, k1)  # slot 1, by qemu
    before = image.read_bytes()
    r = ok(capsys, "add-key", image, "--key-file", k1, "--new-key-file", k2, *FAST)
    assert (r["container"], r["type"], r["opened_slot"], r["added_slot"]) == \
        ("qcow2", "luks1", 1, 2)
    assert r["active_slots"] == [0, 1, 2]
    assert qemu_opens(image, k2, plain) and qemu_opens(image, k1, plain)
    area = crypto_area(image)
    assert not changed_outside(before, image.read_bytes(), area)
    assert before != image.read_bytes()

    r = ok(capsys, "remove-key", image, "--key-file", k0)
    assert (r["removed_slot"], r["active_slots"]) == (0, [1, 2])
    assert not qemu_opens(image, k0, plain)
    assert qemu_opens(image, k1, plain) and qemu_opens(image, k2, plain)
    assert not changed_outside(before, image.read_bytes(), area)
    qemu_img("check", "--object", f"secret,id=s0,file={k2}", "--image-opts", opts(image))
    info = qemu_img("info", "--output=json", str(image)).stdout.decode()
    slots = json.loads(info)["format-specific"]["data"]["encrypt"]["slots"]
    assert [s["active"] for s in slots] == [False, True, True] + [False] * 5
    code, _, err = run_cli(capsys, "verify", image, "--key-file", k2, "--source", plain)
    assert code == 0, err


def test_qemu_opens_keys_lukspack_added_to_its_own_qcow2(capsys: pytest.CaptureFixture[str],
                                                         session_keyfile: Path,
                                                         made: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """lukspack's qcow2+LUKS output: a key added by lukspack opens it in qemu, qemu-img amend
    can add a key with it, and the last key slot is never removed."""
    plain = made["plain"]
    image = tmp_path / "out.qcow2"
    code, _, err = run_cli(capsys, "encrypt", plain, image, "--key-file", session_keyfile,
                           *FAST, "--no-verify")
    assert code == 0, err
    new = write_key(tmp_path / "new", b"rotated key")
    r = ok(capsys, "add-key", image, "--key-file", session_keyfile, "--new-key-file", new,
           *FAST, "--key-slot", "5")
    assert r["added_slot"] == 5 and r["container"] == "qcow2"
    assert qemu_opens(image, new, plain)
    k3 = write_key(tmp_path / "k3", b"added by qemu after lukspack")
    qemu_add_key(image, new, k3)
    ok(capsys, "remove-key", image, "--key-file", session_keyfile)
    ok(capsys, "remove-key", image, "--key-file", new)
    assert not qemu_opens(image, new, plain) and qemu_opens(image, k3, plain)
    code, _, err = run_cli(capsys, "remove-key", image, "--key-file", k3)
    assert code == 1 and "is the last active key slot" in err and err.count("\n") == 1
    assert qemu_opens(image, k3, plain)


def test_qcow2_is_found_by_content(capsys: pytest.CaptureFixture[str], made: dict[str, Path],
                                   tmp_path: Path) -> None:
    image = Path(shutil.copy(made["qemu"], tmp_path / "disk.img"))  # not named .qcow2
    new = write_key(tmp_path / "new", b"new")
    assert ok(capsys, "add-key", image, "--key-file", made["k0"], "--new-key-file", new,
              *FAST)["container"] == "qcow2"
    assert qemu_opens(image, new, made["plain"])


def test_wrong_key_and_unencrypted_qcow2_change_nothing(capsys: pytest.CaptureFixture[str],
                                                         made: dict[str, Path],
                                                         tmp_path: Path) -> None:
    image = Path(shutil.copy(made["qemu"], tmp_path / "vpc.qcow2"))
    wrong = write_key(tmp_path / "wrong", b"wrong")
    before = image.read_bytes()
    for argv in (["add-key", image, "--key-file", wrong, "--new-key-file", made["k0"], *FAST],
                 ["remove-key", image, "--key-file", wrong]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 1 and "no key slot opens with this key file" in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert image.read_bytes() == before
    plain_qcow2 = tmp_path / "plain.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(made["plain"]), str(plain_qcow2))
    before = plain_qcow2.read_bytes()
    code, _, err = run_cli(capsys, "remove-key", plain_qcow2, "--key-file", made["k0"])
    assert code == 1 and "not encrypted (qcow2, no LUKS)" in err
    assert plain_qcow2.read_bytes() == before


def test_a_luks_area_too_short_is_refused_unchanged(made: dict[str, Path],
                                                   tmp_path: Path) -> None:
    """A crypto header extension whose length is cut below the LUKS header's own size: key
    material would lie past the area, so the image is refused before anything is written."""
    from lukspack.errors import LukspackError
    from lukspack.luks.format import KdfOptions
    from lukspack.luks.keyslots import add_key

    image = Path(shutil.copy(made["qemu"], tmp_path / "cut.qcow2"))
    start, length = crypto_area(image)
    data = bytearray(image.read_bytes())
    at = data.find(struct.pack(">QQ", start, length))
    data[at + 8 : at + 16] = struct.pack(">Q", 64 * 1024)  # 64 KiB: slot 0's material is cut
    image.write_bytes(data)
    with pytest.raises(LukspackError) as e:
        add_key(str(image), made["k0"].read_bytes(), b"x", KdfOptions(hash=None,
                                                                      force_iterations=1000))
    assert "payloadOffset 4040 is past the end of the image (size 65536)" in str(e.value)
    assert image.read_bytes() == data


def _qemu_holds(image: Path) -> bool:
    import fcntl
    import os

    fd = os.open(image, os.O_RDONLY)
    try:
        probe = struct.pack("hhxxxxqqi4x", fcntl.F_WRLCK, 0, 100, 200, 0)
        got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe)
        return struct.unpack("hhxxxxqqi4x", got)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


@pytest.mark.parametrize("driver", ["qcow2", "luks"])
def test_an_image_qemu_has_open_is_left_alone(capsys: pytest.CaptureFixture[str],
                                              made: dict[str, Path], tmp_path: Path,
                                              driver: str) -> None:
    """qemu-io holds the image open (as a running VM would): add-key refuses and changes
    nothing; once qemu is gone it works. Also for a RAW LUKS image opened by qemu's luks driver."""
    import subprocess
    import time

    if driver == "qcow2":
        image = Path(shutil.copy(made["qemu"], tmp_path / "vpc.qcow2"))
    else:
        image = tmp_path / "raw.img"
        qemu_img("create", "-f", "luks", "--object", f"secret,id=s0,file={made['k0']}", "-o",
                 "key-secret=s0,iter-time=10", str(image), "4M")
    new = write_key(tmp_path / "new", b"new")
    spec = f"driver={driver},file.filename={image},key-secret=s0" if driver == "luks" \
        else opts(image)
    holder = subprocess.Popen([tool("qemu-io"), "--object", f"secret,id=s0,file={made['k0']}",
                               "--image-opts", spec, "-c", "sleep 20000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _qemu_holds(image):
            assert holder.poll() is None, holder.stderr.read().decode() if holder.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = image.read_bytes()
        code, _, err = run_cli(capsys, "add-key", image, "--key-file", made["k0"],
                               "--new-key-file", new, *FAST)
        assert code == 1 and "in use by QEMU" in err and err.count("\n") == 1
        assert image.read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
    assert ok(capsys, "add-key", image, "--key-file", made["k0"], "--new-key-file", new,
              *FAST)["added_slot"] == 1
