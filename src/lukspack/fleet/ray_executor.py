"""The Ray executor (`fleet run --ray auto|local|ADDRESS`): one Ray task per image.

Each task is the per-image function (fleet.image.run_image) as `@ray.remote(num_cpus=...,
max_retries=...)`; Ray retries a task whose worker died (kill -9, a lost node), which is safe
because run_image is idempotent (it resumes). Results are gathered as they finish (`ray.wait`);
events reach the driver through a `ray.util.queue.Queue` as they happen.

Secrets never travel through Ray: a task holds the row's fields and paths (the key file, or
where `key: new` writes it) and no key; each worker reads the key file from its own file system
(a keys directory on storage every node mounts, at the same path) and takes its credentials from
its own environment (the `ray start` of its node) or a credentials file. The runtime
environment forwards only variables that are not secrets (FORWARD_ENV). The driver copies each
finished task's state record into its own state directory, so `fleet status` on the driver sees
images run on other nodes.

`ray` is an optional dependency: `pip install 'lukspack[ray]'`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from lukspack.errors import LukspackError
from lukspack.fleet import state as st

Emit = Callable[[dict[str, Any]], None]
FORWARD_ENV = ("COS_ENDPOINT", "COS_CREDENTIALS_FILE", "LUKSPACK_POLL_S",
               "LUKSPACK_REMOTE_BACKOFF_S", "XDG_CACHE_HOME")
MAX_RETRIES = 3


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise LukspackError("--ray needs Ray, which is not installed: pip install "
                            "'lukspack[ray]'") from None
    return ray


def _task_body(task: dict[str, Any], queue: Any) -> dict[str, Any]:
    from lukspack.fleet.image import run_image
    from lukspack.fleet.report import throttled

    def send(ev: dict[str, Any]) -> None:
        try:
            queue.put_nowait(ev)
        except Exception:
            pass  # progress lines are not worth failing an image for

    emit = throttled(send)
    return run_image(task, emit)


def run_ray(tasks: list[dict[str, Any]], address: str, emit: Emit, *, num_cpus: float = 1,
            max_retries: int = MAX_RETRIES) -> None:
    """Run every task on the Ray cluster at address ('auto': the running one, 'local': start
    one in this process); returns when all have ended."""
    import contextlib
    import sys

    # Ray's own messages (a worker died, a task retried) go to stderr: stdout is the result's
    with contextlib.redirect_stdout(sys.stderr):
        _run(require_ray(), tasks, address, emit, num_cpus, max_retries)


def _run(ray: Any, tasks: list[dict[str, Any]], address: str, emit: Emit, num_cpus: float,
         max_retries: int) -> None:
    from ray.util.queue import Queue

    env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    init: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                            "logging_level": "warning", "configure_logging": True}
    try:
        if address == "local":
            ray.init(include_dashboard=False, **init)
        else:
            ray.init(address=address, **init)
    except Exception as e:  # ConnectionError and Ray's own
        raise LukspackError(f"--ray {address}: cannot connect to a Ray cluster: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    try:
        queue = Queue()
        remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries)(_task_body)
        refs = {remote.remote(t, queue): t for t in tasks}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            _drain(queue, emit)
            for ref in done:
                task = refs.pop(ref)
                _finished(ray, ref, task, emit)
        _drain(queue, emit)
    finally:
        ray.shutdown()


def _drain(queue: Any, emit: Emit) -> None:
    while True:
        try:
            items = queue.get_nowait_batch(queue.qsize())
        except Exception:
            return
        if not items:
            return
        for ev in items:
            emit(ev)


def _finished(ray: Any, ref: Any, task: dict[str, Any], emit: Emit) -> None:
    state = st.ImageState(task["state_dir"], task["name"])
    try:
        record = ray.get(ref)
    except Exception as e:  # the task failed after its retries (workers kept dying)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        error = f"the Ray task failed after {MAX_RETRIES} retries: {first}"
        state.load()
        state.save(status="failed", error=error, finished=time.time())
        emit({"event": "end", "name": task["name"], "status": "failed", "error": error})
        return
    if isinstance(record, dict) and record.get("status") in ("done", "failed"):
        state.load()
        if state.data != record:
            state.data = dict(record)
            state.save()
