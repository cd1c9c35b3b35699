"""Rules for an output path, before anything is written (the file sink's half of issue 10).

- What the name may be: a regular file (replaced with --force), a new name, or a block device
  (written in place, with --force). A character device, FIFO, socket or directory is refused.
- What it must not be: any file the run reads (the source, a VMDK's extents) or a key file, by
  identity (device and inode, through symlinks and hard links).
- Temporary files are `.NAME.PID.RANDOM.lukspack-tmp` beside the destination, cut to fit
  NAME_MAX; the next run to the same destination removes those whose process is gone.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from collections.abc import Iterable

from lukspack.errors import OutputError

TMP_SUFFIX = ".lukspack-tmp"
NAME_MAX = 255
_TMP_RE = re.compile(r"\.(\d+)\.[0-9a-f]{8}" + re.escape(TMP_SUFFIX) + "$")


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
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise OutputError(f"{path}: is a dangling symbolic link") from None
        return "new"
    except OSError as e:
        raise os_error(path, e, "checking the output") from None
    mode = st.st_mode
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


def temp_name(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    tail = f".{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    base = os.path.basename(path)[: NAME_MAX - len(tail) - 1]
    return os.path.join(directory, f".{base}{tail}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: str) -> list[tuple[str, int]]:
    """Remove temporary files of earlier runs to the same destination whose process is gone
    (killed with SIGKILL, or a crash); returns (name, allocated bytes) of each removed."""
    directory = os.path.dirname(os.path.abspath(path))
    head = "." + os.path.basename(path)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _TMP_RE.search(name)
        if m is None or not path_prefix_matches(name[: m.start()], head) or \
                int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
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


def path_prefix_matches(stem: str, head: str) -> bool:
    """The stem of a temporary name is the destination's name, possibly cut to fit NAME_MAX."""
    return stem == head or (len(stem) >= 32 and head.startswith(stem))
