"""`lukspack boot-test`: boot an image under qemu-system-x86_64 as IBM Cloud's hypervisor opens
it and wait for cloud-init to run the seed's user-data.

The host decrypts: QEMU's own LUKS driver (LUKS RAW) or qcow2 encryption driver (qcow2+LUKS,
`encrypt.format=luks` given explicitly), the passphrase in a `-object secret` file; the guest sees a
plain virtio disk on machine `pc` (i440FX) with SeaBIOS. Every drive is opened with snapshot=on:
writes go to a temporary overlay in a private directory, never to the image.
"""

from __future__ import annotations

import enum
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
from lukspack.errors import BootTestFailed, LukspackError

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

    def lines(self) -> list[str]:
        """What `boot-test` prints on stdout: PASS with the attempts, or FAIL."""
        if not self.passed:
            return [f"{self.image}: FAIL ({self.image_format}, {self.datasource}, {self.accel})"]
        return [f"{self.image}: PASS: {self.marker} on the serial console after "
                f"{self.seconds_to_marker or 0:.1f} s ({self.image_format}, {self.datasource}, "
                f"{self.accel})"] + [f"  {a}" for a in self.attempts]

    def raise_on_fail(self) -> None:
        """BootTestFailed (exit code 1) unless the marker was seen."""
        if not self.passed:
            raise BootTestFailed(f"{self.image}: boot test failed: {self.reason}")

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


class Outcome(enum.Enum):
    """How one QEMU run ended; boot_test decides on these values, never on the reason's text."""

    MARKER = "marker seen"
    QEMU_EXITED = "QEMU exited before the marker"
    TIMEOUT = "no marker within the timeout"
    EXITED_BEFORE_KERNEL = "QEMU exited before the kernel started"  # next accelerator
    NO_KERNEL = "no kernel message within the KVM probe"  # next accelerator


RETRY_OUTCOMES = (Outcome.EXITED_BEFORE_KERNEL, Outcome.NO_KERNEL)


@dataclass(frozen=True)
class Watched:
    """One run's outcome, its reason in words, and QEMU's exit code when it exited."""

    outcome: Outcome
    reason: str = ""
    exit_code: int | None = None

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.MARKER

    @property
    def retry(self) -> bool:
        """Give this accelerator up for the next one."""
        return self.outcome in RETRY_OUTCOMES


@dataclass(frozen=True)
class _Disk:
    """What QEMU opens: the image (or lukspack's decrypted copy), its kind, the secret file."""

    path: str
    kind: str  # QEMU's view: raw for the decrypted copy
    label: str  # what the result reports as image_format
    secret: str | None


def _stop(proc: subprocess.Popen[bytes]) -> None:
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
    kind, serve_decrypted = check_bootable(image, passphrase, datasource)
    plan = accelerators(accel)
    token = os.urandom(8).hex()
    work = tempfile.mkdtemp(prefix="lukspack-boot-")
    started = time.monotonic()
    attempts: list[str] = []
    try:
        seed = os.path.join(work, "seed.iso")
        write_seed(seed, datasource, token)
        disk = _prepare_disk(work, image, kind, passphrase, serve_decrypted, progress)
        for n, acc in enumerate(plan):
            last = n + 1 == len(plan)
            run_start = time.monotonic()
            watched, console = _run_qemu(work, disk, seed, acc, memory_mb, marker(token).encode(),
                                         started, timeout, None if last else kvm_probe, progress)
            if watched.retry and not last:
                attempts.append(f"{acc}: {watched.reason}; retried with {plan[n + 1].upper()}")
                continue
            reason = "" if watched.passed else failure_reason(
                watched, os.path.join(work, f"qemu-{acc}.err"))
            attempts.append(f"{acc}: {Outcome.MARKER.value if watched.passed else reason}")
            return BootResult(watched.passed, image, disk.label, datasource, acc, marker(token),
                              time.monotonic() - run_start if watched.passed else None,
                              time.monotonic() - started, reason,
                              [] if watched.passed else console.lines(), attempts)
        raise AssertionError("unreachable: the last accelerator never falls back")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_bootable(image: str, passphrase: bytes | bytearray | None, datasource: str
                   ) -> tuple[str, bool]:
    """(the image's kind, whether lukspack must decrypt it for QEMU); BootError when the boot
    cannot start (an unknown datasource, no QEMU, a key missing or given for a plain image)."""
    if datasource not in DATASOURCES:
        raise BootError(f"datasource {datasource!r} is not one of {', '.join(DATASOURCES)}")
    if shutil.which(QEMU) is None:
        raise BootError(f"{QEMU} not found (Debian: apt-get install qemu-system-x86)")
    kind = image_kind(image)
    if kind in ("luks", "qcow2+luks"):
        if passphrase is None:
            raise BootError(f"{image}: {kind} image needs --key-file")
        return kind, False
    if passphrase is None:
        return kind, False
    from lukspack.disks import encryption_of

    if encryption_of(image) is None:
        raise BootError(f"{image}: is not encrypted ({kind}); boot it without --key-file")
    return kind, True  # QEMU cannot open it: lukspack's reader decrypts it for QEMU


