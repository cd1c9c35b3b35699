"""The one multipart planner/resumer (cloud/resume.py) that `upload` and the object sink share:
a kept upload's parts are not sent again only when the server holds them intact."""

from __future__ import annotations

import os
from pathlib import Path

from lukspack.cloud.multipart import MiB, PartSender, abort_upload, state_path
from lukspack.cloud.resume import Multipart, plan_part_size
from lukspack.cloud.upload import CosOptions, connect


def test_a_resumed_upload_keeps_only_the_parts_the_server_holds_intact(cos_env, s3, obj,
                                                                       tmp_path: Path) -> None:
    loc, _, client = connect(obj, CosOptions())
    spath = state_path(loc, None, str(tmp_path))
    part = os.urandom(5 * MiB)
    mp = Multipart.start(client, loc, spath, {"version": 1, "kind": "test"},
                         plan_part_size(20 * MiB, 5 * MiB))
    try:
        assert mp.part_size == 5 * MiB and mp.held(1, part) is None  # a new upload holds none
        sender = PartSender(client, loc, mp.upload_id, mp.journal, 1)
        sender.submit(1, bytearray(part))
        sender.wait()
        sender.close()
        again = Multipart.resume(client, loc, mp.journal)
        rec = again.held(1, part)
        assert rec is not None and rec.size == len(part) and rec.sha256 and again.kept == 1
        assert again.held(1, bytes(len(part))) is None  # other bytes: sent again
        assert again.held(1, part[:-1]) is None  # another size
        assert again.held(2, part) is None  # not on the server
        assert again.held(1, part, sha256=False).sha256 == ""  # upload: no per-part SHA-256
    finally:
        abort_upload(client, loc, mp.upload_id)
        mp.journal.remove()
