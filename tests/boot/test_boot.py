"""`boot-test`: the Debian image, encrypted by lukspack to qcow2+LUKS and to LUKS RAW, boots under
qemu-system-x86_64 (QEMU decrypting) and cloud-init runs the seed's user-data, with NoCloud and
with ConfigDrive; an image that cannot boot fails within its timeout; nothing is left behind."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lukspack.boot import boot_test, image_kind
from lukspack.cli import main
from tests.helpers import cli_env, require

pytestmark = [pytest.mark.slow]


@pytest.fixture(autouse=True)
def _tools() -> None:
    require("qemu-system-x86_64")  # never skipped: scripts/test.sh installs qemu-system-x86


BOOT_TIMEOUT = 900  # TCG on a loaded 2-core machine; a boot takes 80-120 s here
_accel: dict[str, str] = {}  # the accelerator the first boot settled on (KVM or the TCG fallback)


def accel() -> str:
    return _accel.get("accel", "auto")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def encrypted(encrypted_images: dict[str, Path]) -> dict[str, Path]:
    return encrypted_images


def test_qcow2_luks_boots_with_nocloud(encrypted: dict[str, Path], session_keyfile: Path,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = encrypted["qcow2"]
    assert image_kind(str(image)) == "qcow2+luks"
    before = sha256(image)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where boot_test keeps its files
    result = boot_test(str(image), passphrase=session_keyfile.read_bytes(), datasource="nocloud",
                       timeout=BOOT_TIMEOUT, accel=accel())
    assert result.passed, f"{result.reason}\n" + "\n".join(result.console_tail)
    _accel["accel"] = result.accel
    assert result.seconds_to_marker is not None and result.seconds_to_marker < BOOT_TIMEOUT
    print(f"qcow2+LUKS NoCloud: marker after {result.seconds_to_marker:.0f} s ({result.accel}); "
          f"{result.attempts}", file=sys.stderr)
    assert sha256(image) == before  # snapshot=on: the image is never written
    assert list(tmp_path.iterdir()) == []


def test_luks_raw_boots_with_configdrive(encrypted: dict[str, Path], session_keyfile: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    image = encrypted["raw"]
    assert image_kind(str(image)) == "luks"
    with pytest.raises(SystemExit) as e:
        main(["boot-test", str(image), "--key-file", str(session_keyfile), "--datasource",
              "configdrive", "--timeout", str(BOOT_TIMEOUT), "--accel", accel(), "--json"])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    data = json.loads(out.out)
    assert data["result"] == "PASS" and data["image_format"] == "luks"
    assert data["datasource"] == "configdrive" and data["seconds_to_marker"] > 0
    print(f"LUKS RAW ConfigDrive: marker after {data['seconds_to_marker']} s ({data['accel']})",
          file=sys.stderr)


def test_btrfs_root_boots_after_encrypt_target_vpc(debian_images: Path, session_keyfile: Path,
                                                  tmp_path: Path) -> None:
    """The Btrfs image (/ in subvolume @rootfs, rootflags=subvol=@rootfs): `encrypt --target vpc`
    checks it (reading the Btrfs) and writes qcow2+LUKS, which boots and runs cloud-init."""
    from tests.helpers import FAST

    out = tmp_path / "btrfs.qcow2"
    src = debian_images / "debian12-btrfs.raw"
    p = subprocess.run([sys.executable, "-m", "lukspack", "encrypt", str(src), str(out),
                        "--key-file", str(session_keyfile), "--target", "vpc", "--json",
                        "--no-digest", "--no-verify", "--no-progress", *FAST],
                       capture_output=True, text=True, env=cli_env())
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["check"]["FAIL"] == 0 and summary["output_format"] == "qcow2"
    result = boot_test(str(out), passphrase=session_keyfile.read_bytes(), datasource="nocloud",
                       timeout=BOOT_TIMEOUT, accel=accel())
    assert result.passed, f"{result.reason}\n" + "\n".join(result.console_tail)
    print(f"Btrfs root, qcow2+LUKS NoCloud: marker after {result.seconds_to_marker:.0f} s "
          f"({result.accel})", file=sys.stderr)


def test_unbootable_image_fails_within_timeout(tmp_path: Path) -> None:
    disk = tmp_path / "blank.raw"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    env = {**cli_env(), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "lukspack", "boot-test", str(disk), "--timeout", "25",
                        "--accel", "tcg"], capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - t
    assert p.returncode == 1, p.stderr
    assert elapsed < 25 + 15
    assert "serial console, last lines:" in p.stderr
    assert "Boot failed: not a bootable disk" in p.stderr  # SeaBIOS said so on the console
    assert p.stderr.strip().splitlines()[-1].startswith("lukspack: error: ")
    assert "Traceback" not in p.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_wrong_key_fails_quickly(encrypted: dict[str, Path], tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    fd = os.open(wrong, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not the key")
    os.close(fd)
    t = time.monotonic()
    result = boot_test(str(encrypted["qcow2"]), passphrase=wrong.read_bytes(), timeout=60, accel="tcg")
    assert not result.passed and time.monotonic() - t < 30
    assert "QEMU exited" in result.reason and "password" in result.reason.lower()


def test_decrypted_copy_of_an_encrypted_vhd(encrypted: dict[str, Path], debian_images: Path,
                                            session_keyfile: Path, tmp_path: Path) -> None:
    """QEMU has no driver for the encrypted VHD: lukspack's reader writes the plaintext disk,
    sparse, which QEMU then boots as raw (booted once for docs/check.md; not here, for time)."""
    from lukspack.boot.plaintext import write_decrypted

    assert image_kind(str(encrypted["vhd"])) == "vhd"
    out = tmp_path / "plain.raw"
    size = write_decrypted(str(encrypted["vhd"]), session_keyfile.read_bytes(), str(out))
    assert size == out.stat().st_size == (debian_images / "debian12-cloudinit.raw").stat().st_size
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.stat().st_blocks * 512 < size // 2  # the holes stayed holes
    assert sha256(out) == sha256(debian_images / "debian12-cloudinit.raw")


def test_key_file_on_a_plain_image_is_refused(debian_images: Path, session_keyfile: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "lukspack", "boot-test",
                        str(debian_images / "debian12-cloudinit.raw"), "--key-file", str(session_keyfile)],
                       capture_output=True, text=True, env=cli_env())
    assert p.returncode == 1 and "is not encrypted (raw); boot it without --key-file" in p.stderr


def test_ctrl_c_stops_qemu_and_removes_its_files(encrypted: dict[str, Path], session_keyfile: Path,
                                                 tmp_path: Path) -> None:
    env = {**cli_env(), "TMPDIR": str(tmp_path)}
    p = subprocess.Popen([sys.executable, "-m", "lukspack", "boot-test", str(encrypted["raw"]),
                          "--key-file", str(session_keyfile), "--accel", "tcg"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 30
    qemu_pids: list[int] = []
    while time.monotonic() < deadline and not qemu_pids:
        time.sleep(0.5)
        qemu_pids = [int(d) for d in os.listdir("/proc") if d.isdigit() and _is_our_qemu(int(d), tmp_path)]
    assert qemu_pids, "QEMU did not start"
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    for pid in qemu_pids:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)
    assert list(tmp_path.iterdir()) == []


def _is_our_qemu(pid: int, tmp: Path) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmd) and cmd[0].endswith(b"qemu-system-x86_64") and any(str(tmp).encode() in a for a in cmd)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
