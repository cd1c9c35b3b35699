"""Byte-identity of a resumed image: after a kill -9 part way, the key material the fleet saved
(the resume journal's `key_material`: the LUKS header area; for the encrypted VHD its footer) is
read from the upload state; once the rerun has finished, the same source is encrypted again,
uninterrupted, into a local file with the same key and that same saved header
(`encrypt(..., key_material=...)`, the engine's resume path without the sink), and the object
the rerun left in the local S3 must equal it byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lukspack.cloud.location import parse_cos
from lukspack.cloud.multipart import Journal
from lukspack.encrypt import encrypt
from lukspack.luks.format import KdfOptions
from lukspack.options import EncryptOptions

ITERATIONS = 1000  # tests.fleet.conftest.defaults_for's pbkdf_force_iterations


def saved_key_material(uploads: Path) -> dict[str, bytes]:
    """{object location: saved key material} of the kept uploads in a fleet's upload state
    directory (STATE/uploads): what a kill -9 left for the rerun to resume with."""
    out: dict[str, bytes] = {}
    for p in sorted(uploads.glob("*.lukspack-upload")):
        j = Journal.load(str(p))
        if j is not None and j.key_material is not None:
            out[str(parse_cos(j.upload["location"]))] = j.key_material
    return out


def uninterrupted(source: Path, fmt: str, key_file: Path, material: bytes, out: Path) -> bytes:
    """The image one uninterrupted run writes from source with this key and saved header: the
    fleet's encrypt options (fleet/image.py: the KDF setting for the formats with key slots),
    into a local file."""
    opts = EncryptOptions(kdf=KdfOptions(force_iterations=ITERATIONS) if fmt != "vhd" else None,
                          output_format=fmt)
    out.unlink(missing_ok=True)
    encrypt(str(source), str(out), bytearray(key_file.read_bytes()), opts, key_material=material)
    return out.read_bytes()


def first_difference(a: bytes, b: bytes) -> int | None:
    n, step = min(len(a), len(b)), 1 << 16
    for i in range(0, n, step):
        if a[i : i + step] != b[i : i + step]:
            return next(k for k in range(i, min(i + step, n)) if a[k] != b[k])
    return None if len(a) == len(b) else n


def assert_identical(s3: Any, location: str, source: Path, fmt: str, key_file: Path,
                     material: bytes, work: Path) -> str:
    """The object at location (the local S3) equals an uninterrupted run with the saved key
    material, byte for byte; returns its SHA-256."""
    loc = parse_cos(location)
    got = s3.client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    want = uninterrupted(source, fmt, key_file, material,
                         work / f"uninterrupted-{Path(loc.key).name}")
    digest = hashlib.sha256(got).hexdigest()
    if digest != hashlib.sha256(want).hexdigest():
        at = first_difference(got, want)
        raise AssertionError(f"{location}: the resumed object ({len(got)} bytes) is not the "
                             f"uninterrupted run's ({len(want)} bytes): first difference at "
                             f"byte {at}")
    return digest


def resumed_identical(s3: Any, result: dict[str, Any], saved: dict[str, bytes],
                      sources: dict[str, Path], keys: Path, work: Path) -> list[str]:
    """Every image of a finished fleet run (its --json) that a kill left a saved header for
    equals its uninterrupted run (assert_identical); the names checked."""
    checked = []
    for i in result["images"]:
        material = saved.get(str(parse_cos(i["output"])))
        if material is not None:
            assert_identical(s3, i["output"], sources[i["name"]], i["format"],
                             keys / f"{i['name']}.key", material, work)
            checked.append(i["name"])
    return checked


def sources_of(rows: list[dict[str, Any]]) -> dict[str, Path]:
    """{image name: source path} of manifest rows."""
    return {r["name"]: Path(r["source"]) for r in rows}
