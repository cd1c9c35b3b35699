"""The checked-in malformed corpus (tests/data/malformed, made by tests/tools/make_malformed.py):
every file is refused with one line naming it and the problem, exit code 1, no traceback, nothing
left behind and the input unchanged."""

from __future__ import annotations

import gzip
import hashlib
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import FAST, ROOT, leftovers, run
from tests.tools.make_malformed import KEY

CORPUS = ROOT / "tests" / "data" / "malformed"
MANIFEST = CORPUS / "MANIFEST.tsv"


def rows() -> list[tuple[str, str, str]]:
    out = []
    for line in MANIFEST.read_text().splitlines():
        if line and not line.startswith("#"):
            name, command, expect = line.split("\t")
            out.append((name, command, expect))
    return out


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_manifest_matches_directory() -> None:
    listed = [r[0] for r in rows()]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    present = {p.name for p in CORPUS.iterdir()} - {MANIFEST.name}
    assert present == set(listed)
    assert len(listed) >= 60


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("key")
    (d / "key").write_bytes(KEY)
    (d / "key").chmod(0o600)
    return d


def cli_batch(cwd: Path, calls: list[list[str]]) -> list[tuple[int, str, str]]:
    """Run the commands through lukspack.cli.main in this process (what a user sees, without an
    interpreter start-up per file); test_corpus_in_real_processes runs a few as processes."""
    from tests.helpers import InProcessCli

    cli = InProcessCli(cwd)
    out = []
    for c in calls:
        p = cli(*c, check=False)
        out.append((p.returncode, p.stdout.decode(), p.stderr.decode()))
    return out


def test_every_file_is_refused_in_one_line(tmp_path: Path, key_dir: Path) -> None:
    key = key_dir / "key"
    calls, inputs, before = [], [], []
    for name, command, _expect in rows():
        src = CORPUS / name
        if name.endswith(".gz"):
            src = tmp_path / name[:-3]
            src.write_bytes(gzip.decompress((CORPUS / name).read_bytes()))
        else:
            src = Path(shutil.copy(src, tmp_path / name))  # extent names resolve beside it
        words = shlex.split(command)
        args = [words[0], str(src), *words[1:]]
        if words[0] == "encrypt":
            args[2:2] = [str(tmp_path / f"{name}.out")]
            args += ["--key-file", str(key), *FAST, "--no-progress"]
        elif words[0] == "verify":
            args += ["--key-file", str(key), "--no-progress"]
        calls.append(args)
        inputs.append(src)
        before.append(sha256(src))
    corpus_before = {p.name: sha256(p) for p in CORPUS.iterdir()}
    results = cli_batch(tmp_path, calls)
    problems = []
    for (name, command, expect), src, digest, (code, out, err) in zip(
            rows(), inputs, before, results, strict=True):
        lines = err.splitlines()
        why = []
        if code != 1:
            why.append(f"exit {code}")
        if "Traceback" in err or len(lines) != 1 or not err.startswith("lukspack: error: "):
            why.append("not one error line")
        elif str(src) not in err:
            why.append("does not name the file")
        if expect not in err:
            why.append(f"no {expect!r}")
        if sha256(src) != digest:
            why.append("input changed")
        if out:
            why.append(f"stdout {out[:80]!r}")
        if why:
            problems.append(f"{name} ({command}): {', '.join(why)}: {err.strip()}")
    made = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".out"))
    assert not problems, "\n".join(problems)
    assert not made and not leftovers(tmp_path) and not leftovers(CORPUS)
    assert {p.name: sha256(p) for p in CORPUS.iterdir()} == corpus_before


def test_generator_runs_the_peer_tools() -> None:
    """The script is importable and names its tools (regenerating is `python -m
    tests.tools.make_malformed`; it is not run here, the corpus is checked in)."""
    from tests.tools import make_malformed

    assert make_malformed.OUT == CORPUS
    assert run([sys.executable, "-c", "import tests.tools.make_malformed"], cwd=ROOT).returncode == 0


def test_corpus_in_real_processes(tmp_path: Path, key_dir: Path) -> None:
    """A few corpus files through a real `python -m lukspack`: the same one line and exit 1."""
    from tests.helpers import Cli

    cli = Cli(tmp_path)
    for name, command, expect in rows()[:: max(1, len(rows()) // 4)]:
        if name.endswith(".gz") or not command.startswith(("info", "verify")):
            continue
        src = Path(shutil.copy(CORPUS / name, tmp_path / name))
        words = shlex.split(command)
        args = [words[0], str(src), *words[1:]]
        if words[0] == "verify":
            args += ["--key-file", str(key_dir / "key")]
        assert expect in cli.fails(*args)
