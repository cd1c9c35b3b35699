"""The LUKS package's shape (issue 9): a leaf volume module, one keyslot path for both versions
(LUKS1 mapped onto the LUKS2 model), header-copy reasons as values, headers opened from memory,
and the KDF cache as an object owned by one encryption. cryptsetup is the oracle throughout."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lukspack.containers.raw_luks import RawLuks
from lukspack.errors import FormatError, VerifyError, WrongKeyError
from lukspack.luks import KdfCache, kdf, luks1, luks2, metadata, open_luks_bytes, open_luks_path
from lukspack.luks.format import KdfOptions, plan_header
from lukspack.luks.luks2 import CopyFault
from tests.helpers import ROOT, MiB, cryptsetup
from tests.luks.luks_helpers import CS_PBKDF2, cs_dump, cs_format, cs_opens, cs_volume_key, write_key

SRC = ROOT / "src" / "lukspack"
FAST = KdfOptions(force_iterations=1000)
PBKDF2_FAST = KdfOptions(force_iterations=1000, pbkdf="pbkdf2")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, also inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_no_import_cycles_and_a_leaf_volume_module() -> None:
    p = subprocess.run([sys.executable, "/work/shared/hooks/import_graph.py", str(ROOT / "src"),
                        "lukspack"], capture_output=True, text=True, check=True) \
        if Path("/work/shared/hooks/import_graph.py").exists() else None
    if p is not None:
        cycles = json.loads(p.stdout)["cycles"]
        assert not [c for c in cycles if any(m.startswith("lukspack.luks") for m in c)], cycles
    volume = _imports(SRC / "luks" / "volume.py")
    assert not {m for m in volume if m.startswith(("lukspack.luks.luks1", "lukspack.luks.luks2",
                                                    "lukspack.luks.open"))}, volume
    assert not {m for m in _imports(SRC / "luks" / "luks2.py") if "volume" in m}
    # luks reads qcow2 (keyslots.py): the images modules it depends on never import luks
    todo, seen = ["lukspack.images.qcow2"], set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = ROOT / "src" / (mod.replace(".", "/") + ".py")
        deps = _imports(path)
        assert not {m for m in deps if m.startswith("lukspack.luks")}, mod
        todo += [m for m in deps if m.startswith("lukspack.images.") and
                 (ROOT / "src" / (m.replace(".", "/") + ".py")).exists()]
    assert "lukspack.images.qcow2_header" in seen


# -- LUKS1 on the LUKS2 model -------------------------------------------------------------------

def test_luks1_slots_are_luks2_keyslots(tmp_path: Path) -> None:
    """cryptsetup's LUKS1 header, seen as LUKS2 keyslots: the same KDF, salt and area that
    luksDump shows; the one unlock path opens it to cryptsetup's volume key."""
    key = write_key(tmp_path / "k", b"passphrase one")
    image = cs_format(tmp_path / "l1.img", key, 4 * MiB, "--type", "luks1", "--hash", "sha512",
                      "--pbkdf-force-iterations", "1234", "--key-size", "256", "--cipher",
                      "aes-cbc-essiv:sha256")
    vol = open_luks_bytes("l1.img", image.read_bytes()[: 2 * MiB], 4 * MiB)
    hdr = vol.header
    assert isinstance(hdr, luks1.Luks1Header)
    meta = hdr.metadata("l1.img")
    (slot,) = meta.keyslots
    dump = cs_dump(image)
    assert slot.kdf == kdf.SlotKdf("pbkdf2", 1234, "sha512")
    assert slot.af_hash == "sha512" and slot.encryption == "aes-cbc-essiv:sha256"
    assert slot.area_offset == 4096 and f"Key material offset:\t{slot.area_offset // 512}" in dump
    assert slot.salt.hex()[:32] in dump.replace(" ", "").replace("\n", "").replace("\t", "")
    assert meta.digest.hash == "sha512" and meta.digest.digest.hex()[:8] in dump.replace(" ", "")
    got, index = metadata.unlock(meta, vol.read_at, key.read_bytes(), "l1.img")
    assert index == 0 and bytes(got) == cs_volume_key(image, key)


def test_one_seal_path_for_both_versions(tmp_path: Path) -> None:
    """A slot sealed by metadata.seal_keyslot into a cryptsetup LUKS1 header and into a LUKS2
    header: cryptsetup opens both with the new passphrase."""
    key = write_key(tmp_path / "k", b"old")
    new = b"sealed by lukspack"
    write_key(tmp_path / "new", new)
    for kind in ("luks1", "luks2"):
        args = ["--pbkdf-force-iterations", "1000"] if kind == "luks1" else CS_PBKDF2
        image = cs_format(tmp_path / f"{kind}.img", key, 20 * MiB, "--type", kind, *args)
        vk = cs_volume_key(image, key)
        fd, vol = open_luks_path(str(image))
        os.close(fd)
        if kind == "luks1":
            area = bytearray(image.read_bytes()[: vol.payload_offset])
            luks1.set_slot(vol.header, area, 5, vk, new, 1000)  # seal_slot -> seal_keyslot
            with open(image, "r+b") as f:
                f.write(area)
        else:
            slot = vol.header.keyslot("0")
            material = metadata.seal_keyslot(slot, vk, new)  # the same key slot, new passphrase
            with open(image, "r+b") as f:
                f.seek(slot.area_offset)
                f.write(material)
        assert cs_opens(image, tmp_path / "new"), kind


