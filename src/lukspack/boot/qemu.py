"""`lukspack boot-test`: boot an image under qemu-system-x86_64 as IBM Cloud's hypervisor opens
it and wait for cloud-init to run the seed's user-data.

The host decrypts: QEMU's own LUKS driver (LUKS RAW) or qcow2 encryption driver (qcow2+LUKS,
`encrypt.format=luks` given explicitly), the passphrase in a `-object secret` file; the guest sees a
plain virtio disk on machine `pc` (i440FX) with SeaBIOS. Every drive is opened with snapshot=on:
writes go to a temporary overlay in a private directory, never to the image.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lukspack.boot.seed import DATASOURCES, marker, write_seed
from lukspack.errors import LukspackError

QEMU = "qemu-system-x86_64"
SEABIOS = "/usr/share/seabios/bios-256k.bin"
QCOW2_MAGIC = b"QFI\xfb"
QCOW2_CRYPT_OFFSET = 32  # u32 big-endian crypt_method; 2 = LUKS
QCOW2_CRYPT_LUKS = 2
LUKS_MAGIC = b"LUKS\xba\xbe"
KERNEL_STARTED = re.compile(rb"Linux version|\[\s*\d+\.\d+\]")
KVM_PROBE_SECONDS = 20.0  # a nested KVM that hangs in real mode never prints the kernel banner
POLL_SECONDS = 0.5
TAIL_BYTES = 64 << 10
TAIL_LINES = 40
QEMU_FORMATS = {"vhd": "vpc"}  # QEMU's driver names where they differ

ProgressFn = Callable[[str, int, int], None]


class BootError(LukspackError):
    """The boot test cannot start (no QEMU, an image it cannot open)."""


@dataclass
class BootResult:
    passed: bool
    image: str
    image_format: str
    datasource: str
    accel: str
    marker: str
    seconds_to_marker: float | None
    seconds_total: float
    reason: str = ""
    console_tail: list[str] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"result": "PASS" if self.passed else "FAIL", "image": self.image,
                "image_format": self.image_format, "datasource": self.datasource,
                "accel": self.accel, "marker": self.marker,
                "seconds_to_marker": None if self.seconds_to_marker is None
                else round(self.seconds_to_marker, 1),
                "seconds_total": round(self.seconds_total, 1), "reason": self.reason,
                "attempts": self.attempts, "console_tail": self.console_tail}


def image_kind(path: str) -> str:
    """raw | luks | qcow2 | qcow2+luks | vhd | vmdk | vhdx, from the content."""
    from lukspack.images import detect_format

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise BootError(f"{path}: cannot open: {e.strerror}") from None
    try:
        fmt = detect_format(path, fd)
        if fmt == "qcow2":
            (crypt,) = struct.unpack(">I", os.pread(fd, 4, QCOW2_CRYPT_OFFSET))
            return "qcow2+luks" if crypt == QCOW2_CRYPT_LUKS else "qcow2"
    finally:
        os.close(fd)
    return fmt


def _q(path: str) -> str:
    return path.replace(",", ",,")  # QEMU's option syntax doubles commas


def drive_options(path: str, kind: str, secret_id: str | None) -> str:
    base = f"file={_q(path)},if=virtio,snapshot=on"
    if kind == "luks":
        return f"{base},format=luks,key-secret={secret_id}"
    if kind == "qcow2+luks":
        return f"{base},format=qcow2,encrypt.format=luks,encrypt.key-secret={secret_id}"
    return f"{base},format={QEMU_FORMATS.get(kind, kind)}"


def qemu_command(image: str, kind: str, seed: str, serial: str, accel: str, secret: str | None,
                 memory_mb: int = 1024) -> list[str]:
    # -nographic (not -display none): QEMU then tells SeaBIOS to print on the serial port too
    cmd = [QEMU, "-nodefaults", "-machine", f"pc,accel={accel}", "-m", str(memory_mb), "-smp", "1",
           "-nographic", "-monitor", "none", "-no-reboot", "-serial", f"file:{serial}"]
    if os.path.exists(SEABIOS):
        cmd += ["-bios", SEABIOS]
    secret_id = None
    if secret is not None:
        secret_id = "lukspack-key"
        cmd += ["-object", f"secret,id={secret_id},file={_q(secret)},format=raw"]
    cmd += ["-drive", drive_options(image, kind, secret_id),
            "-drive", f"file={_q(seed)},format=raw,if=virtio,readonly=on",
            # user-mode network, restricted: DHCP for the guest, no route off the host
            "-nic", "user,model=virtio-net-pci,restrict=on"]
    return cmd


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


class _Console:
    """The serial log QEMU writes, read as it grows."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pos = 0
        self.tail = b""
        self.kernel_seen = False

    def poll(self, needle: bytes) -> bool:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except FileNotFoundError:
            return False
        if not chunk:
            return False
        self.pos += len(chunk)
        window = self.tail[-len(needle):] + chunk
        self.tail = (self.tail + chunk)[-TAIL_BYTES:]
        if not self.kernel_seen and KERNEL_STARTED.search(self.tail):
            self.kernel_seen = True
        return needle in window

    def lines(self) -> list[str]:
        text = self.tail.decode("utf-8", "replace").replace("\r", "")
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
        return [ln for ln in text.split("\n") if ln.strip()][-TAIL_LINES:]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def boot_test(image: str, *, passphrase: bytes | bytearray | None = None, datasource: str = "nocloud",
              timeout: float = 600.0, accel: str = "auto", memory_mb: int = 1024,
              kvm_probe: float = KVM_PROBE_SECONDS, progress: ProgressFn | None = None) -> BootResult:
    """Boot image with a generated seed; passed when the user-data's marker reaches the serial
    console within timeout seconds. accel: auto (KVM, falling back to TCG), kvm or tcg."""
    if datasource not in DATASOURCES:
        raise BootError(f"datasource {datasource!r} is not one of {', '.join(DATASOURCES)}")
    if shutil.which(QEMU) is None:
        raise BootError(f"{QEMU} not found (Debian: apt-get install qemu-system-x86)")
    kind = image_kind(image)
    if kind in ("luks", "qcow2+luks") and passphrase is None:
        raise BootError(f"{image}: {kind} image needs --key-file")
    serve_decrypted = False
    if passphrase is not None and kind not in ("luks", "qcow2+luks"):
        from lukspack.disks import encryption_of

        if encryption_of(image) is None:
            raise BootError(f"{image}: is not encrypted ({kind}); boot it without --key-file")
        serve_decrypted = True  # QEMU cannot open it: lukspack's reader decrypts it for QEMU
    if accel == "auto":
        plan = ["kvm", "tcg"] if kvm_usable() else ["tcg"]
    elif accel in ("kvm", "tcg"):
        plan = [accel]
    else:
        raise BootError(f"accel {accel!r} is not auto, kvm or tcg")
    token = os.urandom(8).hex()
    needle = marker(token).encode()
    work = tempfile.mkdtemp(prefix="lukspack-boot-")
    started = time.monotonic()
    attempts: list[str] = []
    try:
        seed = os.path.join(work, "seed.iso")
        write_seed(seed, datasource, token)
        secret = None
        disk, disk_kind = image, kind
        if serve_decrypted:
            from lukspack.boot.plaintext import write_decrypted

            disk, disk_kind = os.path.join(work, "plaintext.raw"), "raw"
            kind += "-crypt, decrypted by lukspack"
            write_decrypted(image, passphrase, disk, progress)  # type: ignore[arg-type]
        elif passphrase is not None:
            secret = os.path.join(work, "key")
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, bytes(passphrase))
            finally:
                os.close(fd)
        env = {**os.environ, "TMPDIR": work}  # where -snapshot puts its overlay
        result = None
        for n, acc in enumerate(plan):
            serial = os.path.join(work, f"serial-{acc}.log")
            console = _Console(serial)
            cmd = qemu_command(disk, disk_kind, seed, serial, acc, secret, memory_mb)
            with open(os.path.join(work, f"qemu-{acc}.err"), "wb") as err:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=err, env=env, start_new_session=True)
            run_start = time.monotonic()
            try:
                result = _watch(proc, console, needle, acc, run_start, started, timeout,
                                kvm_probe if n + 1 < len(plan) else None, progress)
            finally:
                _stop(proc)
            if isinstance(result, str):  # fall back to the next accelerator
                attempts.append(f"{acc}: {result}; retried with {plan[n + 1].upper()}")
                continue
            passed, reason = result
            if not passed and proc.returncode not in (None, 0) and reason.startswith("QEMU exited"):
                with open(os.path.join(work, f"qemu-{acc}.err"), "rb") as f:
                    msg = f.read().decode(errors="replace").strip().splitlines()
                reason += ": " + (msg[-1] if msg else f"exit code {proc.returncode}")
            attempts.append(f"{acc}: {'marker seen' if passed else reason}")
            return BootResult(passed, image, kind, datasource, acc, marker(token),
                              time.monotonic() - run_start if passed else None,
                              time.monotonic() - started, reason,
                              [] if passed else console.lines(), attempts)
        raise AssertionError("unreachable: the last accelerator never falls back")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _watch(proc: subprocess.Popen, console: _Console, needle: bytes, accel: str, run_start: float,
           started: float, timeout: float, kvm_probe: float | None,
           progress: ProgressFn | None) -> tuple[bool, str] | str:
    """(passed, reason), or a string: why this accelerator is given up for the next one."""
    while True:
        if console.poll(needle):
            return True, ""
        now = time.monotonic()
        if proc.poll() is not None:
            if console.poll(needle):
                return True, ""
            if kvm_probe is not None and not console.kernel_seen:
                return f"QEMU exited (code {proc.returncode}) before the kernel started"
            return False, f"QEMU exited (code {proc.returncode}) before the marker appeared"
        if kvm_probe is not None and not console.kernel_seen and now - run_start > kvm_probe:
            return (f"no kernel message on the serial console in {kvm_probe:.0f} s (a nested KVM "
                    "stuck in real-mode boot code)")
        if now - started > timeout:
            return False, f"no marker on the serial console within {timeout:.0f} s ({accel})"
        if progress is not None:
            progress("boot", int(now - started), int(timeout))
        time.sleep(POLL_SECONDS)
