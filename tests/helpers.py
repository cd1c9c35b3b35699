"""Test helpers: the CLI as a subprocess, real peer tools, and pattern disk images.

Peers (qemu-img, cryptsetup) and test tools (mkfs.*, sfdisk, compressors, qemu-system) are
required, never skipped: `scripts/test.sh` installs them; `tool` and `require` fail without them.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
MiB = 1 << 20
FAST = ["--pbkdf-force-iterations", "1000"]  # tests do not spend 2 s per key slot


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is required: scripts/test.sh installs it (a peer or test tool is "
                    "never skipped)")
    return path


def require(*names: str) -> None:
    """Fail (never skip) when a tool the test needs is missing: scripts/test.sh installs them."""
    for name in names:
        tool(name)


def run(cmd: list[str], *, input: bytes | None = None, check: bool = True, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run(cmd, input=input, capture_output=True, cwd=cwd, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}:\n{p.stdout.decode()}\n"
                             f"{p.stderr.decode()}")
    return p


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Cli:
    """Runs `python -m lukspack` from this checkout's src/ in a working directory."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def __call__(self, *args: str, input: bytes | None = None, check: bool = True,
                 ) -> subprocess.CompletedProcess[bytes]:
        return run([sys.executable, "-m", "lukspack", *map(str, args)], input=input,
                   check=check, cwd=self.cwd, env=cli_env())

    def fails(self, *args: str, code: int = 1, input: bytes | None = None) -> str:
        """Run a command that must fail with `code` and one line on stderr; return that line."""
        p = self(*args, input=input, check=False)
        err = p.stderr.decode()
        assert p.returncode == code, f"exit {p.returncode}, stderr: {err}"
        assert "Traceback" not in err, err
        if code == 1:
            assert err.count("\n") == 1 and err.startswith("lukspack: error: "), repr(err)
        if code == 2:
            assert err.count("\n") == 1 and err.startswith("lukspack: usage error: "), repr(err)
        return err.strip()


class InProcessCli(Cli):
    """`lukspack.cli.main(argv)` in this process, with the same interface as Cli: no interpreter
    start-up per call (0.3 s each), the same exit codes and output. Signal tests and start-up
    tests keep using Cli (a real process)."""

    def __call__(self, *args: str, input: bytes | None = None, check: bool = True,
                 ) -> subprocess.CompletedProcess[bytes]:
        import io
        import signal
        import warnings

        from lukspack.cli import main

        argv = [str(a) for a in args]
        out, err = io.StringIO(), io.StringIO()
        stdin = io.TextIOWrapper(io.BytesIO(input or b""))
        saved = (sys.stdout, sys.stderr, sys.stdin, signal.getsignal(signal.SIGINT),
                 signal.getsignal(signal.SIGTERM), warnings.showwarning, os.getcwd())
        code = 0
        try:
            sys.stdout, sys.stderr, sys.stdin = out, err, stdin
            os.chdir(self.cwd)
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                try:
                    main(argv)
                except SystemExit as e:
                    code = int(e.code or 0)
        finally:
            sys.stdout, sys.stderr, sys.stdin = saved[0], saved[1], saved[2]
            signal.signal(signal.SIGINT, saved[3])
            signal.signal(signal.SIGTERM, saved[4])
            warnings.showwarning = saved[5]
            os.chdir(saved[6])
        p = subprocess.CompletedProcess(["lukspack", *argv], code, out.getvalue().encode(),
                                        err.getvalue().encode())
        if check and code != 0:
            raise AssertionError(f"lukspack {argv} exited {code}:\n{p.stdout.decode()}\n"
                                 f"{p.stderr.decode()}")
        return p


def pattern_disk(path: Path, mib: int, *, tail: int = 0, seed: int = 1) -> Path:
    """A raw disk: MiB i is byte i repeated (i % 4 == 1: random data; i % 4 == 3: zeros, a hole
    in sparse formats), then `tail` extra bytes of random data (to test sizes that are not whole
    MiB). Tests can assert exactly what each MiB holds."""
    import random

    rnd = random.Random(seed)
    with open(path, "wb") as f:
        for i in range(mib):
            if i % 4 == 1:
                f.write(rnd.randbytes(MiB))
            elif i % 4 == 3:
                f.write(bytes(MiB))
            else:
                f.write(bytes([i % 256]) * MiB)
        if tail:
            f.write(rnd.randbytes(tail))
    return path


# QEMU calibrates PBKDF2 on the thread's CPU clock and gives up with this message when a loaded
# machine gives it too little CPU time (crypto/pbkdf.c); seen in CI with both cores busy. Creating a
# LUKS image with qemu-img is then retried: the image, not QEMU's timing, is what tests look at.
QEMU_PBKDF_FLAKE = "Unable to get accurate CPU usage"


