"""boot-test decides on typed outcomes (boot.qemu.Outcome), not on the reason's text: QEMU's
stderr is added to a failure because QEMU exited, whatever the reason says; a run that shows no
kernel message falls back to the next accelerator. Real processes: QEMU itself, or a process
that writes a serial log and exits as QEMU would."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lukspack.boot import BootTestFailed, Outcome, Watched, boot_test
from lukspack.boot.qemu import _Console, failure_reason, watch
from lukspack.errors import LukspackError
from tests.helpers import cli_env, require

NEEDLE = b"LUKSPACK-BOOT-0123456789abcdef"


def _proc(serial: Path, text: str, then_exit: int, linger: float = 0.0) -> subprocess.Popen[bytes]:
    """A process that writes text to the serial log, waits linger seconds and exits."""
    code = (f"import sys, time; open({str(serial)!r}, 'w').write({text!r}); "
            f"time.sleep({linger}); sys.exit({then_exit})")
    return subprocess.Popen([sys.executable, "-c", code])


def _watch(serial: Path, proc: subprocess.Popen[bytes], kvm_probe: float | None,
           timeout: float = 30) -> Watched:
    now = time.monotonic()
    try:
        return watch(proc, _Console(str(serial)), NEEDLE, "tcg", now, now, timeout, kvm_probe, None)
    finally:
        proc.kill()  # a lingering one; one that exited already is not touched
        proc.wait()


def test_marker(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    w = _watch(serial, _proc(serial, "Linux version 6.1\n" + NEEDLE.decode() + "\n", 0, 1), None)
    assert w.outcome is Outcome.MARKER and w.passed and not w.retry


def test_exit_before_the_kernel_retries_only_with_a_next_accelerator(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    w = _watch(serial, _proc(serial, "SeaBIOS\n", 1), kvm_probe=20)
    assert (w.outcome, w.exit_code, w.retry) == (Outcome.EXITED_BEFORE_KERNEL, 1, True)
    w = _watch(serial, _proc(serial, "SeaBIOS\n", 1), kvm_probe=None)
    assert (w.outcome, w.exit_code, w.retry) == (Outcome.QEMU_EXITED, 1, False)


def test_exit_after_the_kernel_is_a_failure_not_a_retry(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    w = _watch(serial, _proc(serial, "[    0.000000] Linux version 6.1\n", 3), kvm_probe=20)
    assert (w.outcome, w.exit_code, w.retry) == (Outcome.QEMU_EXITED, 3, False)


def test_no_kernel_within_the_probe_retries(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    w = _watch(serial, _proc(serial, "SeaBIOS\n", 0, linger=30), kvm_probe=1)
    assert w.outcome is Outcome.NO_KERNEL and w.retry


def test_timeout(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    proc = _proc(serial, "[    1.0] Linux version\n", 0, linger=30)
    try:
        now = time.monotonic()
        w = watch(proc, _Console(str(serial)), NEEDLE, "tcg", now, now, 1, None, None)
    finally:
        proc.kill()
        proc.wait()
    assert w.outcome is Outcome.TIMEOUT and not w.retry and w.exit_code is None


def test_stderr_is_added_because_qemu_exited_not_because_of_the_words(tmp_path: Path) -> None:
    err = tmp_path / "qemu.err"
    err.write_text("qemu-system-x86_64: warning: something\nqemu-system-x86_64: Invalid password\n")
    # worded differently from "QEMU exited ...": the old startswith() test added nothing
    exited = Watched(Outcome.QEMU_EXITED, "the emulator stopped (code 1)", 1)
    assert failure_reason(exited, str(err)) == \
        "the emulator stopped (code 1): qemu-system-x86_64: Invalid password"
    # a timeout whose words begin as an exit's get no stderr
    timed_out = Watched(Outcome.TIMEOUT, "QEMU exited? no: no marker within 5 s (tcg)")
    assert failure_reason(timed_out, str(err)) == timed_out.reason
    # exit code 0 (the guest powered off): nothing QEMU complained about
    assert failure_reason(Watched(Outcome.QEMU_EXITED, "stopped", 0), str(err)) == "stopped"
    assert failure_reason(Watched(Outcome.QEMU_EXITED, "stopped", 1), str(tmp_path / "none")) \
        == "stopped: exit code 1"


def test_qemu_that_cannot_open_the_drive_fails_with_its_message(tmp_path: Path) -> None:
    """A real QEMU run: a qcow2 whose backing file is missing; QEMU exits 1 at once and its
    stderr line is the reason; the CLI exits 1 with BootTestFailed's one line."""
    require("qemu-system-x86_64", "qemu-img")
    image = tmp_path / "orphan.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b",
                    str(tmp_path / "missing.raw"), "-F", "raw", str(image), "64M"], check=True)
    result = boot_test(str(image), timeout=60, accel="tcg")
    assert not result.passed and result.seconds_total < 30
    assert result.reason.startswith("QEMU exited (code 1) before the marker appeared: ")
    assert "missing.raw" in result.reason
    with pytest.raises(BootTestFailed) as e:
        result.raise_on_fail()
    assert isinstance(e.value, LukspackError) and e.value.exit_code == 1
    assert str(e.value) == f"{image}: boot test failed: {result.reason}"
    p = subprocess.run([sys.executable, "-m", "lukspack", "boot-test", str(image), "--accel", "tcg",
                        "--timeout", "60"], capture_output=True, text=True, env=cli_env())
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stdout == f"{image}: FAIL (qcow2, nocloud, tcg)\n"
    assert f"{image}: boot test failed: QEMU exited (code 1) before the marker appeared: " \
        in p.stderr
