"""Remote sources over HTTP: every input format read from a local Range-capable server equals the
local read (qemu decrypts what lukspack wrote from the URL to exactly qemu's own read of the local
file; `verify --source URL` matches), faults are retried, a changed object is an error, a server
that ignores Range is refused for large objects, sparse formats fetch only metadata and data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import FAST, InProcessCli, MiB, leftovers, pattern_disk, qemu_img, run, tool
from tests.images.flavours import qemu_compare_encrypted
from tests.images.ova_files import make_ova, ovf
from tests.remote.httpserver import ObjectServer

SOURCE_MIB = 12

# name -> qemu-img convert arguments (from the raw pattern disk)
FORMATS = {
    "raw": None,
    "vhd-fixed": ["-O", "vpc", "-o", "subformat=fixed,force_size=on"],
    "vhd-dynamic": ["-O", "vpc", "-o", "force_size=on"],
    "qcow2": ["-O", "qcow2"],
    "vmdk": ["-O", "vmdk", "-o", "subformat=monolithicSparse"],
    "vmdk-stream": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
    "vhdx": ["-O", "vhdx", "-o", "block_size=1M"],
    "ova": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
}
SUFFIX = {"raw": ".raw", "vhd-fixed": ".vhd", "vhd-dynamic": ".vhd", "qcow2": ".qcow2",
          "vmdk": ".vmdk", "vmdk-stream": ".vmdk", "vhdx": ".vhdx", "ova": ".ova"}


def build(name: str, src: Path, d: Path) -> tuple[Path, Path]:
    """(image, qemu's raw of it) of format `name`, made from the raw src in directory d."""
    d.mkdir()
    args = FORMATS[name]
    if args is None:
        image = shutil.copyfile(src, d / "disk.raw")
        return Path(image), src
    disk = d / ("disk.vmdk" if name == "ova" else f"disk{SUFFIX[name]}")
    qemu_img("convert", "-f", "raw", *args, str(src), str(disk))
    ref = d / "ref.raw"
    qemu_img("convert", "-f", args[1], "-O", "raw", str(disk), str(ref))  # -f: a fixed VHD
    if name == "ova":
        return make_ova(d / "vm.ova", ovf([(disk.name, SOURCE_MIB * MiB)]), [disk]), ref
    return disk, ref


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, server: ObjectServer
           ) -> dict[str, tuple[Path, Path, str]]:
    """name -> (local image, qemu's raw of it, its URL on the server)."""
    root = tmp_path_factory.mktemp("remote-images")
    src = pattern_disk(root / "source.raw", SOURCE_MIB)
    out = {}
    for name in FORMATS:
        image, ref = build(name, src, root / name)
        server.put(f"{name}/{image.name}", image.read_bytes())
        out[name] = (image, ref, f"{server.url}/{name}/{image.name}")
    return out


def jcli(cli: InProcessCli, *args: object) -> dict:
    return json.loads(cli(*map(str, args), "--json").stdout)


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_read_remotely_equals_the_local_read(name, images, keyfile, tmp_path) -> None:
    image, ref, url = images[name]
    cli = InProcessCli(tmp_path)
    local, remote = jcli(cli, "info", image), jcli(cli, "info", url)
    reads = remote.pop("source_reads")
    assert "source_reads" not in local
    assert reads["gets"] >= 1 and 0 < reads["bytes"] <= image.stat().st_size
    assert json.dumps(remote) == json.dumps(local).replace(str(image), url)  # notes name it
    out = tmp_path / "out.qcow2"
    s = jcli(cli, "encrypt", url, out, "--key-file", keyfile, *FAST)
    assert s["source"] == url and s["source_reads"]["gets"] >= 1
    qemu_compare_encrypted(out, keyfile, ref)  # qemu: what lukspack read from the URL is the disk
    v = jcli(cli, "verify", out, "--key-file", keyfile, "--source", url)
    assert v["matches_source"] is True and v["source_reads"]["gets"] >= 1
    size = jcli(cli, "size", url)
    assert size["source_bytes"] == local["virtual_size"]


@pytest.mark.parametrize("fault", ["500", "reset", "short"])
def test_injected_faults_are_retried_and_the_result_is_identical(fault, images, server, keyfile,
                                                                  tmp_path) -> None:
    image, ref, _ = images["qcow2"]
    name = f"faults/{fault}.qcow2"
    obj = server.put(name, image.read_bytes())
    obj.faults = [fault] * 3  # the first three GETs (the one that opens the object included)
    cli = InProcessCli(tmp_path)
    out = tmp_path / "out.qcow2"
    s = jcli(cli, "encrypt", f"{server.url}/{name}", out, "--key-file", keyfile, *FAST)
    assert not obj.faults
    assert s["source_reads"]["gets"] >= 4 and server.gets(name) == s["source_reads"]["gets"]
    qemu_compare_encrypted(out, keyfile, ref)


