"""Options of the commands, as small typed parts: the KDF, the stream, the output.

`EncryptOptions` holds a `KdfOptions` (the key slot KDF, as cryptsetup spells it) and a
`StreamOptions` (chunking, threads, verification, digests) rather than copies of their fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lukspack.luks.format import HeaderFields, KdfOptions
from lukspack.pipeline import CHUNK_SIZE, WORKERS

OUTPUT_FORMATS = ("raw", "qcow2", "vhd")


@dataclass(frozen=True)
class StreamOptions:
    chunk_size: int = CHUNK_SIZE
    workers: int = WORKERS
    verify: bool = True
    # SHA-256 of the disk while it streams (0.7 s per GiB here), for --json; verification
    # compares a faster digest of its own (digest.py)
    plaintext_digest: bool = True
    output_digest: bool = False  # SHA-256 of the whole output, for --json


@dataclass(frozen=True)
class EncryptOptions:
    luks_type: str = "luks1"
    kdf: KdfOptions = field(default_factory=KdfOptions)
    sector_size: int = 512
    key_bytes: int = 64  # volume key (aes-xts-plain64: 64 = two AES-256 keys)
    fields: HeaderFields = field(default_factory=HeaderFields)  # --uuid, --label, --key-slot
    output_format: str | None = None  # raw | qcow2 | vhd; None: from the output's name
    input_format: str | None = None
    disk: int | None = None  # which disk of an OVA
    force: bool = False
    stream: StreamOptions = field(default_factory=StreamOptions)
    target: str | None = None  # vpc | classic: check the source first (check/), pick the format
    skip_check: bool = False
    sink_options: Any = None  # options of a non-file sink (object storage)
    source_options: Any = None  # a remote source's (remote.RemoteOptions; None: from the env)


TARGET_FORMATS = {"vpc": "qcow2", "classic": "vhd"}


def output_format(output: str, requested: str | None, target: str | None = None) -> str:
    """The output container: --output-format when given; else the target's (VPC: qcow2+LUKS,
    classic: the encrypted VHD); else from the name's suffix."""
    if requested is None and target is not None:
        want = TARGET_FORMATS[target]
        by_name = output_format(output, None)
        if by_name not in (want, "raw") and not output.startswith("cos://"):
            from lukspack.errors import UsageError

            raise UsageError(f"{output}: a {by_name} name for --target {target}, which takes "
                             f"{want} (or say --output-format)")
        return want
    if requested is None:
        low = output.lower()
        if low.endswith((".qcow2", ".qcow")):
            return "qcow2"
        if low.endswith(".vhd"):
            return "vhd"
        return "raw"
    if requested not in OUTPUT_FORMATS:
        from lukspack.errors import LukspackError

        raise LukspackError(f"--output-format {requested} is not supported "
                            f"(use {', '.join(OUTPUT_FORMATS)})")
    return requested
