"""A fleet from where the images already are: a cos:// VMDK in the bucket and an http:// qcow2
on a local Range server (a 500 injected on its GETs, retried), each row read in place, no local
copy; the objects decrypt to the local originals byte for byte."""

from __future__ import annotations

import json
import sys

from lukspack.cloud.location import parse_cos
from tests.cloud import s3server
from tests.cloud.test_kms import run_cli
from tests.fleet.conftest import BUCKET, classic_row, defaults_for, vpc_row, write_manifest
from tests.fleet.test_run import download, imports_of
from tests.helpers import cli_env, run
from tests.remote.httpserver import ObjectServer


def test_remote_rows(cloud, s3, images, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LUKSPACK_REMOTE_BACKOFF_S", "0.01")
    src = f"{BUCKET}/exports/fleet-disk.vmdk"
    s3.client().put_object(Bucket=s3server.BUCKET, Key=parse_cos(src).key,
                           Body=images["vmdk"].read_bytes())
    http = ObjectServer()
    try:
        obj = http.put("disk.qcow2", images["qcow2"].read_bytes())
        obj.faults = ["500"]
        rows = [vpc_row(cloud, src, "from-cos"),
                classic_row(cloud, f"{http.url}/disk.qcow2", "from-http",
                            format="raw")]
        path = write_manifest(tmp_path / "f.yaml", rows, defaults_for(cloud))
        code, out, err = run_cli(["fleet", "plan", str(path), "--json"], capsys)
        assert code == 0, err
        assert [i["input"] for i in json.loads(out)["images"]] == ["vmdk", "qcow2"]
        code, out, err = run_cli(["fleet", "run", str(path), "--json"], capsys)
        assert code == 0, err
        r = json.loads(out)
        assert r["all_done"] and imports_of(cloud) == ["from-cos", "from-http"]
        assert obj.gets > 1 and not any(m == "PUT" for m, _, _ in http.requests)
    finally:
        http.stop()
    for i, local in zip(r["images"], ("vmdk", "qcow2"), strict=True):
        got = download(s3, i["output"], tmp_path / f"dl-{i['name']}")
        run([sys.executable, "-m", "lukspack", "verify", str(got), "--key-file",
             str(tmp_path / "keys" / f"{i['name']}.key"), "--source", str(images[local])],
            env=cli_env())
