"""Atomic output files: written to a temporary file beside the destination, fsynced, renamed.

Any failure or signal before commit() removes the temporary file, so a finished-looking image is
never left behind. An existing destination needs force=True; a destination that is the source
(by path, by link or by inode) is always refused.
"""

from __future__ import annotations

import errno
import os
import secrets

from lukspack.errors import OutputError


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def os_error(path: str, e: OSError, doing: str) -> OutputError:
    if e.errno == errno.ENOSPC:
        return OutputError(f"{path}: no space left on device while {doing}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: cannot write here: {e.strerror}")
    return OutputError(f"{path}: {doing} failed: {e.strerror}")


class AtomicOutput:
    """A temporary file that becomes `path` on commit(); use as a context manager."""

    def __init__(self, path: str, *, force: bool = False, sources: tuple[str, ...] = (),
                 mode: int = 0o666) -> None:
        self.path = path
        for src in sources:
            if same_file(path, src):
                raise OutputError(f"{path}: output is the same file as the source {src}; "
                                  "lukspack never writes over its source")
        if os.path.lexists(path):
            if not force:
                raise OutputError(f"{path}: already exists (use --force to replace it)")
            if os.path.isdir(path):
                raise OutputError(f"{path}: is a directory")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise OutputError(f"{path}: directory {directory} does not exist")
        base = os.path.basename(path)
        self.tmp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.lukspack-tmp")
        try:
            self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except OSError as e:
            raise os_error(path, e, "creating the output") from None
        self.committed = False

    def preallocate(self, size: int) -> None:
        """Reserve size bytes now, so a full disk fails at once rather than midway."""
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise os_error(self.path, e, f"reserving {size} bytes") from None
            self.truncate(size)

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            raise os_error(self.path, e, f"sizing the output to {size} bytes") from None

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as e:
            raise os_error(self.path, e, "writing") from None

    def fsync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise os_error(self.path, e, "flushing to disk") from None

    def commit(self) -> None:
        """fsync, rename over the destination, fsync the directory."""
        self.fsync()
        os.close(self.fd)
        self.fd = -1
        try:
            os.replace(self.tmp, self.path)
        except OSError as e:
            raise os_error(self.path, e, "renaming the finished output into place") from None
        self.committed = True
        try:
            dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.committed:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()
