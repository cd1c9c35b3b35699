"""Every output option against every output format (issue 17): an option the format does not
take is a usage error (exit 2) naming the format and the option, in the library (options.py) so
the CLI and the Python API refuse it alike, before anything is created; an option that applies
reaches the header. Also the spellings a cryptsetup or qemu-img user types first: -d, --type
luks, -O/-f with qemu-img's format names."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lukspack.errors import UsageError
from lukspack.luks.format import HeaderFields, KdfOptions
from lukspack.options import EncryptOptions, fingerprint, fingerprint_change, for_format
from tests.helpers import FAST, Cli, MiB, leftovers, pattern_disk, tool

UUID = "8a2c5b3e-1234-4abc-8def-0123456789ab"

# option -> (its arguments, the EncryptOptions that say the same)
OPTIONS: dict[str, tuple[list[str], dict]] = {
    "key-size": (["-s", "256"], {"key_bytes": 32}),
    "key-size-512": (["--key-size", "512"], {"key_bytes": 64}),
    "type-luks2": (["--type", "luks2"], {"luks_type": "luks2"}),
    "type-luks1": (["--type", "luks1"], {"luks_type": "luks1"}),
    "type-luks": (["--type", "luks"], {"luks_type": "luks"}),
    "cipher": (["-c", "aes-xts-plain64"], {"cipher": "aes-xts-plain64"}),
    "hash": (["--hash", "sha512"], {"kdf": KdfOptions(hash="sha512")}),
    "hash-default": (["--hash", "sha256"], {"kdf": KdfOptions(hash="sha256")}),
    "iter-time": (["--iter-time", "50"], {"kdf": KdfOptions(iter_time_ms=50)}),
    "pbkdf-argon2id": (["--pbkdf", "argon2id"], {"kdf": KdfOptions(pbkdf="argon2id")}),
    "pbkdf-pbkdf2": (["--pbkdf", "pbkdf2"], {"kdf": KdfOptions(pbkdf="pbkdf2")}),
    "pbkdf-memory": (["--pbkdf-memory", "65536"], {"kdf": KdfOptions(memory_kb=65536)}),
    "pbkdf-parallel": (["--pbkdf-parallel", "2"], {"kdf": KdfOptions(parallel=2)}),
    "force-iterations": (FAST, {"kdf": KdfOptions(force_iterations=1000)}),
    "uuid": (["--uuid", UUID], {"fields": HeaderFields(uuid=UUID)}),
    "label": (["--label", "lbl"], {"fields": HeaderFields(label="lbl")}),
    "subsystem": (["--subsystem", "sub"], {"fields": HeaderFields(subsystem="sub")}),
    "key-slot": (["-S", "1"], {"fields": HeaderFields(key_slot=1)}),
    "sector-size": (["--sector-size", "4096"], {"sector_size": 4096}),
    "sector-size-512": (["--sector-size", "512"], {"sector_size": 512}),
}
FORMATS = {"raw": ".img", "qcow2": ".qcow2", "vhd": ".vhd"}
# what each format refuses: "format" = a usage error naming the format; "conflict" = a usage
# error of a LUKS1 limit (raw's default type, qcow2's LUKS1): exit 2 all the same
REFUSED = {
    "vhd": {name: "format" for name in OPTIONS},
    "qcow2": {"key-size": "format", "type-luks2": "format", "label": "format",
              "subsystem": "format", "sector-size": "format", "sector-size-512": "format",
              "pbkdf-argon2id": "conflict", "pbkdf-memory": "conflict",
              "pbkdf-parallel": "conflict"},
    "raw": {"pbkdf-argon2id": "conflict", "pbkdf-memory": "conflict",
            "pbkdf-parallel": "conflict", "label": "conflict", "subsystem": "conflict",
            "sector-size": "conflict"},
}
FLAG = {name: args[0] for name, (args, _) in OPTIONS.items()}
FLAG.update({"key-size": "--key-size", "cipher": "--cipher", "key-slot": "--key-slot",
             "force-iterations": "--pbkdf-force-iterations", "key-size-512": "--key-size"})


def _fast(name: str) -> list[str]:
    """What keeps an accepted run quick: a forced PBKDF2 cost."""
    if name == "type-luks2":
        return ["--pbkdf", "pbkdf2", *FAST]  # not a forced Argon2 cost of 1000
    return [] if name in ("force-iterations", "iter-time") else FAST


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pattern_disk(tmp_path_factory.mktemp("src") / "s.raw", 4)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", OPTIONS)
def test_cli_option_by_format(cli: Cli, keyfile: Path, disk: Path, tmp_path: Path, fmt: str,
                              name: str) -> None:
    out = tmp_path / f"out{FORMATS[fmt]}"
    args, _ = OPTIONS[name]
    refused = REFUSED[fmt].get(name)
    if refused is None:
        cli("encrypt", disk, out, "--key-file", keyfile, *args, *_fast(name))
        assert out.exists()
        return
    err = cli.fails("encrypt", disk, out, "--key-file", keyfile, *args, code=2)
    if refused == "format":
        assert f"not apply to {fmt} output" in err and FLAG[name] in err, err
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", OPTIONS)
def test_library_option_by_format(keyfile: Path, disk: Path, tmp_path: Path, fmt: str,
                                  name: str) -> None:
    """The Python API (and `fleet`, which calls it) refuses what the CLI refuses."""
    from lukspack.encrypt import encrypt

    out = tmp_path / f"out{FORMATS[fmt]}"
    _, given = OPTIONS[name]
    opts = EncryptOptions(**given)
    refused = REFUSED[fmt].get(name)
    if refused is None:
        for_format(opts, fmt)  # no error; the CLI test runs the encryption
        return
    with pytest.raises(UsageError) as e:
        encrypt(str(disk), str(out), keyfile.read_bytes(), opts)
    assert e.value.exit_code == 2
    if refused == "format":
        assert f"not apply to {fmt} output" in str(e.value) and FLAG[name] in str(e.value)
    assert not out.exists() and leftovers(tmp_path) == []


def test_options_that_apply_reach_the_header(cli: Cli, keyfile: Path, disk: Path,
                                             tmp_path: Path) -> None:
    """Not only accepted: the UUID, hash, key slot, key size, LUKS2 label and sector size are what
    cryptsetup reads."""
    raw = tmp_path / "o.img"
    cli("encrypt", disk, raw, "--key-file", keyfile, "--type", "luks2", "--pbkdf", "pbkdf2",
        "--hash", "sha512", "--uuid", UUID, "--label", "lbl", "-S", "3", "-s", "256",
        "--sector-size", "4096", *FAST)
    dump = subprocess.run([tool("cryptsetup"), "luksDump", "--dump-json-metadata", str(raw)],
                          capture_output=True, check=True).stdout
    meta = json.loads(dump)
    assert list(meta["keyslots"]) == ["3"] and meta["keyslots"]["3"]["kdf"]["hash"] == "sha512"
    assert meta["segments"]["0"]["sector_size"] == 4096
    assert meta["keyslots"]["3"]["key_size"] == 32
    text = subprocess.run([tool("cryptsetup"), "luksDump", str(raw)], capture_output=True,
                          check=True).stdout.decode()
    assert UUID in text and "lbl" in text
    q = tmp_path / "o.qcow2"
    cli("encrypt", disk, q, "--key-file", keyfile, "--uuid", UUID, "-S", "2", "--hash", "sha1",
        *FAST)
    info = json.loads(subprocess.run([tool("qemu-img"), "info", "--output=json", str(q)],
                                     capture_output=True, check=True).stdout)
    luks = info["format-specific"]["data"]["encrypt"]
    assert luks["uuid"] == UUID and luks["hash-alg"] == "sha1"
    assert [s["active"] for s in luks["slots"]][:3] == [False, False, True]


def test_the_message_names_every_option_and_the_format(cli: Cli, keyfile: Path, disk: Path,
                                                       tmp_path: Path) -> None:
    err = cli.fails("encrypt", disk, tmp_path / "o.vhd", "--key-file", keyfile, "-s", "256",
                    "--type", "luks2", "--uuid", UUID, "--sector-size", "4096", code=2)
    for flag in ("--key-size 256", "--type luks2", f"--uuid {UUID}", "--sector-size 4096"):
        assert flag in err
    assert "vhd output" in err and "--key-slot" not in err  # only what was given


def test_publish_classic_refuses_a_kdf_option_before_anything(cli: Cli, disk: Path,
                                                              tmp_path: Path) -> None:
    """publish builds its EncryptOptions for the target's format and checks them before it
    writes a key or reaches the network."""
    new = tmp_path / "new.key"
    err = cli.fails("publish", disk, "--to", "classic", "--cos", "cos://us-south/b",
                    "--root-key-crn", "crn:v1:bluemix:public:kms:us-south:a/1:2:key:3",
                    "--kms-instance", "2", "--name", "n", "--os", "UBUNTU_22_64",
                    "--new-key-file", new, *FAST, code=2)
    assert "--pbkdf-force-iterations 1000 does not apply to vhd output" in err
    assert not new.exists()


# -- the resume fingerprint ----------------------------------------------------------------------

def test_fingerprint_holds_every_option_that_shapes_the_output() -> None:
    base = fingerprint(EncryptOptions(), "raw")
    assert set(base) >= {"format", "luks_type", "cipher", "key_bits", "sector_size", "hash",
                         "pbkdf", "iter_time_ms", "force_iterations", "memory_kb", "parallel",
                         "uuid", "label", "subsystem", "key_slot"}
    for name, (_, given) in OPTIONS.items():
        if REFUSED["raw"].get(name) or name in ("type-luks1", "type-luks", "cipher",
                                                 "hash-default", "key-size-512",
                                                 "sector-size-512", "pbkdf-pbkdf2"):
            continue  # refused, or the default spelled out
        changed = fingerprint_change(base, fingerprint(EncryptOptions(**given), "raw"))
        assert changed is not None and FLAG[name] in changed, name
    assert fingerprint_change(base, fingerprint(EncryptOptions(luks_type="luks"), "raw")) is None
    assert "--output-format qcow2" in fingerprint_change(base, fingerprint(EncryptOptions(),
                                                                           "qcow2"))
    assert fingerprint(EncryptOptions(), "vpc") == {"format": "vhd"}


# -- spellings of cryptsetup and qemu-img -----------------------------------------------------------

def test_d_is_key_file_on_every_command_that_takes_it() -> None:
    import click

    from lukspack.cli import cli as group

    def walk(g: click.Group, path: str = ""):  # noqa: ANN202
        for name, cmd in g.commands.items():
            if isinstance(cmd, click.Group):
                yield from walk(cmd, f"{path}{name} ")
            yield f"{path}{name}", cmd

    seen = 0
    for name, cmd in walk(group):
        for p in cmd.params:
            if "--key-file" in getattr(p, "opts", []):
                assert "-d" in p.opts, name
                seen += 1
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"-v", "--verbose", "--debug"} <= opts, name
    assert seen >= 8


def test_d_opens_an_image(cli: Cli, keyfile: Path, disk: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.img"
    cli("encrypt", disk, out, "-d", keyfile, *FAST)
    assert b"key opens LUKS1" in cli("verify", out, "-d", keyfile, "--source", disk).stdout


@pytest.mark.parametrize(("name", "written"), [("vpc", "vhd"), ("luks", "raw"), ("raw", "raw"),
                                               ("qcow2", "qcow2"), ("vhd", "vhd")])
def test_qemu_img_output_names(cli: Cli, keyfile: Path, disk: Path, tmp_path: Path, name: str,
                               written: str) -> None:
    out = tmp_path / "out.bin"
    extra = [] if written == "vhd" else FAST
    s = json.loads(cli("encrypt", disk, out, "--key-file", keyfile, "-O", name, "--json",
                       *extra).stdout)
    assert s["output_format"] == written


@pytest.mark.parametrize("name", ["vmdk", "vhdx", "vdi"])
def test_output_formats_not_written_are_usage_errors(cli: Cli, keyfile: Path, disk: Path,
                                                     tmp_path: Path, name: str) -> None:
    out = tmp_path / f"out.{name}"
    err = cli.fails("encrypt", disk, out, "--key-file", keyfile, "-O", name, *FAST, code=2)
    assert f"does not write {name} images" in err
    assert not out.exists()
    with pytest.raises(UsageError, match=f"does not write {name}"):
        for_format(EncryptOptions(), name)


def test_type_luks_is_luks1(cli: Cli, keyfile: Path, disk: Path, tmp_path: Path) -> None:
    s = json.loads(cli("encrypt", disk, tmp_path / "o.img", "--key-file", keyfile, "--type",
                       "luks", "--json", *FAST).stdout)
    assert s["type"] == "luks1"
    assert "luks1" in cli("size", disk, "--type", "luks").stdout.decode()


def test_f_vpc_reads_a_vhd(cli: Cli, keyfile: Path, disk: Path, tmp_path: Path) -> None:
    vhd = tmp_path / "s.vhd"
    subprocess.run([tool("qemu-img"), "convert", "-f", "raw", "-O", "vpc", str(disk), str(vhd)],
                   check=True)
    s = json.loads(cli("encrypt", vhd, tmp_path / "o.img", "--key-file", keyfile, "-f", "vpc",
                       "--json", *FAST).stdout)
    assert s["source_format"] == "vhd"
    assert s["virtual_size"] >= 4 * MiB


def test_f_luks_is_a_usage_error_saying_decrypt(cli: Cli, keyfile: Path, disk: Path,
                                                tmp_path: Path) -> None:
    err = cli.fails("encrypt", disk, tmp_path / "o.img", "--key-file", keyfile, "-f", "luks",
                    code=2)
    assert "decrypt it first" in err and not (tmp_path / "o.img").exists()
