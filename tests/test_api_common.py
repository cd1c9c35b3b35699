"""lukspack.api.common: KeySource, Result's one serializer, errors.exit_code."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lukspack.api import KeySource, Result, exit_code
from lukspack.errors import Interrupted, KeyFileError, LukspackError, UsageError


def test_key_source_reads_a_file_and_wipes_it(tmp_path) -> None:
    f = tmp_path / "k"
    f.write_bytes(b"0123456789abcdef")
    f.chmod(0o600)
    with KeySource(path=str(f), size=4, offset=2).open() as key:
        held = key
        assert bytes(key) == b"2345"
    assert bytes(held) == bytes(4)  # wiped after the block


def test_key_source_bytes_never_in_repr() -> None:
    src = KeySource(data=b"secret-passphrase")
    assert "secret" not in repr(src)
    with src.open() as key:
        assert bytes(key) == b"secret-passphrase"
    assert src.name == "key"


@pytest.mark.parametrize("kwargs", [{}, {"path": "k", "data": b"x"}, {"path": "k", "size": 0},
                                    {"path": "k", "offset": -1}])
def test_key_source_refuses_what_cannot_work(kwargs) -> None:
    with pytest.raises(UsageError) as e:
        KeySource(**kwargs)
    assert exit_code(e.value) == 2


def test_key_source_keyfile_size_past_the_end(tmp_path) -> None:
    f = tmp_path / "k"
    f.write_bytes(b"abc")
    f.chmod(0o600)
    with pytest.raises(KeyFileError), KeySource(path=str(f), size=8).open():
        pass


@dataclass(frozen=True)
class _Made(Result):
    output: str
    key_bits: int | None = None
    kind: str | None = field(default=None, metadata={"json": "type"})
    warnings: tuple[str, ...] = ()


def test_result_serializer_and_undeclared_keys() -> None:
    r = _Made.from_summary({"output": "o", "type": "luks1", "warnings": ["w"]})
    assert r.to_dict() == {"output": "o", "type": "luks1", "warnings": ["w"]}  # None left out
    with pytest.raises(TypeError, match="does not declare extra"):
        _Made.from_summary({"output": "o", "extra": 1})


def test_exit_codes() -> None:
    import signal

    assert exit_code(LukspackError("x")) == 1
    assert exit_code(UsageError("x")) == 2
    assert exit_code(Interrupted(signal.SIGINT)) == 130
    assert exit_code(Interrupted(signal.SIGTERM)) == 143
    assert exit_code(KeyboardInterrupt()) == 130
    assert exit_code(ValueError()) == 1


def test_a_hint_is_declared_and_printed_after_the_message() -> None:
    """add_hint() keeps the message apart; str() (the CLI's error line) joins them with "; "."""
    from lukspack.cloud.errors import CloudError

    e = CloudError("s3://b/k: the upload failed")
    e.add_hint("run it again with --resume")
    e.add_hint("or --abort")
    assert e.message == "s3://b/k: the upload failed"
    assert e.hints == ("run it again with --resume", "or --abort")
    assert str(e) == "s3://b/k: the upload failed; run it again with --resume; or --abort"
    assert e.args == ("s3://b/k: the upload failed",)
