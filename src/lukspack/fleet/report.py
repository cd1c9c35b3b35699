"""The fleet's table and JSON (run and status), and its progress lines: one line per image
event, and a whole-fleet line (images done, bytes, rate, ETA) after each image ends and every
few seconds while bytes move."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lukspack.fleet.plan import status_of

FLEET_LINE_EVERY = 5.0
COLUMNS = ("index", "image", "format", "size", "seconds", "status", "image id")


def throttled(send: Callable[[dict[str, Any]], None], every_s: float = 1.0
              ) -> Callable[[dict[str, Any]], None]:
    """send, with an image's progress events cut to one per every_s (the last one always goes:
    a worker's pipe or a Ray queue need not carry a line per chunk)."""
    last = [0.0]

    def emit(ev: dict[str, Any]) -> None:
        if ev.get("event") == "progress":
            now = time.monotonic()
            if ev["done"] < ev["total"] and now - last[0] < every_s:
                return
            last[0] = now
        send(ev)

    return emit


def human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def rows_of(tasks: list[dict[str, Any]], bucket: bool = False) -> list[dict[str, Any]]:
    """One record per image from the state directory; bucket: an image with no local state
    from the record beside its object (the state of pods that shared no state directory)."""
    from lukspack.fleet.manifest import publish_plan
    from lukspack.fleet.state import read_bucket_record

    out = []
    for t in tasks:
        status, data = status_of(t)
        if bucket and not data:
            data = read_bucket_record(t["output"], publish_plan(t).cos_options) or {}
            status = str(data.get("status", "pending"))
        img = data.get("image") or {}
        out.append({"index": t["index"], "name": t["name"], "target": t["target"],
                    "format": publish_plan(t).format, "output": t["output"],
                    "size": data.get("size", t.get("size")), "seconds": data.get("seconds"),
                    "status": status, "image_id": img.get("id"),
                    "image": img or None,
                    "error": ("a worker is running this image now" if status == "running"
                              else data.get("error")),
                    "attempts": data.get("attempts", 0)})
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"images": rows, "counts": counts,
            "all_done": all(r["status"] == "done" for r in rows)}


def table(rows: list[dict[str, Any]]) -> list[str]:
    cells = [list(COLUMNS)]
    for r in rows:
        cells.append([str(r["index"]), r["name"], r["format"], human(r["size"]),
                      "-" if r["seconds"] is None else f"{r['seconds']:.1f}", r["status"],
                      str(r["image_id"] or "-")])
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    for r in rows:
        if r["status"] != "done" and r["error"]:
            lines.append(f"{r['name']}: {r['error']}")
    return lines


class Progress:
    """Turns executor events into lines (given to `say`)."""

    def __init__(self, tasks: list[dict[str, Any]], say: Callable[[str], None]) -> None:
        self.say = say
        self.total_images = len(tasks)
        self.sizes = {t["name"]: int(t.get("size") or 0) for t in tasks}
        self.total_bytes = sum(self.sizes.values())
        self.done_bytes: dict[str, int] = {}
        self.ended: dict[str, str] = {}
        self.t0 = time.monotonic()
        self.last_line = 0.0

    def __call__(self, ev: dict[str, Any]) -> None:
        name, kind = ev.get("name", "?"), ev.get("event")
        if kind == "start":
            self.say(f"{name}: started (attempt {ev.get('attempt')})")
        elif kind == "say":
            self.say(f"{name}: {ev.get('line')}")
        elif kind == "progress":
            if ev.get("phase") == "encrypt" and ev.get("total"):
                size = self.sizes.get(name) or 0
                self.done_bytes[name] = int(size * min(1.0, ev["done"] / ev["total"]))
            if time.monotonic() - self.last_line >= FLEET_LINE_EVERY:
                self.fleet_line()
        elif kind == "end":
            self.ended[name] = str(ev.get("status"))
            if ev.get("skipped"):  # nothing moved: not in the bytes, the rate or the ETA
                self.total_bytes -= self.sizes.pop(name, 0)
                self.done_bytes.pop(name, None)
                what = ev.get("error") or "already done"
                self.say(f"{name}: {ev.get('status')} ({what}), skipped")
                return
            self.done_bytes[name] = self.sizes.get(name, 0)
            if ev.get("status") == "done":
                img = ev.get("image") or {}
                self.say(f"{name}: done in {ev.get('seconds')} s, image {img.get('id')}")
            else:
                self.say(f"{name}: failed: {ev.get('error')}")
            self.fleet_line()

    def fleet_line(self) -> None:
        now = time.monotonic()
        self.last_line = now
        done = sum(1 for s in self.ended.values() if s == "done")
        failed = sum(1 for s in self.ended.values() if s not in ("done",))
        moved = sum(self.done_bytes.values())
        span = max(now - self.t0, 1e-6)
        rate = moved / span
        line = (f"fleet: {done}/{self.total_images} done, {failed} failed, {human(moved)} of "
                f"{human(self.total_bytes)}, {human(rate)}/s")
        left = self.total_bytes - moved
        if rate > 0 and left > 0 and span >= 2:
            s = int(left / rate)
            line += f", {s // 60}:{s % 60:02d} left"
        self.say(line)