def accelerators(accel: str) -> list[str]:
    """The accelerators to try in order: auto is KVM then TCG where /dev/kvm opens."""
    if accel == "auto":
        return ["kvm", "tcg"] if kvm_usable() else ["tcg"]
    if accel in ("kvm", "tcg"):
        return [accel]
    raise BootError(f"accel {accel!r} is not auto, kvm or tcg")


def _prepare_disk(work: str, image: str, kind: str, passphrase: bytes | bytearray | None,
                  serve_decrypted: bool, progress: ProgressFn | None) -> _Disk:
    """The drive QEMU opens, in the private directory work: a decrypted sparse copy (an image
    QEMU cannot decrypt), or the image with the passphrase in a secret file (mode 0600)."""
    if passphrase is None:
        return _Disk(image, kind, kind, None)
    if serve_decrypted:
        from lukspack.boot.plaintext import write_decrypted

        copy = os.path.join(work, "plaintext.raw")
        write_decrypted(image, passphrase, copy, progress)
        return _Disk(copy, "raw", f"{kind}-crypt, decrypted by lukspack", None)
    secret = os.path.join(work, "key")
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, bytes(passphrase))
    finally:
        os.close(fd)
    return _Disk(image, kind, kind, secret)


def _run_qemu(work: str, disk: _Disk, seed: str, acc: str, memory_mb: int, needle: bytes,
              started: float, timeout: float, kvm_probe: float | None,
              progress: ProgressFn | None) -> tuple[Watched, _Console]:
    """Start QEMU with accelerator acc, watch its serial console, stop it."""
    serial = os.path.join(work, f"serial-{acc}.log")
    console = _Console(serial)
    cmd = qemu_command(disk.path, disk.kind, seed, serial, acc, disk.secret, memory_mb)
    env = {**os.environ, "TMPDIR": work}  # where -snapshot puts its overlay
    with open(os.path.join(work, f"qemu-{acc}.err"), "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=env, start_new_session=True)
    try:
        return watch(proc, console, needle, acc, time.monotonic(), started, timeout, kvm_probe,
                     progress), console
    finally:
        _stop(proc)


def failure_reason(watched: Watched, stderr_path: str) -> str:
    """The reason of a failed run; when QEMU itself exited with an error, its last stderr line
    (what it could not open, a wrong password) is added."""
    if watched.outcome is not Outcome.QEMU_EXITED or watched.exit_code in (None, 0):
        return watched.reason
    try:
        with open(stderr_path, "rb") as f:
            msg = f.read().decode(errors="replace").strip().splitlines()
    except FileNotFoundError:
        msg = []
    return f"{watched.reason}: {msg[-1] if msg else f'exit code {watched.exit_code}'}"


def watch(proc: subprocess.Popen[bytes], console: _Console, needle: bytes, accel: str,
          run_start: float, started: float, timeout: float, kvm_probe: float | None,
          progress: ProgressFn | None) -> Watched:
    """Poll the console until the marker, QEMU's exit or the timeout; with kvm_probe (a next
    accelerator to try), a run that shows no kernel message in time is a retry outcome."""
    while True:
        if console.poll(needle):
            return Watched(Outcome.MARKER)
        now = time.monotonic()
        code = proc.poll()
        if code is not None:
            if console.poll(needle):
                return Watched(Outcome.MARKER)
            if kvm_probe is not None and not console.kernel_seen:
                return Watched(Outcome.EXITED_BEFORE_KERNEL,
                               f"QEMU exited (code {code}) before the kernel started", code)
            return Watched(Outcome.QEMU_EXITED,
                           f"QEMU exited (code {code}) before the marker appeared", code)
        if kvm_probe is not None and not console.kernel_seen and now - run_start > kvm_probe:
            return Watched(Outcome.NO_KERNEL, f"no kernel message on the serial console in "
                           f"{kvm_probe:.0f} s (a nested KVM stuck in real-mode boot code)")
        if now - started > timeout:
            return Watched(Outcome.TIMEOUT,
                           f"no marker on the serial console within {timeout:.0f} s ({accel})")
        if progress is not None:
            progress("boot", int(now - started), int(timeout))
        time.sleep(POLL_SECONDS)
