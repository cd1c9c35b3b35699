"""The benchmark's Range server (bench/range_server.py, its own process) answers as the remote
rows need: ranges, ETag and If-Match, 416 past the end; lukspack's `source_reads` and the server's
own count agree, and both lukspack and qemu-img's curl driver read the right bytes through it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FAST, InProcessCli, MiB, pattern_disk, qemu_img
from tests.images.flavours import qemu_compare_encrypted

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(server URL, the served VMDK, qemu's raw of it)."""
    root = tmp_path_factory.mktemp("range-server")
    ref = pattern_disk(root / "ref.raw", 12)
    www = root / "www"
    www.mkdir()
    vmdk = www / "disk.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", str(ref), str(vmdk))
    p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "range_server.py"), str(www)],
                         stdout=subprocess.PIPE)
    assert p.stdout is not None
    url = f"http://127.0.0.1:{int(p.stdout.readline())}"
    try:
        yield url, vmdk, ref
    finally:
        p.terminate()
        p.wait(10)


def stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/_stats") as r:
        return json.loads(r.read())


def get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_ranges_etag_and_if_match(served) -> None:
    url, vmdk, _ = served
    data = vmdk.read_bytes()
    status, h, body = get(f"{url}/disk.vmdk", {"Range": "bytes=100-4195"})
    assert (status, body) == (206, data[100:4196])
    assert h["Content-Range"] == f"bytes 100-4195/{len(data)}" and h["Accept-Ranges"] == "bytes"
    assert get(f"{url}/disk.vmdk", {"Range": "bytes=100-", "If-Match": h["ETag"]})[2] == data[100:]
    assert get(f"{url}/disk.vmdk", {"Range": "bytes=0-9", "If-Match": '"other"'})[0] == 412
    status, h, _ = get(f"{url}/disk.vmdk", {"Range": f"bytes={len(data)}-"})
    assert (status, h["Content-Range"]) == (416, f"bytes */{len(data)}")
    status, _, body = get(f"{url}/disk.vmdk", {})
    assert (status, body) == (200, data)
    assert get(f"{url}/../ref.raw", {})[0] == 404


def test_lukspack_and_the_server_count_the_same_gets(served, keyfile, tmp_path) -> None:
    url, vmdk, ref = served
    stats(url)  # reset
    out = tmp_path / "out.qcow2"
    s = json.loads(InProcessCli(tmp_path)("encrypt", f"{url}/disk.vmdk", str(out), "--key-file",
                                          str(keyfile), *FAST, "--json", "--no-digest").stdout)
    assert s["source_reads"] == stats(url)
    assert 0 < s["source_reads"]["bytes"] <= vmdk.stat().st_size + MiB
    qemu_compare_encrypted(out, keyfile, ref)


def test_qemu_img_reads_the_url(served, tmp_path) -> None:
    url, _, ref = served
    got = tmp_path / "got.raw"
    qemu_img("convert", "-f", "vmdk", "-O", "raw", f"{url}/disk.vmdk", str(got))
    assert got.read_bytes() == ref.read_bytes()
    assert stats(url)["gets"] > 0
