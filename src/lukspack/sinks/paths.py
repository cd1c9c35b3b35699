"""Rules for an output path, before anything is written (the file sink's half of issue 10).

- What the name may be: a regular file (replaced with --force; a symbolic link is replaced
  itself, its target left as it was), a new name, or a block device (written in place, with
  --force; also through a link). A character device, FIFO, socket or directory is refused.
- What it must not be: any file the run reads (the source, a VMDK's extents) or a key file, by
  identity (device and inode, through symlinks and hard links).
- check_output_path says all that (and that the directory exists and is writable) before the
  source is opened, so a bad output fails first.
- Temporary files are `.NAME.PID.START.HOST.BOOT.RANDOM.lukspack-tmp` beside the destination
  (START: the process's start time in clock ticks since boot, HOST and BOOT: 8 hex digits of
  SHA-256 of the host name and of the kernel's boot id), NAME cut by bytes to fit NAME_MAX.
  Every run that writes into a directory removes the temporary files there whose process is
  gone: made on this host in an earlier boot, or in this boot by a process that no longer runs
  (no process with that PID, or one that started at another time: the PID was reused). Those of
  other hosts (a shared directory) are left alone.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterable

from lukspack.errors import OutputError, UsageError

TMP_SUFFIX = ".lukspack-tmp"
NAME_MAX = 255  # when pathconf cannot tell
_TMP_RE = re.compile(r"\.(\d+)\.(\d+)\.([0-9a-f]{8})\.([0-9a-f]{8})\.[0-9a-f]{8}"
                     + re.escape(TMP_SUFFIX) + "$")
_PROC = os.path.exists("/proc/self/stat")


def os_error(path: str, e: OSError, doing: str) -> OutputError:
    if e.errno == errno.ENOSPC:
        return OutputError(f"{path}: no space left on device while {doing}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: cannot write here: {e.strerror}")
    return OutputError(f"{path}: {doing} failed: {e.strerror}")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_not_protected(path: str, protected: Iterable[tuple[str, str]]) -> None:
    """Refuse an output that is one of the protected files: (what, path) pairs such as
    ("source", "disk.vhd") or ("key file", "dek.key"), compared by device and inode."""
    mine = _identity(path)
    real = os.path.realpath(path)
    for what, other in protected:
        if other in ("-", ""):
            continue
        theirs = _identity(other)
        if (mine is not None and mine == theirs) or real == os.path.realpath(other):
            raise OutputError(f"{path}: output is the same file as the {what} {other}; lukspack "
                              f"never writes over its {what}")


def output_kind(path: str, force: bool) -> str:
    """'new', 'file' (an existing regular file, --force given) or 'block' (a block device,
    --force given); anything else is refused with one line."""
    link = os.path.islink(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if link:
            if force:
                return "file"  # --force replaces the link itself
            raise OutputError(f"{path}: is a dangling symbolic link (use --force to replace the "
                              "link)") from None
        return "new"
    except OSError as e:
        raise os_error(path, e, "checking the output") from None
    mode = st.st_mode
    if link and not stat.S_ISBLK(mode):  # a link to a block device writes the device
        if force:
            return "file"  # the link is replaced, never what it points to
        raise OutputError(f"{path}: already exists as a symbolic link (use --force to replace "
                          "the link)")
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            raise OutputError(f"{path}: is {what}; lukspack writes regular files and block devices")
    kind = "block" if stat.S_ISBLK(mode) else "file"
    if not force:
        if kind == "block":
            raise OutputError(f"{path}: is a block device; use --force to write the image onto it "
                              "(everything on it is overwritten)")
        raise OutputError(f"{path}: already exists (use --force to replace it)")
    return kind


def check_output_path(path: str, force: bool, protected: Iterable[tuple[str, str]] = ()) -> str:
    """Everything about the output that can be known before the source is opened: a name
    (UsageError for an empty one or `-`), not a directory's (a trailing /), not a protected file, a
    kind output_kind allows, and for a file a directory that exists and that this process may
    write in. Returns output_kind's answer. The source's extent files are checked again when
    the sink is opened."""
    if not path:
        raise UsageError("OUTPUT is empty: name the file to write")
    if path == "-":  # standard output to a dd or cryptsetup user; never a file named -
        raise UsageError("OUTPUT '-': lukspack writes images to files, not standard output; "
                         "name the file (./- for a file named -)")
    if path.endswith(("/", os.sep)):
        raise OutputError(f"{path}: ends in '/': name the file to write, not a directory")
    check_not_protected(path, protected)
    kind = output_kind(path, force)
    if kind != "block":
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise OutputError(f"{path}: directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            try:
                readonly = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
            except OSError:
                readonly = False
            why = "is on a read-only file system" if readonly else "is not writable by this user"
            raise OutputError(f"{path}: cannot write here: directory {directory} {why}")
    return kind


# -- temporary names -----------------------------------------------------------------------------

def _tag(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


HOST = _tag(socket.gethostname())
BOOT = _tag(_boot_id())


def process_start(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22); None when
    there is no such process or no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def name_max(directory: str) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX


def temp_name(path: str) -> str:
    """`.NAME.PID.START.HOST.BOOT.RANDOM.lukspack-tmp` beside path, NAME's bytes cut to fit
    NAME_MAX (never inside a UTF-8 character)."""
    directory = os.path.dirname(os.path.abspath(path))
    pid = os.getpid()
    tail = f".{pid}.{process_start(pid) or 0}.{HOST}.{BOOT}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    room = name_max(directory) - len(os.fsencode(tail)) - 1
    raw = os.fsencode(os.path.basename(path))
    base = os.fsdecode(raw[:room])
    if len(raw) > room:  # drop the bytes of a character the cut split
        while base and "\udc80" <= base[-1] <= "\udcff":
            base = base[:-1]
    return os.path.join(directory, f".{base}{tail}")


def _owner_gone(pid: int, start: int, host: str, boot: str) -> bool:
    if host != HOST:
        return False  # another machine's, in a shared directory: it cannot be judged from here
    if boot != BOOT:
        return True  # this machine's, from before its last boot
    if start and _PROC:
        return process_start(pid) != start  # no such process, or the PID was reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_stale_temps(directory: str) -> list[tuple[str, int]]:
    """Remove the temporary files in directory whose lukspack run is gone (killed with SIGKILL,
    a crash, a reboot), whatever output they were for; returns (path, allocated bytes) of each
    one removed."""
    removed: list[tuple[str, int]] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _TMP_RE.search(name)
        if m is None or not name.startswith("."):
            continue
        if not _owner_gone(int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)):
            continue
        full = os.path.join(directory, name)
        try:
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                continue
            os.unlink(full)
        except OSError:
            continue
        removed.append((full, st.st_blocks * 512))
    return removed


def stale_temps_note(directory: str, removed: list[tuple[str, int]]) -> str:
    """One line about what remove_stale_temps removed."""
    names = [os.path.basename(p) for p, _ in removed]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    total = sum(n for _, n in removed)
    what = "temporary file" if len(names) == 1 else "temporary files"
    return (f"removed {len(names)} {what} of killed lukspack runs from {directory} "
            f"({total} bytes allocated): {shown}")