def test_retries_are_bounded(images, server, keyfile, tmp_path) -> None:
    image, _, _ = images["qcow2"]
    obj = server.put("faults/always.qcow2", image.read_bytes())
    obj.faults = ["500"] * 100
    cli = InProcessCli(tmp_path)
    err = cli.fails("encrypt", f"{server.url}/faults/always.qcow2", tmp_path / "out.qcow2",
                    "--key-file", keyfile, *FAST)
    assert "HTTP 500" in err and "failed 5 times" in err, err
    assert server.gets("faults/always.qcow2") == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_object_changed_while_read_is_an_error_and_leaves_no_output(images, server, keyfile,
                                                                        tmp_path) -> None:
    image, _, _ = images["vmdk"]
    obj = server.put("changing/disk.vmdk", image.read_bytes())
    before = obj.etag
    changed = bytearray(image.read_bytes())
    changed[-1] ^= 0xFF
    obj.change_after, obj.replacement = 3, bytes(changed)
    cli = InProcessCli(tmp_path)
    out = tmp_path / "out.qcow2"
    err = cli.fails("encrypt", f"{server.url}/changing/disk.vmdk", out, "--key-file", keyfile,
                    *FAST)
    assert "changing/disk.vmdk: the object changed while it was read (ETag " \
        f"{before} -> {obj.etag})" in err, err
    assert not out.exists() and not leftovers(tmp_path) and not list(tmp_path.iterdir())


def test_a_server_ignoring_range_is_refused_for_a_large_object(images, server, tmp_path) -> None:
    image, _, _ = images["raw"]
    obj = server.put("norange/disk.raw", image.read_bytes())
    obj.ignore_range = True
    err = InProcessCli(tmp_path).fails("info", f"{server.url}/norange/disk.raw")
    assert "the server ignores Range (it answered 200 with the whole 12582912-byte object)" in err


def test_a_small_object_from_a_server_ignoring_range_is_taken_whole(server, keyfile,
                                                                    tmp_path) -> None:
    raw = pattern_disk(tmp_path / "small.raw", 4)
    small = tmp_path / "small.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(small))
    obj = server.put("norange/small.qcow2", small.read_bytes())
    obj.ignore_range = True
    cli = InProcessCli(tmp_path)
    out = tmp_path / "out.qcow2"
    s = jcli(cli, "encrypt", f"{server.url}/norange/small.qcow2", out, "--key-file", keyfile, *FAST)
    assert s["source_reads"]["gets"] == 1  # the whole body, once
    qemu_compare_encrypted(out, keyfile, raw)


def test_a_sparse_source_fetches_only_its_metadata_and_data(server, keyfile, tmp_path) -> None:
    vhd = tmp_path / "sparse.vhd"
    qemu_img("create", "-f", "vpc", "-o", "force_size=on", str(vhd), "1G")
    run([tool("qemu-io"), "-f", "vpc", "-c", "write -P 0x5a 100M 1M", str(vhd)])
    server.put("sparse/disk.vhd", vhd.read_bytes())
    url = f"{server.url}/sparse/disk.vhd"
    cli = InProcessCli(tmp_path)
    info = jcli(cli, "info", url)
    assert info["virtual_size"] == 1 << 30
    assert info["source_reads"]["bytes"] <= 2 * MiB  # footer, header and BAT: one or two blocks
    out = tmp_path / "out.qcow2"
    s = jcli(cli, "encrypt", url, out, "--key-file", keyfile, *FAST)
    assert s["source_reads"]["bytes"] <= 8 * MiB  # 1 MiB of data (+ read-ahead), of 1 GiB
    ref = tmp_path / "ref.raw"
    qemu_img("convert", "-O", "raw", str(vhd), str(ref))
    qemu_compare_encrypted(out, keyfile, ref)


def test_credentials_come_from_the_environment_or_netrc_never_the_url(images, tmp_path,
                                                                      monkeypatch) -> None:
    image, _, _ = images["qcow2"]
    private = ObjectServer()
    try:
        private.auth = ("reader", "s3cret-pw")
        private.put("disk.qcow2", image.read_bytes())
        url = f"{private.url}/disk.qcow2"
        cli = InProcessCli(tmp_path)
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.delenv("NETRC", raising=False)
        err = cli.fails("info", url)
        assert "HTTP 401" in err and "LUKSPACK_HTTP_USER" in err and "netrc" in err, err
        host = url.split("//")[1].split("/")[0]
        err = cli.fails("info", url.replace(host, f"reader:s3cret-pw@{host}"))
        assert "credentials in the URL are not accepted" in err and "s3cret" not in err, err
        monkeypatch.setenv("LUKSPACK_HTTP_USER", "reader")
        monkeypatch.setenv("LUKSPACK_HTTP_PASSWORD", "s3cret-pw")
        assert jcli(cli, "info", url)["format"] == "qcow2"
        monkeypatch.delenv("LUKSPACK_HTTP_USER")
        monkeypatch.delenv("LUKSPACK_HTTP_PASSWORD")
        netrc = tmp_path / ".netrc"
        netrc.write_text("machine 127.0.0.1 login reader password s3cret-pw\n")
        os.chmod(netrc, 0o600)
        assert jcli(cli, "info", url)["format"] == "qcow2"
    finally:
        private.stop()


