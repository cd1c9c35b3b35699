"""Where the per-image function runs; each executor only decides that.

- indexed: one row in this process (`fleet run --index N`, or N from JOB_COMPLETION_INDEX,
  Kubernetes Indexed Jobs, or JOB_INDEX, IBM Cloud Code Engine array jobs);
- local: a pool of worker processes (`python -m lukspack.fleet.worker`, one per image, at most
  `jobs` at once). A worker that dies (kill -9, out of memory) fails its image only; the others
  go on. Workers die with the fleet run (PR_SET_PDEATHSIG), so a killed run leaves no worker
  racing the rerun; each worker holds its image's lock while it runs (fleet/state.py).

Worker output (tracebacks of a bug) goes to STATE_DIR/NAME.log.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from lukspack.errors import LukspackError
from lukspack.fleet import state as st
from lukspack.fleet.image import run_image

Emit = Callable[[dict[str, Any]], None]
INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "JOB_INDEX")


def index_from_env(env: dict[str, str] | None = None) -> tuple[int, str] | None:
    """(N, variable) from the batch system's environment, or None."""
    env = dict(os.environ) if env is None else env
    for var in INDEX_VARIABLES:
        v = env.get(var)
        if v is not None and v.strip() != "":
            try:
                n = int(v)
            except ValueError:
                raise LukspackError(f"{var}={v!r} is not a row index") from None
            if n < 0:
                raise LukspackError(f"{var}={v!r} is not a row index")
            return n, var
    return None


def run_indexed(task: dict[str, Any], emit: Emit) -> dict[str, Any]:
    return run_image(task, emit)


def _die_with_parent() -> None:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class _Worker:
    def __init__(self, task: dict[str, Any]) -> None:
        self.task = task
        os.makedirs(task["state_dir"], mode=0o700, exist_ok=True)
        log = os.path.join(task["state_dir"], f"{st.safe_name(task['name'])}.log")
        self.log = open(log, "ab")  # noqa: SIM115 - closed by _reap / run_local
        self.proc = subprocess.Popen([sys.executable, "-m", "lukspack.fleet.worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=_worker_env(),
                                     preexec_fn=_die_with_parent)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(task).encode())
        self.proc.stdin.close()
        self.buf = b""
        self.ended = False


def run_local(tasks: list[dict[str, Any]], jobs: int, emit: Emit) -> None:
    """Run every task, at most `jobs` workers at once; returns when all have ended."""
    pending = deque(tasks)
    running: dict[int, _Worker] = {}
    sel = selectors.DefaultSelector()
    try:
        while pending or running:
            while pending and len(running) < jobs:
                w = _Worker(pending.popleft())
                assert w.proc.stdout is not None
                running[w.proc.stdout.fileno()] = w
                sel.register(w.proc.stdout, selectors.EVENT_READ, w)
            for key, _ in sel.select(timeout=0.5):
                w = key.data
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    w.buf += chunk
                    *lines, w.buf = w.buf.split(b"\n")
                    for line in lines:
                        _relay(w, line, emit)
                    continue
                sel.unregister(key.fileobj)
                del running[key.fd]
                _reap(w, emit)
    finally:
        for w in running.values():
            if w.proc.poll() is None:
                w.proc.terminate()  # the worker keeps its upload for the rerun
        deadline = time.monotonic() + 30
        for w in running.values():
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            w.log.close()
        sel.close()


def _relay(w: _Worker, line: bytes, emit: Emit) -> None:
    try:
        ev = json.loads(line)
    except ValueError:
        return
    if isinstance(ev, dict):
        if ev.get("event") == "end":
            w.ended = True
        emit(ev)


def _reap(w: _Worker, emit: Emit) -> None:
    code = w.proc.wait()
    w.log.close()
    if w.ended:
        return
    how = f"killed by signal {-code}" if code < 0 else f"exited {code}"
    state = st.ImageState(w.task["state_dir"], w.task["name"])
    state.load()
    error = f"the worker {how} (the next run resumes the image)"
    if state.data.get("status") in (None, "running"):
        state.save(status="failed", error=error, finished=time.time())
    emit({"event": "end", "name": w.task["name"], "status": "failed", "error": error})
