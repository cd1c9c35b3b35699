"""The engine against its interfaces: sinks that corrupt or fail, containers whose header build
fails or opens another key, a failing source; for RAW LUKS and qcow2+LUKS alike. Each case must
raise one LukspackError and leave nothing behind."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from lukspack.containers.qcow2_luks import Qcow2Luks
from lukspack.containers.raw_luks import RawLuks
from lukspack.engine import encrypt_image
from lukspack.errors import FormatError, LukspackError, VerifyError
from lukspack.images import open_image
from lukspack.images.qcow2 import Qcow2Image
from lukspack.keys import generate_dek
from lukspack.luks.format import KdfOptions
from lukspack.options import StreamOptions
from lukspack.sinks.base import ReadBack
from lukspack.sinks.file import FileSink
from tests.helpers import MiB, cryptsetup, leftovers, pattern_disk

KDF = KdfOptions(force_iterations=1000)


class Delegating:
    """A sink that hands everything to a FileSink; subclasses change one thing. It implements
    every member of the Sink protocol itself (no __getattr__: the engine probes nothing)."""

    def __init__(self, inner: FileSink) -> None:
        self.inner = inner
        self.location = inner.location
        self.concurrent_writes = False

    @property
    def direct(self) -> bool:
        return self.inner.direct

    @property
    def saved_key_material(self) -> bytes | None:
        return self.inner.saved_key_material

    def begin(self, prefix_size: int, size_hint: int) -> None:
        self.inner.begin(prefix_size, size_hint)

    def write(self, offset: int, data: Any) -> None:
        self.inner.write(offset, data)

    def write_prefix(self, offset: int, data: bytes) -> None:
        self.inner.write_prefix(offset, data)

    def read_back(self) -> ReadBack:
        return self.inner.read_back()

    def keep_key_material(self, data: bytes) -> None:
        self.inner.keep_key_material(data)

    def start_writeback(self) -> None:
        self.inner.start_writeback()

    def finish(self, total_size: int) -> None:
        self.inner.finish(total_size)

    def commit(self) -> str:
        return self.inner.commit()

    def output_sha256(self) -> str | None:
        return self.inner.output_sha256()

    def abort(self) -> None:
        self.inner.abort()


class Corrupting(Delegating):
    """Flips one bit of the byte at output offset `at` on its way to the file."""

    def __init__(self, inner: FileSink, at: int) -> None:
        super().__init__(inner)
        self.at = at

    def write(self, offset: int, data: Any) -> None:
        if offset <= self.at < offset + len(data):
            data = bytearray(data)
            data[self.at - offset] ^= 0x40
        self.inner.write(offset, data)


class FailingAfter(Delegating):
    """Fails with a full disk once `limit` bytes were written."""

    def __init__(self, inner: FileSink, limit: int) -> None:
        super().__init__(inner)
        self.limit, self.written = limit, 0

    def write(self, offset: int, data: Any) -> None:
        self.written += len(data)
        if self.written > self.limit:
            raise LukspackError(f"{self.location}: no space left on device while writing")
        self.inner.write(offset, data)


def containers(size: int, name: str) -> dict[str, Any]:
    return {"raw": RawLuks(size, "luks1", KDF, name=name),
            "luks2": RawLuks(size, "luks2", KdfOptions(force_iterations=4, memory_kb=32,
                                                       parallel=1), name=name),
            "qcow2": Qcow2Luks(size, KDF, name=name)}


def _encrypt(src: Path, out: Path, kind: str, wrap=lambda s: s, verify: bool = True,  # noqa: ANN001
             container: Any = None, key: bytes | None = None) -> dict[str, Any]:
    with open_image(str(src)) as image:
        c = container or containers(image.virtual_size, str(out))[kind]
        sink = wrap(FileSink(str(out), direct=not verify))
        return encrypt_image(image, c, sink, key or generate_dek(), StreamOptions(verify=verify))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return pattern_disk(tmp_path / "s.raw", 10)


@pytest.mark.parametrize("kind", ["raw", "luks2", "qcow2"])
def test_a_byte_corrupted_on_its_way_to_the_sink_is_caught(tmp_path: Path, src: Path,
                                                           kind: str) -> None:
    """The output is read back through its decrypting reader before commit: a payload byte (a
    qcow2 data cluster) corrupted in the sink fails verification and names the first bad byte."""
    out = tmp_path / f"o.{kind}"
    at = {"raw": 2 * MiB + 5 * MiB + 12345, "luks2": 16 * MiB + 5 * MiB + 12345,
          "qcow2": 3 * 1024 * 1024 + 77}[kind]
    with pytest.raises(VerifyError, match="verification failed: guest byte") as e:
        _encrypt(src, out, kind, lambda s: Corrupting(s, at))
    assert "does not decrypt to the source" in str(e.value)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["raw", "qcow2"])
def test_a_sink_failing_mid_stream_leaves_nothing(tmp_path: Path, src: Path, kind: str) -> None:
    out = tmp_path / f"o.{kind}"
    with pytest.raises(LukspackError, match="no space left"):
        _encrypt(src, out, kind, lambda s: FailingAfter(s, 3 * MiB))
    assert not out.exists() and leftovers(tmp_path) == []


class FailingHeader(RawLuks):
    def build_key_material(self, volume_key, passphrase, cache):  # noqa: ANN001, ANN201
        raise LukspackError("key derivation failed")


class OtherKeyHeader(RawLuks):
    """Builds a header for a different volume key than the payload was encrypted with."""

    def build_key_material(self, volume_key, passphrase, cache):  # noqa: ANN001, ANN201
        return super().build_key_material(bytes(len(volume_key)), passphrase, cache)


class OtherKeyQcow2(Qcow2Luks):
    def build_key_material(self, volume_key, passphrase, cache):  # noqa: ANN001, ANN201
        return super().build_key_material(bytes(len(volume_key)), passphrase, cache)


def test_a_container_whose_header_build_fails(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "o.img"
    with pytest.raises(LukspackError, match="key derivation failed"):
        _encrypt(src, out, "raw", container=FailingHeader(10 * MiB, "luks1", KDF, name=str(out)))
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("cls", [OtherKeyHeader, OtherKeyQcow2])
def test_a_header_for_another_key_fails_before_it_is_placed(tmp_path: Path, src: Path,
                                                            cls: type) -> None:
    out = tmp_path / "o.img"
    c = cls(10 * MiB, "luks1", KDF, name=str(out)) if cls is OtherKeyHeader else \
        cls(10 * MiB, KDF, name=str(out))
    with pytest.raises(VerifyError, match="different key"):
        _encrypt(src, out, "raw", container=c)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["raw", "qcow2"])
def test_a_failing_source_stops_the_verifier(tmp_path: Path, kind: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The source fails mid-stream: the error surfaces (no hang waiting on the verifier)."""
    from lukspack.images.raw import RawImage

    src = pattern_disk(tmp_path / "s.raw", 12)
    real = RawImage._read_allocated

    def failing(self, offset, view):  # noqa: ANN001, ANN202
        if offset >= 8 * MiB:
            raise FormatError("source went away")
        real(self, offset, view)

    monkeypatch.setattr(RawImage, "_read_allocated", failing)
    out = tmp_path / f"o.{kind}"
    with pytest.raises(FormatError, match="source went away"):
        _encrypt(src, out, kind)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["raw", "qcow2"])