def test_a_presigned_query_string_is_never_shown(images, server, keyfile, tmp_path) -> None:
    image, ref, url = images["qcow2"]
    signed = url + "?X-Amz-Credential=AKID&X-Amz-Signature=deadbeefsecret"
    cli = InProcessCli(tmp_path)
    p = cli("encrypt", signed, tmp_path / "out.qcow2", "--key-file", keyfile, *FAST, "--json")
    text = p.stdout.decode() + p.stderr.decode()
    assert json.loads(p.stdout)["source"] == url + "?..." and "deadbeef" not in text
    missing = f"{server.url}/nothing/here.qcow2?X-Amz-Signature=deadbeefsecret"
    err = cli.fails("info", missing)
    assert err == f"lukspack: error: {server.url}/nothing/here.qcow2?...: HTTP 404 Not Found"


def test_the_block_cache_is_bounded_and_reads_ahead_without_fetching_twice(server) -> None:
    from lukspack.remote import RemoteOptions, open_remote

    data = os.urandom(2 * MiB)
    server.put("cache/blob", data)
    block = 64 << 10
    src = open_remote(f"{server.url}/cache/blob",
                      RemoteOptions(block_size=block, cache_bytes=4 * block, readahead=3))
    try:
        got = bytearray()
        for off in range(0, len(data), 16 << 10):  # small sequential reads
            got += src.read_at(off, 16 << 10)
            assert src._cached <= 4 * block
        assert bytes(got) == data
        assert src.stats() == {"gets": len(data) // block, "bytes": len(data)}  # none twice
        assert src.read_at(0, 10) == data[:10]  # block 0 was evicted: fetched again
        assert src.stats()["gets"] == len(data) // block + 1
    finally:
        src.close()


def test_check_and_convert_read_a_remote_source(images, tmp_path) -> None:
    image, ref, url = images["vhdx"]
    cli = InProcessCli(tmp_path)
    p = cli("check", url, "--json", check=False)  # a pattern disk, not a bootable Linux
    assert p.returncode == 1, p.stderr.decode()
    report = json.loads(p.stdout)
    assert report["source_reads"]["gets"] >= 1
    local = json.loads(cli("check", image, "--json", check=False).stdout)
    assert "source_reads" not in local
    report.pop("source_reads")
    for timed in (report, local):  # the stage timings differ from run to run
        timed.pop("seconds", None), timed.pop("cpu_seconds", None)
    assert json.dumps(report) == json.dumps(local).replace(str(image), url)
    out = tmp_path / "out.raw"
    r = jcli(cli, "convert", url, out, "--to", "raw")
    assert r["source"] == url and out.read_bytes() == ref.read_bytes()


def test_remote_luks_images_and_vmdk_descriptors_with_extent_files_are_refused(
        images, server, keyfile, tmp_path) -> None:
    _, ref, _ = images["raw"]
    cli = InProcessCli(tmp_path)
    luks = tmp_path / "luks.img"
    cli("encrypt", ref, luks, "--key-file", keyfile, *FAST)
    server.put("refused/luks.img", luks.read_bytes())
    err = cli.fails("info", f"{server.url}/refused/luks.img")
    assert "refused/luks.img: is already a LUKS container" in err, err
    flat = tmp_path / "flat.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat", str(ref),
             str(flat))
    server.put("refused/flat.vmdk", flat.read_bytes())
    server.put("refused/flat-flat.vmdk", (tmp_path / "flat-flat.vmdk").read_bytes())
    err = cli.fails("encrypt", f"{server.url}/refused/flat.vmdk", tmp_path / "o.qcow2",
                    "--key-file", keyfile, *FAST)
    assert "the remote VMDK is a descriptor naming extent files" in err, err


def test_a_sequential_run_is_read_ahead_on_the_pool(server) -> None:
    from lukspack.remote import RemoteOptions, open_remote

    data = os.urandom(1 * MiB)
    server.put("cache/ahead", data)
    block = 64 << 10
    src = open_remote(f"{server.url}/cache/ahead", RemoteOptions(block_size=block, readahead=3))
    try:
        assert src.stats()["gets"] == 1  # the GET that opened it holds block 0
        assert src.read_at(0, block) == data[:block]
        assert src.stats()["gets"] == 1  # from the cache; not yet a run
        assert src.read_at(block, block) == data[block : 2 * block]  # a run: blocks 2-4 ahead
        for fut in list(src._pending.values()):
            fut.result()
        assert src.stats()["gets"] == 5
        assert src.read_at(2 * block, 3 * block) == data[2 * block : 5 * block]
        for fut in list(src._pending.values()):
            fut.result()
        assert src.stats()["gets"] == 5 + 3  # blocks 2-4 came from the cache; 5-7 asked ahead
    finally:
        src.close()