def qemu_img(*args: str) -> subprocess.CompletedProcess[bytes]:
    for _ in range(4):
        p = run([tool("qemu-img"), *args], check=False)
        if p.returncode == 0 or QEMU_PBKDF_FLAKE not in p.stderr.decode():
            break
    if p.returncode != 0:
        raise AssertionError(f"qemu-img {list(args)} exited {p.returncode}:\n{p.stderr.decode()}")
    return p


def cryptsetup(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return run([tool("cryptsetup"), *args], check=check)


def qemu_luks_decrypt(image: Path, key: Path, out: Path) -> Path:
    """Decrypt a LUKS image through QEMU's own LUKS driver."""
    qemu_img("convert", "--object", f"secret,id=s0,file={key}", "--image-opts",
             f"driver=luks,key-secret=s0,file.filename={image}", "-O", "raw", str(out))
    return out


def same_prefix(a: Path, b: Path, size: int | None = None) -> bool:
    """True when the first `size` bytes (default: all of b) of a and b are equal."""
    size = b.stat().st_size if size is None else size
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while size > 0:
            n = min(size, 4 * MiB)
            if fa.read(n) != fb.read(n):
                return False
            size -= n
    return True


def leftovers(directory: Path) -> list[str]:
    """Temporary files lukspack may have left behind."""
    return [p.name for p in directory.iterdir() if "lukspack-tmp" in p.name]


def special_file(directory: Path, kind: str) -> Path:
    """A FIFO, socket, character device (what /dev/null is: 1,3) or directory made in the test's
    own directory, never in /dev. pytest.skip when mknod is not allowed."""
    import socket
    import stat

    p = directory / f"node-{kind}"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    elif kind == "chardev":
        try:
            os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("mknod of a character device needs CAP_MKNOD, which this user lacks")
    else:
        p.mkdir()
    return p


LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE = 0x4C82  # linux/loop.h


def _loop_driver_reason() -> str | None:
    """Why this machine cannot give a loop device (None: it can), after making the nodes a
    container may lack: /dev/loop-control (char 10:237) where the kernel has the driver."""
    if os.geteuid() != 0:
        return f"attaching a loop device needs root (this is uid {os.geteuid()})"
    with open("/proc/devices") as f:
        has_driver = any(line.split()[1:] == ["loop"] for line in f if line.strip())
    if not has_driver:
        p = subprocess.run(["modprobe", "loop"], capture_output=True, text=True)
        if p.returncode != 0:
            return ("this kernel has no loop driver (/proc/devices lists no 'loop'; modprobe "
                    f"loop: {p.stderr.strip() or p.returncode})")
    if not os.path.exists(LOOP_CONTROL):
        try:
            os.mknod(LOOP_CONTROL, 0o600 | stat.S_IFCHR, os.makedev(10, 237))
        except OSError as e:
            return f"{LOOP_CONTROL} is missing and cannot be made here: {e.strerror}"
    return None


def _free_loop_node() -> str:
    """The next free /dev/loopN (LOOP_CTL_GET_FREE), its node made when the container lacks it."""
    import fcntl

    fd = os.open(LOOP_CONTROL, os.O_RDWR)
    try:
        n = fcntl.ioctl(fd, LOOP_CTL_GET_FREE)
    finally:
        os.close(fd)
    node = f"/dev/loop{n}"
    if not os.path.exists(node):
        os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, n))
    return node


@contextmanager
def loop_device(backing: Path, *, read_only: bool = False) -> Iterator[str]:
    """A loop device over `backing`, detached afterwards. losetup missing fails the test (a test
    tool is never skipped); a machine that cannot have loop devices at all (not root, a kernel
    without the driver, a /dev where the node cannot be made) skips, saying which; a loop device
    that the machine could give and losetup does not attach fails."""
    losetup = tool("losetup")
    reason = _loop_driver_reason()
    if reason is not None:
        pytest.skip(f"no loop device: {reason}")
    args = [losetup, "--show", *(["--read-only"] if read_only else [])]
    p = subprocess.run([*args, "--find", str(backing)], capture_output=True, text=True)
    if p.returncode != 0:  # a container's /dev may lack the node losetup picked
        p = subprocess.run([*args, _free_loop_node(), str(backing)], capture_output=True,
                           text=True)
    if p.returncode != 0:
        pytest.fail(f"losetup could not attach {backing}: {p.stderr.strip()}")
    dev = p.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run([losetup, "-d", dev], check=False)
