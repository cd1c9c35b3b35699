"""What each image of a fleet has done: a JSON file per image in the state directory, and a small
JSON object beside the image's object in the bucket (OUTPUT.lukspack-fleet.json), so that a run
on another machine (an indexed batch job's next pod) sees a finished image too.

Statuses: pending (nothing recorded), running (a worker holds the image's lock), done (imported;
the image id recorded), failed (the error recorded; a rerun tries again, resuming). A worker
holds an exclusive flock on STATE_DIR/NAME.lock while it runs an image, so two runs sharing a
state directory never run the same image at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Any

from lukspack.errors import LukspackError

BUCKET_SUFFIX = ".lukspack-fleet.json"
STATUSES = ("pending", "running", "done", "failed")


class StateError(LukspackError):
    pass


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class ImageState:
    def __init__(self, state_dir: str, name: str) -> None:
        self.dir = state_dir
        self.path = os.path.join(state_dir, f"{safe_name(name)}.json")
        self.lock_path = os.path.join(state_dir, f"{safe_name(name)}.lock")
        self.data: dict[str, Any] = {}
        self._lock_fd: int | None = None

    def load(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                self.data = json.load(f)
        except FileNotFoundError:
            self.data = {}
        except (OSError, ValueError):
            raise StateError(f"{self.path}: fleet state is unreadable; remove it to run the "
                             "image again") from None
        if not isinstance(self.data, dict):
            raise StateError(f"{self.path}: fleet state is not a JSON object; remove it")
        return self.data

    @property
    def status(self) -> str:
        s = self.data.get("status", "pending")
        if s == "running" and not self.locked_elsewhere():
            return "interrupted"  # a worker died (kill -9, a lost node): a rerun resumes it
        return str(s)

    def save(self, **kv: Any) -> None:
        self.data.update(kv, updated=time.time())
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # -- the per-image lock ------------------------------------------------------------------
    def lock(self) -> bool:
        """Take the image's lock; False when another live worker holds it."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def locked_elsewhere(self) -> bool:
        if self._lock_fd is not None:
            return False
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


# -- the small JSON beside the object ------------------------------------------------------------

def bucket_record_location(output: str) -> str:
    return output + BUCKET_SUFFIX


def read_bucket_record(output: str, cos_options: Any) -> dict[str, Any] | None:
    """The record beside output, or None when there is none (any other failure raises)."""
    from lukspack.cloud.s3 import cloud_error
    from lukspack.cloud.upload import connect

    loc, _, client = connect(bucket_record_location(output), cos_options)
    try:
        r = client.get_object(Bucket=loc.bucket, Key=loc.key)
        data = json.loads(r["Body"].read(1 << 20))
    except ValueError:
        return None
    except Exception as e:
        code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            return None
        raise cloud_error(e, f"{loc}: read the fleet record") from None
    return data if isinstance(data, dict) else None


def write_bucket_record(output: str, cos_options: Any, record: dict[str, Any]) -> None:
    from lukspack.cloud.s3 import cloud_error
    from lukspack.cloud.upload import connect

    loc, _, client = connect(bucket_record_location(output), cos_options)
    body = json.dumps(record, indent=1, sort_keys=True).encode()
    try:
        client.put_object(Bucket=loc.bucket, Key=loc.key, Body=body,
                          ContentType="application/json")
    except Exception as e:
        raise cloud_error(e, f"{loc}: write the fleet record") from None


def public_record(data: dict[str, Any]) -> dict[str, Any]:
    """What goes into the bucket: status, image, checksums, times; never a key or a path to one."""
    keep = ("name", "target", "format", "status", "image", "sha256", "size", "seconds",
            "error", "finished", "started", "host", "attempts")
    return {k: data[k] for k in keep if k in data}
