"""Every sink and container provides every member its protocol declares (sinks/base.py,
containers/base.py), by its own class or instance: the engine probes nothing (no hasattr), so a
sink that lacks one must fail here, not midway through an encryption. The encrypted readers
describe their encryption with one typed Encryption."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from lukspack.containers.base import Container
from lukspack.containers.encrypted_vhd import EncryptedVhd
from lukspack.containers.qcow2_luks import Qcow2Luks
from lukspack.containers.raw_luks import RawLuks
from lukspack.luks.format import KdfOptions
from lukspack.sinks.base import BeforeCommit, Sink
from lukspack.sinks.file import BlockDeviceSink, FileSink
from tests.helpers import MiB, pattern_disk
from tests.test_engine import Corrupting, Delegating, FailingAfter

KDF = KdfOptions(force_iterations=1000)


def protocol_members(proto: type) -> set[str]:
    """The names a protocol declares: its annotated attributes, methods and properties."""
    names = set(getattr(proto, "__annotations__", {}))
    names |= {n for n, v in vars(proto).items() if not n.startswith("_") and
              (inspect.isfunction(v) or isinstance(v, property))}
    return names


def missing(obj: object, proto: type) -> list[str]:
    """The declared members obj does not provide itself (getattr_static: a __getattr__ that
    forwards everything does not count)."""
    out = []
    for name in sorted(protocol_members(proto)):
        try:
            inspect.getattr_static(obj, name)
        except AttributeError:
            out.append(name)
    return out


def test_the_sink_protocol_declares_what_the_engine_uses() -> None:
    assert protocol_members(Sink) >= {
        "location", "concurrent_writes", "direct", "saved_key_material", "begin", "write",
        "write_prefix", "read_back", "keep_key_material", "start_writeback", "finish", "commit",
        "output_sha256", "abort"}
    assert protocol_members(Container) >= {"disk_size", "size_hint", "stream_size", "prefix_size"}


def _sinks(tmp_path: Path) -> dict[str, Any]:
    dev = tmp_path / "device"
    dev.write_bytes(bytes(MiB))  # a regular file stands in for the device: same class
    file = FileSink(str(tmp_path / "out.img"))
    return {"file": file, "block": BlockDeviceSink(str(dev)),
            "delegating": Delegating(FileSink(str(tmp_path / "d.img"))),
            "corrupting": Corrupting(FileSink(str(tmp_path / "c.img")), 0),
            "failing": FailingAfter(FileSink(str(tmp_path / "f.img")), 0)}


def test_every_sink_provides_every_declared_member(tmp_path: Path) -> None:
    sinks = _sinks(tmp_path)
    try:
        for name, sink in sinks.items():
            assert missing(sink, Sink) == [], name
            assert isinstance(sink, Sink), name
            assert isinstance(sink.read_back(), BeforeCommit), name
            assert sink.saved_key_material is None and isinstance(sink.direct, bool), name
    finally:
        for sink in sinks.values():
            sink.abort()


def test_a_sink_lacking_a_declared_member_is_caught(tmp_path: Path) -> None:
    """What this test guards: a sink without start_writeback (or one that forwards everything
    with __getattr__) does not pass as a Sink."""

    class NoWriteback(Delegating):
        start_writeback = None  # type: ignore[assignment]

    class Forwarding:
        def __init__(self, inner: FileSink) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    class Partial:
        location = "x"
        concurrent_writes = False

        def write(self, offset: int, data: bytes) -> None:
            pass

    inner = FileSink(str(tmp_path / "o.img"))
    try:
        assert missing(Partial(), Sink) == sorted(protocol_members(Sink) - {
            "location", "concurrent_writes", "write"})
        assert not isinstance(Partial(), Sink)
        assert "location" in missing(Forwarding(inner), Sink)
        assert not callable(NoWriteback(inner).start_writeback)
    finally:
        inner.abort()


@pytest.mark.parametrize("kind", ["raw", "luks2", "qcow2", "vhd"])
def test_every_container_provides_every_declared_member(kind: str) -> None:
    c = {"raw": lambda: RawLuks(10 * MiB, "luks1", KDF),
         "luks2": lambda: RawLuks(10 * MiB, "luks2", KdfOptions(force_iterations=4,
                                                                memory_kb=32, parallel=1)),
         "qcow2": lambda: Qcow2Luks(10 * MiB, KDF),
         "vhd": lambda: EncryptedVhd(10 * MiB)}[kind]()
    assert missing(c, Container) == [] and isinstance(c, Container)
    assert c.size_hint >= c.prefix_size + (0 if c.sparse else c.disk_size)
    assert c.disk_size >= 10 * MiB


@pytest.mark.parametrize("fmt,want", [("raw", ("luks1", "aes-xts-plain64", True)),
                                      ("qcow2", ("luks1", "aes-xts-plain64", True)),
                                      ("vhd", ("vhd", "aes-xts-plain", False))])
def test_encrypted_readers_describe_their_encryption(tmp_path: Path, fmt: str,
                                                     want: tuple[str, str, bool]) -> None:
    import dataclasses

    from lukspack.disks import unlocked_encrypted
    from lukspack.encrypt import encrypt
    from lukspack.images.encrypted import Encryption
    from lukspack.keys import generate_dek
    from lukspack.options import EncryptOptions

    src = pattern_disk(tmp_path / "s.raw", 4)
    out = tmp_path / f"o.{fmt}"
    key = bytes(generate_dek())
    opts = EncryptOptions(output_format=fmt, kdf=None if fmt == "vhd" else KDF)
    encrypt(str(src), str(out), key, opts)
    with unlocked_encrypted(str(out), key) as enc:
        d = enc.describe()
        assert isinstance(d, Encryption) and (d.type, d.cipher, d.volume is not None) == want
        assert d.quirks is None and d.notes == ()
        with pytest.raises(dataclasses.FrozenInstanceError):
            d.cipher = "x"  # type: ignore[misc]
        assert enc.key is not None
