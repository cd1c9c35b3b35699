"""cryptsetup's luksFormat flags on `encrypt`: --uuid, --label, --subsystem (LUKS2) and
--key-slot, checked with cryptsetup luksDump and open --key-slot; bad values are usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import FAST, Cli, cryptsetup, leftovers, pattern_disk

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.mark.parametrize("luks_type,slot", [("luks1", 5), ("luks2", 3)])
def test_uuid_label_subsystem_and_key_slot(tmp_path: Path, cli: Cli, keyfile: Path,
                                           luks_type: str, slot: int) -> None:
    src = pattern_disk(tmp_path / "s.raw", 2)
    out = tmp_path / "o.img"
    extra = ["--label", "root-disk", "--subsystem", "lukspack"] if luks_type == "luks2" else []
    kdf = ["--pbkdf", "pbkdf2"] if luks_type == "luks2" else []
    cli("encrypt", src, out, "--key-file", keyfile, "--type", luks_type, "--uuid", UUID,
        "--key-slot", str(slot), *kdf, *extra, *FAST)
    dump = cryptsetup("luksDump", str(out)).stdout.decode()
    assert UUID in dump
    if luks_type == "luks2":
        assert "Label:         \troot-disk" in dump and "Subsystem:     \tlukspack" in dump
        assert f"  {slot}: luks2" in dump
    else:
        assert f"Key Slot {slot}: ENABLED" in dump and "Key Slot 0: DISABLED" in dump
    cryptsetup("open", "--test-passphrase", "--key-slot", str(slot), "--key-file", str(keyfile),
               str(out))
    assert cryptsetup("open", "--test-passphrase", "--key-slot", "1", "--key-file",
                      str(keyfile), str(out), check=False).returncode != 0


@pytest.mark.parametrize("args,message", [
    (["--uuid", "not-a-uuid"], "is not a UUID"),
    (["--label", "x"], "LUKS2 header fields"),
    (["--key-slot", "8"], "outside 0..7"),
    (["--type", "luks2", "--key-slot", "32"], "outside 0..31"),
    (["--type", "luks2", "--label", "x" * 48], "longer than LUKS2's 47 bytes"),
])
def test_bad_header_fields_are_usage_errors(tmp_path: Path, cli: Cli, keyfile: Path,
                                            args: list[str], message: str) -> None:
    src = pattern_disk(tmp_path / "s.raw", 1)
    err = cli.fails("encrypt", src, tmp_path / "o.img", "--key-file", keyfile, *args, *FAST,
                    code=2)
    assert message in err and not (tmp_path / "o.img").exists() and leftovers(tmp_path) == []