# -- reasons are values ----------------------------------------------------------------------

def _luks2_image(tmp_path: Path, key: Path) -> Path:
    return cs_format(tmp_path / "l2.img", key, 20 * MiB, "--type", "luks2", *CS_PBKDF2)


def _reseal(data: bytearray, at: int, j: dict) -> None:
    text = json.dumps(j, separators=(",", ":")).encode()
    size = 16384
    area = data[at : at + size]
    area[4096:] = text + bytes(size - 4096 - len(text))
    area[448:512] = bytes(64)
    area[448:480] = hashlib.sha256(area).digest()
    data[at : at + size] = area


def test_copy_problems_are_values(tmp_path: Path) -> None:
    key = write_key(tmp_path / "k", b"k")
    data = bytearray(_luks2_image(tmp_path, key).read_bytes())

    def problems(raw: bytes | bytearray) -> tuple:
        with pytest.warns(UserWarning):
            hdr = luks2.read_header(lambda o, n: bytes(raw[o : o + n]), len(raw), "x")
        return tuple(p.fault if p else None for p in hdr.problems)

    bad_magic = bytearray(data)
    bad_magic[0:6] = bytes(6)
    assert problems(bad_magic) == (CopyFault.MAGIC, None)
    bad_sum = bytearray(data)
    bad_sum[16384 + 5000] ^= 1
    assert problems(bad_sum) == (None, CopyFault.CHECKSUM)
    older = bytearray(data)
    older[16384 + 16 : 16384 + 24] = (0).to_bytes(8, "big")  # secondary seqid 0, re-summed
    _reseal(older, 16384, json.loads(bytes(data[4096:16384]).rstrip(b"\0")))
    assert problems(older) == (None, CopyFault.OLDER)


def test_a_truncated_secondary_is_named(tmp_path: Path) -> None:
    """Primary wiped, file cut inside the secondary's JSON area: the secondary is there (its
    magic matched), so the reason is its truncation, not "not a LUKS2 header" (the old code
    searched the reason's text for "past the end" and took it for no header at all)."""
    key = write_key(tmp_path / "k", b"k")
    image = _luks2_image(tmp_path, key)
    data = bytearray(image.read_bytes()[: 16384 + 8192])
    data[0:4096] = bytes(4096)
    image.write_bytes(data)
    msg = refused_by_both(image)
    assert "no valid LUKS2 header" in msg and "secondary header JSON area" in msg, msg


def refused_by_both(image: Path) -> str:
    """cryptsetup refuses image, and so does lukspack: its reason."""
    assert cryptsetup("luksDump", str(image), check=False).returncode != 0
    with pytest.raises(FormatError) as e:
        open_luks_path(str(image))
    return str(e.value)


def test_a_reason_that_mentions_magic_is_still_reported(tmp_path: Path) -> None:
    """Decisions do not depend on words in a reason: a secondary whose JSON error contains the
    word "magic" (a keyslot area of type "magic") is reported as what it is. cryptsetup
    refuses it too."""
    key = write_key(tmp_path / "k", b"k")
    image = _luks2_image(tmp_path, key)
    data = bytearray(image.read_bytes())
    j = json.loads(bytes(data[16384 + 4096 : 2 * 16384]).rstrip(b"\0"))
    j["keyslots"]["0"]["area"]["type"] = "magic"
    _reseal(data, 16384, j)
    data[0:4096] = bytes(4096)
    image.write_bytes(data)
    msg = refused_by_both(image)
    assert "no valid LUKS2 header" in msg and "area type 'magic' is not raw" in msg, msg
    assert "b'" not in msg and "\\x" not in msg


# -- headers in memory -----------------------------------------------------------------------

