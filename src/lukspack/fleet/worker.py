"""A local-pool worker: `python -m lukspack.fleet.worker` reads one task (JSON) on stdin, runs
it with fleet.image.run_image and writes its events, one JSON object a line, on stdout.

The task holds paths and options, never a key or a credential (the worker reads the key file
and takes credentials from the environment or the credentials file, as publish does). SIGTERM
and SIGINT are raised as Interrupted at publish's safe points, so the object sink keeps its
upload for the next run to resume.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any


def _on_signal(signum: int, _frame: Any) -> None:
    from lukspack import interrupt
    from lukspack.errors import Interrupted

    signal.signal(signum, signal.SIG_IGN)  # once
    if interrupt.deferring():
        interrupt.request(signum)
        return
    raise Interrupted(signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    import warnings

    from lukspack.fleet.image import run_image
    from lukspack.fleet.report import throttled

    task = json.loads(sys.stdin.read())
    out = sys.stdout

    def send(ev: dict[str, Any]) -> None:
        out.write(json.dumps(ev) + "\n")
        out.flush()

    emit = throttled(send)

    warnings.showwarning = lambda m, *_a, **_k: emit(
        {"event": "say", "name": task.get("name"), "line": f"warning: {m}"})
    from lukspack.errors import Interrupted

    try:
        r = run_image(task, emit)
    except Interrupted as e:  # recorded by run_image; the upload is kept for the rerun
        return e.exit_code
    return 0 if r.get("status") == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