def test_tee_verification_when_the_sink_cannot_read_back(tmp_path: Path, src: Path,
                                                         kind: str) -> None:
    """A custom sink that can be read back neither before nor after commit is verified by
    decrypting each chunk again before it leaves ("tee"); the result still reads back through
    lukspack. (ObjectSink is read back after the upload: tests/verify.)"""

    class NoReadBack(Delegating):
        def read_back(self) -> None:
            return None

    from lukspack.plaintext import verify

    out = tmp_path / f"o.{kind}"
    key = bytes(generate_dek())
    s = _encrypt(src, out, kind, NoReadBack, key=key)
    assert s["verification"] == "tee" and s["verified"]
    r = verify(str(out), key, str(src))
    assert r["matches_source"] is True and r["disk_sha256"] == s["disk_sha256"]


def test_numpy_engine_end_to_end(tmp_path: Path, src: Path, keyfile: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback XTS engine makes an image cryptsetup opens and that decrypts to the source."""
    from lukspack.encrypt import encrypt
    from lukspack.options import EncryptOptions
    from lukspack.plaintext import verify

    monkeypatch.setenv("LUKSPACK_XTS_ENGINE", "numpy")
    out = tmp_path / "o.img"
    key = keyfile.read_bytes()
    encrypt(str(src), str(out), key, EncryptOptions(kdf=KDF))
    cryptsetup("luksOpen", "--test-passphrase", "--key-file", str(keyfile), str(out))
    monkeypatch.delenv("LUKSPACK_XTS_ENGINE")
    assert verify(str(out), key, str(src))["matches_source"] is True


def test_random_sparse_chunks_through_the_qcow2_container_read_back_unchanged(tmp_path: Path
                                                                              ) -> None:
    """Property: chunks of random clusters (zero, data, holes) planned by the qcow2 container
    and placed as the engine places them read back through Qcow2Image unchanged (no qemu)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    cs = 65536

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.sampled_from(["zero", "data", "hole"]), min_size=1, max_size=40),
           st.integers(0, 2**32 - 1), st.integers(1, 8))
    def check(kinds: list[str], seed: int, per_chunk: int) -> None:
        rnd = random.Random(seed)
        size = len(kinds) * cs
        disk = bytearray(size)
        for i, k in enumerate(kinds):
            if k == "data":
                disk[i * cs : (i + 1) * cs] = rnd.randbytes(cs)
        c = Qcow2Luks(size, KDF)
        w = c.writer
        path = tmp_path / f"p{seed}.qcow2"
        with open(path, "wb") as f:
            chunk = per_chunk * cs
            for off in range(0, w.stream_size, chunk):
                ks = kinds[off // cs : (off + chunk) // cs]
                allocated = any(k != "hole" for k in ks)
                view = memoryview(disk)[off : off + chunk] if allocated else None
                plan = c.plan(off, view, allocated)
                for r in plan.runs:  # plaintext stands in for ciphertext: layout only
                    f.seek(r.dest)
                    f.write(disk[off + r.start : off + r.start + r.length])
                for dest, data in plan.metadata:
                    f.seek(dest)
                    f.write(data)
            fin = c.finish(bytes(w.crypto_header[1]))  # an all-zero LUKS area: layout only
            for dest, data in [*fin.trailer, (0, fin.prefix)]:
                f.seek(dest)
                f.write(data)
            f.truncate(fin.total_size)
        import os

        fd = os.open(path, os.O_RDONLY)
        try:
            img = Qcow2Image(str(path), fd, allow_encrypted=True)
            got = bytearray(size)
            img.read_ciphertext(0, memoryview(got))
            assert got == disk
            holes = [e for e in img.extents() if not e.allocated]
            assert sum(e.length for e in holes) == cs * sum(k != "data" for k in kinds)
        finally:
            os.close(fd)
        path.unlink()

    check()