@pytest.mark.parametrize("luks_type", ["luks1", "luks2"])
def test_the_header_check_the_engine_runs(tmp_path: Path, luks_type: str) -> None:
    """RawLuks.check_prefix, what encrypt_image calls before the header is placed: parse the
    bytes, compare geometry, unlock with the key file (reusing the build's KDF results) and
    compare the volume key; then cryptsetup agrees."""
    c = RawLuks(4 * MiB, luks_type, PBKDF2_FAST, name="out.img")
    vk, pw = os.urandom(64), b"the key file"
    with KdfCache() as cache:
        header = c.build_key_material(vk, pw, cache)
        assert len(header) == c.prefix_size and len(cache) >= 2  # slot key and digest
        hits = cache.hits
        c.check_prefix(header, pw, vk, cache)
        assert cache.hits >= hits + 2  # nothing derived twice
    vol = open_luks_bytes("mem", header, c.prefix_size + 4 * MiB)
    assert vol.payload_offset == c.prefix_size and vol.payload_size == 4 * MiB
    assert open_luks_bytes("mem", header).payload_size == 0
    with pytest.raises(WrongKeyError, match="no key slot opens"):
        c.check_prefix(header, b"another key", vk, None)
    with pytest.raises(VerifyError, match="opens a different key"):
        c.check_prefix(header, pw, os.urandom(64), None)
    broken = bytearray(header)
    broken[4096 + 100 if luks_type == "luks1" else 32768 + 100] ^= 0xFF  # slot 0 material
    with pytest.raises(WrongKeyError):
        c.check_prefix(bytes(broken), pw, vk, None)
    with pytest.raises(VerifyError, match="the header says"):
        RawLuks(4 * MiB, luks_type, PBKDF2_FAST, key_bytes=32).check_prefix(header, pw, vk, None)
    image = tmp_path / "mem.img"
    image.write_bytes(header + bytes(MiB))
    write_key(tmp_path / "pw", pw)
    assert cs_opens(image, tmp_path / "pw") and cs_volume_key(image, tmp_path / "pw") == vk


def test_header_plan_has_no_check_of_its_own() -> None:
    """The dead HeaderPlan.check (production checks through the container) is gone."""
    from lukspack.luks import format as fmt

    assert not hasattr(plan_header("luks2", PBKDF2_FAST), "check")
    assert not hasattr(fmt, "check_header")


# -- the KDF cache belongs to one encryption ---------------------------------------------------

def test_two_encryptions_keep_their_own_cache() -> None:
    """With the old module-global memo, a second encryption's remember() reset the first's.
    Two caches in two threads: each reuses only its own results, and wiping one leaves the
    other intact."""
    c = RawLuks(4 * MiB, "luks2", PBKDF2_FAST)
    results: dict[str, tuple[int, int]] = {}
    first = KdfCache()
    started = threading.Event()

    def encrypt(name: str, cache: KdfCache) -> None:
        vk, pw = os.urandom(64), name.encode()
        header = c.build_key_material(vk, pw, cache)
        started.set()
        before = cache.hits
        c.check_prefix(header, pw, vk, cache)
        results[name] = (before, cache.hits)

    t = threading.Thread(target=encrypt, args=("one", first))
    t.start()
    started.wait(30)
    with KdfCache() as second:  # wiped on exit, while the first is still in use
        encrypt("two", second)
    t.join(30)
    assert len(second) == 0 and len(first) >= 2
    assert results["one"][1] >= results["one"][0] + 2 and results["two"][1] >= 2
    values = list(first._memo.values())
    first.wipe()
    assert len(first) == 0 and all(not any(v) for v in values)  # remembered keys zeroed


def test_no_cache_means_no_memory() -> None:
    """Without a cache nothing is remembered; with one, only the calls given it use it."""
    assert not hasattr(kdf, "remember") and not hasattr(kdf, "memoized")  # no module state
    with KdfCache() as cache:
        kdf.pbkdf2("sha256", b"pw", bytes(32), 1000, 32)
        assert len(cache) == 0
        kdf.pbkdf2("sha256", b"pw", bytes(32), 1000, 32, cache)
        assert len(cache) == 1 and cache.hits == 0
        assert kdf.pbkdf2("sha256", b"pw", bytes(32), 1000, 32, cache) == \
            kdf.pbkdf2("sha256", b"pw", bytes(32), 1000, 32)
        assert cache.hits == 1


@pytest.mark.parametrize("kind", ["luks1", "luks2", "qcow2"])
def test_the_engine_checks_the_header_with_its_encryptions_cache(tmp_path: Path,
                                                                 kind: str) -> None:
    """encrypt_image passes its KdfCache to the container: the header check before the prefix
    is placed answers the slot key and digest from the build's derivations; cryptsetup or qemu
    then open the image with the key."""
    from lukspack.containers.qcow2_luks import Qcow2Luks
    from lukspack.containers.raw_luks import RawLuks
    from lukspack.engine import encrypt_image
    from lukspack.images import open_image
    from lukspack.options import StreamOptions
    from lukspack.sinks.file import FileSink
    from tests.helpers import pattern_disk, qemu_img

    src = pattern_disk(tmp_path / "s.raw", 3)
    out = tmp_path / f"o.{kind}"
    key = b"Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWo="
    with open_image(str(src)) as image, KdfCache() as cache:
        size = image.virtual_size
        c = Qcow2Luks(size, FAST, name=str(out)) if kind == "qcow2" else \
            RawLuks(size, kind, PBKDF2_FAST, name=str(out))
        encrypt_image(image, c, FileSink(str(out), direct=False), key,
                      StreamOptions(verify=True), cache=cache)
        assert cache.hits >= 2, cache.hits  # slot key and volume-key digest not derived twice
    k = write_key(tmp_path / "k", key)
    if kind == "qcow2":
        qemu_img("compare", "--object", f"secret,id=s0,file={k}", "--image-opts",
                 f"driver=qcow2,file.filename={out},encrypt.key-secret=s0",
                 f"driver=raw,file.filename={src}")
    else:
        assert cs_opens(out, k)
