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


DIRECT_ALIGN = 4096  # O_DIRECT alignment that suits 512 and 4096-byte logical blocks


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
        self.direct_fd = -1
        self._direct_ok = False  # cleared, never closed early, when the kernel refuses a write:
        # worker threads may be using the descriptor at that moment

    @property
    def direct(self) -> bool:
        """Whether payload writes are going through O_DIRECT."""
        return self.direct_fd >= 0 and self._direct_ok

    def open_direct(self) -> bool:
        """A second descriptor with O_DIRECT, for the payload: whole aligned chunks go straight to
        the device, without a copy into the page cache and its write-back later (measured here:
        0.4 CPU seconds per GiB against 1.5-2.8 for buffered writes and fdatasync, at the same
        wall time). False where the filesystem has no direct I/O (tmpfs): buffered writes then."""
        if not hasattr(os, "O_DIRECT") or os.environ.get("LUKSPACK_NO_DIRECT_IO"):
            return False
        try:
            self.direct_fd = os.open(self.tmp, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError:
            return False
        self._direct_ok = True
        return True

    def pwrite_payload(self, offset: int, data: memoryview) -> None:
        """pwrite through the O_DIRECT descriptor when there is one and the write is aligned
        (offset, length and memory to 4096); anything the kernel refuses there (EINVAL) is
        written buffered instead, and direct I/O is given up for the rest of the file.
        Safe to call from several threads at once (positional writes to disjoint ranges)."""
        if self._direct_ok and not (offset | len(data)) & (DIRECT_ALIGN - 1):
            view = memoryview(data).cast("B")
            try:
                while view:
                    n = os.pwrite(self.direct_fd, view, offset)
                    view, offset = view[n:], offset + n
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise os_error(self.path, e, "writing") from None
                self._direct_ok = False
                data = view
        self.pwrite(offset, data)

    def _close_direct(self) -> None:
        self._direct_ok = False
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1

    def preallocate(self, size: int) -> None:
        """Fail now, not midway, when the filesystem lacks room for size bytes; then give the file
        its final size (sparse: the payload fills it).

        A check of the free space rather than posix_fallocate: writing into fallocated (unwritten)
        extents measured 0.3-0.4 s slower per GiB on ext4 here, the extent conversion landing on
        the final fsync. Space taken by others during the run still ends in a clean ENOSPC error.
        """
        try:
            st = os.fstatvfs(self.fd)
        except OSError:
            st = None
        if st is not None and st.f_frsize and st.f_bavail * st.f_frsize < size:
            free = st.f_bavail * st.f_frsize
            raise OutputError(f"{self.path}: no space left on device: the image needs {size} "
                              f"bytes, the filesystem has {free} free")
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
        self._close_direct()
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
        self._close_direct()
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
