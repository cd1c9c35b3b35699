"""Messages a person reads (issue 17): a plain image is "not encrypted (FORMAT, no LUKS)", not a
hex magic; convert on an encrypted image says to decrypt it; lukspack's own classic VHDs get no
CHS note; "decrypt to zeros" only when there is a rest; options that say nothing alone are usage
errors; add-key shows progress during its KDF; a KDF over a minute is announced first."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest

from lukspack.luks import estimate
from tests.helpers import FAST, Cli, MiB, pattern_disk, tool


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pattern_disk(tmp_path_factory.mktemp("src") / "s.raw", 3, tail=512)


def qemu_img(*args: str) -> None:
    subprocess.run([tool("qemu-img"), *args], check=True, capture_output=True)


@pytest.mark.parametrize(("fmt", "said"), [("qcow2", "qcow2, no LUKS"), ("vmdk", "vmdk, no LUKS"),
                                           ("vhdx", "vhdx, no LUKS"),
                                           ("vpc", "vhd, neither LUKS nor vhd-util")])
@pytest.mark.parametrize("command", ["verify", "add-key"])
def test_a_plain_image_is_not_encrypted_naming_its_format(cli: Cli, keyfile: Path, disk: Path,
                                                          tmp_path: Path, fmt: str, said: str,
                                                          command: str) -> None:
    image = tmp_path / f"p.{fmt}"
    qemu_img("convert", "-f", "raw", "-O", fmt, str(disk), str(image))
    before = image.read_bytes()
    extra = ["--new-key-file", keyfile, *FAST] if command == "add-key" else []
    err = cli.fails(command, image, "--key-file", keyfile, *extra)
    assert f"not encrypted ({said}" in err and "magic" not in err and "hex" not in err, err
    assert image.read_bytes() == before


@pytest.mark.parametrize("suffix", [".img", ".qcow2", ".vhd"])
def test_convert_of_an_encrypted_image_says_decrypt(cli: Cli, keyfile: Path, disk: Path,
                                                    tmp_path: Path, suffix: str) -> None:
    enc = tmp_path / f"e{suffix}"
    cli("encrypt", disk, enc, "--key-file", keyfile, *([] if suffix == ".vhd" else FAST))
    for to in ("raw", "qcow2"):
        err = cli.fails("convert", enc, tmp_path / f"c.{to}", "--to", to)
        assert "is encrypted" in err and f"lukspack decrypt {enc}" in err, err
        assert not (tmp_path / f"c.{to}").exists()


def test_own_classic_vhd_has_no_chs_note(cli: Cli, keyfile: Path, disk: Path,
                                         tmp_path: Path) -> None:
    """3 MiB + 512 is no CHS multiple: the geometry of the footer gives less, but blktap and
    vhd-util (creator 'tap') size by current_size, so nothing is worth a note."""
    vhd = tmp_path / "e.vhd"
    cli("encrypt", disk, vhd, "--key-file", keyfile)
    out = cli("verify", vhd, "--key-file", keyfile, "--source", disk).stdout.decode()
    assert "CHS" not in out
    assert "CHS" not in cli("info", vhd).stdout.decode()


def test_the_rest_is_mentioned_only_when_there_is_one(cli: Cli, keyfile: Path, tmp_path: Path,
                                                      disk: Path) -> None:
    whole = pattern_disk(tmp_path / "w.raw", 2)  # a whole MiB: LUKS RAW holds exactly it
    enc = tmp_path / "w.img"
    cli("encrypt", whole, enc, "--key-file", keyfile, *FAST)
    out = cli("verify", enc, "--key-file", keyfile, "--source", whole).stdout.decode()
    assert "zeros" not in out and f"({2 * MiB} bytes)" in out
    odd = tmp_path / "o.img"  # 3 MiB + 512 bytes: the payload is rounded up to 4 MiB
    cli("encrypt", disk, odd, "--key-file", keyfile, *FAST)
    out = cli("verify", odd, "--key-file", keyfile, "--source", disk).stdout.decode()
    assert f"the other {MiB - 512} bytes of the disk decrypt to zeros" in out


@pytest.mark.parametrize(("args", "said"), [
    (["encrypt", "s.raw", "o.img", "--key-file", "k", "--skip-check"], "--skip-check"),
    (["encrypt", "s.raw", "o.img", "--key-file", "k", "--no-digest"], "--no-digest"),
    (["encrypt", "s.raw", "o.img", "--key-file", "k", "--resume"], "--resume"),
    (["encrypt", "s.raw", "o.img", "--key-file", "k", "--part-size", "8"], "--part-size"),
    (["encrypt", "s.raw", "o.img", "--key-file", "k", "--verify-remote"], "--verify-remote"),
    (["verify", "o.img", "--key-file", "k", "-f", "raw"], "--input-format"),
    (["verify", "o.img", "--key-file", "k", "--disk", "0"], "--disk"),
    (["add-key", "o.img", "--key-file", "-", "--new-key-file", "-"], "only one of"),
    (["keygen", "n.key", "--for", "vpc", "--bytes", "32"], "--bytes"),
    (["publish", "s.raw", "--to", "vpc", "--cos", "cos://us-south/b", "--root-key-crn", "c",
      "--kms-instance", "i", "--name", "n", "--os", "o", "--key-file", "k", "--new-key-file",
      "n"], "one of --key-file and --new-key-file"),
    (["publish", "s.raw", "--to", "vpc", "--cos", "cos://us-south/b", "--root-key-crn", "c",
      "--kms-instance", "i", "--name", "n", "--os", "o", "--key-file", "k", "--output-format",
      "vhd"], "--output-format must be qcow2"),
])
def test_conflicting_options_exit_2(cli: Cli, tmp_path: Path, args: list[str], said: str) -> None:
    pattern_disk(tmp_path / "s.raw", 1)
    (tmp_path / "o.img").write_bytes(bytes(MiB))
    (tmp_path / "k").write_bytes(b"x" * 44)
    (tmp_path / "k").chmod(0o600)
    err = cli.fails(*args, code=2)
    assert said in err
    assert not (tmp_path / "n.key").exists()


def test_skip_check_alone_is_refused_by_the_library(tmp_path: Path) -> None:
    from lukspack.errors import UsageError
    from lukspack.options import EncryptOptions, for_format

    with pytest.raises(UsageError, match="--skip-check"):
        for_format(EncryptOptions(skip_check=True), "raw")


def test_add_key_shows_progress_during_its_kdf(cli: Cli, keyfile: Path, disk: Path,
                                               tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from lukspack.cli import progress

    monkeypatch.setattr(progress, "LINE_EVERY", 0.0)
    image = tmp_path / "e.img"
    cli("encrypt", disk, image, "--key-file", keyfile, *FAST)
    new = tmp_path / "new.key"
    new.write_bytes(b"another passphrase")
    new.chmod(0o600)
    err = cli("add-key", image, "--key-file", keyfile, "--new-key-file", new, "-p",
              "--iter-time", "300").stderr.decode()
    phases = [ln.split()[0] for ln in err.splitlines() if ln.strip().endswith(("s", "s)"))
              and ln.split() and ln.split()[0] in ("unlock", "calibrate", "key")]
    assert "calibrate" in phases and "key" in phases, err
    assert any("of about 0.3 s" in ln for ln in err.splitlines()), err
    quiet = cli("add-key", image, "--key-file", keyfile, "--new-key-file", new, *FAST).stderr
    assert b"calibrate" not in quiet and b"key slot  " not in quiet


# -- a KDF over a minute ---------------------------------------------------------------------

def test_estimate_of_a_forced_argon2_cost_scales_a_short_probe(monkeypatch) -> None:  # noqa: ANN001
    """The estimate is one Argon2 pass over at most 64 MiB, scaled by time cost x memory; not a
    timed test: the probe's duration is what the estimate multiplies."""
    calls: list[tuple[int, int, int]] = []
    clock = iter([10.0, 10.25])  # the probe takes 0.25 s

    def fake_argon2(kind, pw, salt, t, m, p, length):  # noqa: ANN001, ANN202
        calls.append((t, m, p))
        return bytes(length)

    monkeypatch.setattr(estimate, "argon2", fake_argon2)
    monkeypatch.setattr(estimate.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(estimate, "adjusted_phys_memory_kb", lambda: 8 << 20)
    s = estimate.estimate_kdf_seconds("argon2id", "sha256", 64, force_iterations=100,
                                      memory_kb=1 << 20, parallel=1)
    assert calls == [(1, 64 * 1024, 1)]  # one short pass, not the real cost
    assert s == pytest.approx(0.25 * 100 * 16)  # 100 passes over 16 x the probe's memory


def test_calibrated_costs_take_their_iter_time() -> None:
    assert estimate.estimate_kdf_seconds("argon2id", "sha256", 64, iter_time_ms=90_000) == 90.0
    assert estimate.long_kdf_note("pbkdf2", "sha256", 64, iter_time_ms=2000) is None
    note = estimate.long_kdf_note("argon2id", "sha256", 64, iter_time_ms=120_000)
    assert note is not None and "about 2 min" in note


def test_small_forced_costs_are_not_measured(monkeypatch) -> None:  # noqa: ANN001
    def boom(*a: object) -> None:
        raise AssertionError("measured")

    monkeypatch.setattr(estimate, "argon2", boom)
    monkeypatch.setattr(estimate, "pbkdf2_rate", boom)
    assert estimate.long_kdf_note("pbkdf2", "sha256", 64, force_iterations=1000) is None
    assert estimate.long_kdf_note("argon2id", "sha256", 64, force_iterations=4,
                                  memory_kb=65536) is None


def test_a_long_kdf_is_announced_before_encrypt_starts(keyfile: Path, disk: Path,
                                                       tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """encrypt says how long (a warning) before it opens the source; here the estimate says 10
    minutes and the run then fails its next step, so nothing slow runs."""
    from lukspack import encrypt as enc
    from lukspack.luks.format import KdfOptions
    from lukspack.options import EncryptOptions

    monkeypatch.setattr(estimate, "estimate_kdf_seconds", lambda *a, **k: 600.0)
    opened: list[str] = []

    def refuse(*a: object, **k: object) -> None:
        opened.append("source")
        raise RuntimeError("stop here")

    monkeypatch.setattr(enc, "open_image", refuse)
    opts = EncryptOptions(luks_type="luks2", kdf=KdfOptions(pbkdf="argon2id",
                                                            force_iterations=1000))
    with warnings.catch_warnings(record=True) as got, pytest.raises(RuntimeError):
        warnings.simplefilter("always")
        enc.encrypt(str(disk), str(tmp_path / "o.img"), keyfile.read_bytes(), opts)
    notes = [str(w.message) for w in got]
    assert any("will take about 10 min" in n and "argon2id, time cost 1000" in n for n in notes)
    assert opened == ["source"]  # the note came first


def test_a_long_kdf_is_announced_by_the_cli(cli: Cli, keyfile: Path, disk: Path, tmp_path: Path,
                                            monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(estimate, "estimate_kdf_seconds", lambda *a, **k: 7200.0)
    from lukspack.errors import LukspackError

    def stop(*a: object, **k: object) -> None:
        raise LukspackError("stopped before the source is read")

    monkeypatch.setattr("lukspack.encrypt.open_image", stop)
    p = cli("encrypt", disk, tmp_path / "o.img", "--key-file", keyfile, "--type", "luks2",
            "--pbkdf-force-iterations", "1000", check=False)
    err = p.stderr.decode()
    assert p.returncode == 1
    assert err.index("will take about 2.0 h") < err.index("stopped before the source is read")
