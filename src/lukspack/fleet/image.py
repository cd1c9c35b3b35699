"""The one per-image function every executor runs: `run_image(task, emit)`.

Idempotent, so any executor may run it again after a crash: an image recorded done (in the state
directory, or in the record beside its object in the bucket) is skipped; otherwise it runs as one
`publish` with resume on, so a kept multipart upload continues (the object sink's resume) and an
image publish already created is not created again (publish's own state). Its key never travels:
the task names the key file (or, key: new, where to write it); the worker reads it.

A task is a JSON-able dict: the row's merged fields, plus index, state_dir, key_file, size.
Events go to `emit(dict)`: {"event": "start" | "say" | "progress" | "end", "name": ..., ...}.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from lukspack.errors import Interrupted, LukspackError
from lukspack.fleet import state as st

Emit = Callable[[dict[str, Any]], None]
QUIET_PREFIXES = ("checked: ", "needs service authorization: ")  # printed once by the plan


def upload_state_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "uploads")


def _done_elsewhere(task: dict[str, Any], cos: Any) -> dict[str, Any] | None:
    rec = st.read_bucket_record(task["output"], cos)
    return rec if rec is not None and rec.get("status") == "done" else None


def run_image(task: dict[str, Any], emit: Emit) -> dict[str, Any]:
    """Run one image to done (or failed); returns its state record. Never raises for the
    image's own failure: it is recorded (status failed, error) and returned."""
    name = task["name"]
    state = st.ImageState(task["state_dir"], name)
    state.load()
    if state.data.get("status") == "done":
        emit({"event": "end", "name": name, "status": "done", "skipped": True})
        return state.data
    if not state.lock():
        emit({"event": "end", "name": name, "status": "running", "skipped": True,
              "error": "another worker is running this image"})
        return {**state.data, "status": "running"}
    try:
        return _run_locked(task, state, emit)
    finally:
        state.unlock()


def _run_locked(task: dict[str, Any], state: st.ImageState, emit: Emit) -> dict[str, Any]:
    from lukspack.fleet.manifest import publish_plan

    name = task["name"]
    v = {**task, "upload_state_dir": upload_state_dir(task["state_dir"])}
    plan = publish_plan(v)
    base = {"name": name, "index": task["index"], "target": task["target"],
            "format": plan.format, "output": task["output"], "size": task.get("size")}
    t0 = time.monotonic()
    try:
        remote = _done_elsewhere(task, plan.cos_options)
    except LukspackError as e:
        remote = None
        emit({"event": "say", "name": name, "line": f"cannot read the fleet record: {e}"})
    if remote is not None:
        state.save(**base, **{k: remote.get(k) for k in ("image", "sha256", "seconds",
                                                          "finished")}, status="done")
        emit({"event": "end", "name": name, "status": "done", "skipped": True,
              "image": remote.get("image")})
        return state.data
    attempts = int(state.data.get("attempts", 0)) + 1
    state.save(**base, status="running", started=time.time(), attempts=attempts,
               host=socket.gethostname(), pid=os.getpid(), error=None)
    emit({"event": "start", "name": name, "attempt": attempts})

    def say(line: str) -> None:
        if not line.startswith(QUIET_PREFIXES):
            emit({"event": "say", "name": name, "line": line})

    def progress(phase: str, done: int, total: int) -> None:
        emit({"event": "progress", "name": name, "phase": phase, "done": done, "total": total})

    try:
        _record(task, plan, st.public_record({**state.data}))
        result = _publish(task, plan, say, progress)
    except Interrupted as e:  # recorded, then the signal goes on (the run stops)
        _failed(task, plan, state, str(e), t0, emit)
        raise
    except LukspackError as e:
        return _failed(task, plan, state, str(e), t0, emit)
    except Exception as e:  # an image's bug must not stop the fleet: recorded, not raised
        return _failed(task, plan, state, f"{type(e).__name__}: {e}", t0, emit)
    img = result.get("image") or {}
    state.save(status="done", image={k: img.get(k) for k in ("id", "crn", "name", "status",
                                                             "globalIdentifier") if img.get(k)},
               sha256=result.get("sha256"), seconds=round(time.monotonic() - t0, 1),
               finished=time.time(), error=None,
               resumed_parts=result.get("resumed_parts"), peak_rss_mib=_peak_rss_mib())
    try:
        _record(task, plan, st.public_record(state.data))
        _abort_strays(plan)
    except LukspackError as e:
        say(f"warning: {e}")
    emit({"event": "end", "name": name, "status": "done", "image": state.data["image"],
          "seconds": state.data["seconds"]})
    return state.data


def _peak_rss_mib() -> float:
    """The worker process's peak resident memory so far (a Ray worker's, over its tasks)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _failed(task: dict[str, Any], plan: Any, state: st.ImageState, error: str, t0: float,
            emit: Emit) -> dict[str, Any]:
    state.save(status="failed", error=error, seconds=round(time.monotonic() - t0, 1),
               finished=time.time())
    try:
        _record(task, plan, st.public_record(state.data))
    except LukspackError:
        pass
    emit({"event": "end", "name": task["name"], "status": "failed", "error": error})
    return state.data


def _record(task: dict[str, Any], plan: Any, record: dict[str, Any]) -> None:
    st.write_bucket_record(task["output"], plan.cos_options, record)


def _publish(task: dict[str, Any], plan: Any, say: Callable[[str], None],
             progress: Callable[[str, int, int], None]) -> dict[str, Any]:
    """The row through api.publish, the job `lukspack publish` runs: an existing key file, or
    (`key: new`, not written yet) a new key written once every check passed."""
    from lukspack import api

    path = task["key_file"]
    new = task["key"] == "new" and not os.path.exists(path)
    if new:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    # the KDF settings serve the outputs with key slots; the encrypted VHD has none (its key is
    # the key file), so a fleet-wide --pbkdf-force-iterations does not apply to its rows
    iterations = task.get("pbkdf_force_iterations") if plan.format != "vhd" else None
    req = api.PublishRequest(
        task["source"], plan.target, plan.cos, plan.root_key_crn, plan.kms_instance, plan.name,
        plan.os_name, key=None if new else api.KeySource(path=path),
        new_key_file=path if new else None, output_format=plan.output_format,
        resource_group=plan.resource_group, note=plan.note, cloud_init=plan.cloud_init,
        byol=plan.byol, kms_url=plan.kms_url, private_kms=plan.private_kms,
        api_url=plan.api_url, wait=plan.wait, resume=plan.resume, skip_check=plan.skip_check,
        pbkdf_force_iterations=iterations or None, input_format=task.get("input_format"),
        cos_options=plan.cos_options)
    return api.publish(req, progress=progress, say=say).to_dict()


def _abort_strays(plan: Any) -> None:
    """The image is done: any multipart upload still open on its object (a worker killed
    between creating an upload and recording it) is garbage, and billed; abort it."""
    from lukspack.cloud.multipart import abort_upload
    from lukspack.cloud.publish import object_location
    from lukspack.cloud.s3 import cloud_error
    from lukspack.cloud.upload import connect

    loc = object_location(plan)
    _, _, client = connect(str(loc), plan.cos_options)
    try:
        ups = client.list_multipart_uploads(Bucket=loc.bucket, Prefix=loc.key).get("Uploads")
    except Exception as e:
        raise cloud_error(e, f"{loc}: list multipart uploads") from None
    for u in ups or []:
        if u.get("Key") == loc.key:
            abort_upload(client, loc, u["UploadId"])
