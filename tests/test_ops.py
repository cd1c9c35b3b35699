"""Encrypt's own verification catches a bad payload and a bad header, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from lukspack import ops
from lukspack.errors import VerifyError
from lukspack.keys import generate_dek
from lukspack.luks import format as luks_format
from tests.helpers import leftovers, pattern_disk


def _opts() -> ops.EncryptOptions:
    return ops.EncryptOptions(force_iterations=1000)


def test_corrupted_payload_fails_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    src = pattern_disk(tmp_path / "s.raw", 3)
    real = ops.make_sector_cipher

    def flaky(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - a cipher that flips one bit
        cipher = real(*args, **kwargs)
        encrypt = cipher.encrypt

        def bad(buf, first_iv):  # noqa: ANN001, ANN202
            encrypt(buf, first_iv)
            if first_iv == 0:
                buf[1000] ^= 1

        cipher.encrypt = bad
        return cipher

    monkeypatch.setattr(ops, "make_sector_cipher", flaky)
    with pytest.raises(VerifyError, match="payload decrypts to"):
        ops.encrypt(str(src), str(tmp_path / "o.img"), generate_dek(), _opts())
    assert not (tmp_path / "o.img").exists() and leftovers(tmp_path) == []


def test_header_for_another_key_fails_verification(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = pattern_disk(tmp_path / "s.raw", 2)
    real = luks_format.plan_header

    def wrong_plan(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        plan = real(*args, **kwargs)
        build = plan.build
        return luks_format.HeaderPlan(plan.luks_type, plan.header_size, plan.cipher_name,
                                      plan.cipher_mode, plan.key_bytes, plan.sector_size,
                                      lambda vk, pw: build(bytes(len(vk)), pw))

    monkeypatch.setattr(ops, "plan_header", wrong_plan)
    with pytest.raises(VerifyError, match="different key"):
        ops.encrypt(str(src), str(tmp_path / "o.img"), generate_dek(), _opts())
    assert not (tmp_path / "o.img").exists() and leftovers(tmp_path) == []


def test_a_write_that_lands_wrong_fails_verification(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier reads the output back: a byte corrupted on its way to the file is caught."""
    from lukspack import output

    src = pattern_disk(tmp_path / "s.raw", 6)
    real = output.AtomicOutput.pwrite

    def corrupting(self, offset, data):  # noqa: ANN001, ANN202
        data = bytearray(data)
        if offset == 2 * 1024 * 1024 + 4 * 1024 * 1024:  # the second payload chunk
            data[12345] ^= 0x40
        real(self, offset, data)

    monkeypatch.setattr(output.AtomicOutput, "pwrite", corrupting)
    with pytest.raises(VerifyError, match="payload decrypts to xxh3_128"):
        ops.encrypt(str(src), str(tmp_path / "o.img"), generate_dek(), _opts())
    assert not (tmp_path / "o.img").exists() and leftovers(tmp_path) == []


def test_a_failing_source_stops_the_trailing_verifier(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The source fails mid-stream: the error surfaces (no hang waiting on the verifier), and
    nothing is left behind."""
    from lukspack.errors import FormatError
    from lukspack.images.raw import RawImage

    src = pattern_disk(tmp_path / "s.raw", 12)
    real = RawImage._read_allocated

    def failing(self, offset, view):  # noqa: ANN001, ANN202
        if offset >= 8 * 1024 * 1024:
            raise FormatError("source went away")
        real(self, offset, view)

    monkeypatch.setattr(RawImage, "_read_allocated", failing)
    with pytest.raises(FormatError, match="source went away"):
        ops.encrypt(str(src), str(tmp_path / "o.img"), generate_dek(), _opts())
    assert not (tmp_path / "o.img").exists() and leftovers(tmp_path) == []
