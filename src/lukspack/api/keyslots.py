"""The key slot jobs: `add_key` and `remove_key`, as cryptsetup's luksAddKey and luksRemoveKey,
on LUKS1, LUKS2 and qcow2+LUKS images in place.

Their rules live here: one of the two keys at most from standard input, --hash and --pbkdf
checked before any I/O (options.check_hash, KdfOptions.check), and the IBM DEK rule on a new
LUKS key (a warning: cryptsetup accepts the key, IBM Cloud would not)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from lukspack.api.common import KeySource, Result
from lukspack.errors import UsageError
from lukspack.luks.format import KdfOptions

KdfProgress = Callable[[str, float, float | None], None]

__all__ = ["AddKeyRequest", "AddKeyResult", "RemoveKeyRequest", "RemoveKeyResult", "add_key",
           "remove_key"]


@dataclass(frozen=True)
class AddKeyRequest:
    """`key` must open a key slot of `image`; `new_key` goes into `key_slot` (None: the first
    free one). `hash`: the PBKDF2 and AF hash (None: LUKS2 sha256, LUKS1 the header's);
    `kdf`'s hash is not used (give `hash`)."""

    image: str
    key: KeySource
    new_key: KeySource
    key_slot: int | None = None
    hash: str | None = None
    kdf: KdfOptions = field(default_factory=KdfOptions)

    def __post_init__(self) -> None:
        if self.key.path == "-" and self.new_key.path == "-":
            raise UsageError("only one of --key-file and --new-key-file can be '-' (stdin)")
        from lukspack.options import check_kdf_usage

        check_kdf_usage("luks2", self.hash, self.kdf.pbkdf)


@dataclass(frozen=True, kw_only=True)
class AddKeyResult(Result):
    """What `add-key --json` prints; memory_kb to seqid for LUKS2 only."""

    container: str  # luks1, luks2 or qcow2
    image: str
    type: str  # the header: luks1 or luks2
    opened_slot: int
    added_slot: int
    pbkdf: str
    hash: str
    iterations: int
    memory_kb: int | None = None
    parallel: int | None = None
    area_offset: int | None = None
    seqid: int | None = None
    active_slots: tuple[int, ...]
    warnings: tuple[str, ...] | None = None


def add_key(request: AddKeyRequest, progress: KdfProgress | None = None) -> AddKeyResult:
    """Add a key slot; progress(phase, seconds, expected seconds or None) while each KDF runs."""
    from lukspack.keys import dek_rule_broken
    from lukspack.luks.keyslots import add_key as add

    with request.key.open() as key, request.new_key.open() as new:
        r = add(request.image, key, new, request.kdf, key_slot=request.key_slot,
                new_name=request.new_key.name, progress=progress, hash_name=request.hash)
        rule = dek_rule_broken(new)
    if rule is not None and r["container"] != "qcow2":  # qcow2: the VPC rule's warning, in r
        warnings.warn(f"{request.new_key.name}: cryptsetup accepts this key, but it is not a "
                      f"valid IBM Cloud data encryption key: {rule}", stacklevel=2)
    return AddKeyResult.from_summary(r)


@dataclass(frozen=True)
class RemoveKeyRequest:
    image: str
    key: KeySource


@dataclass(frozen=True, kw_only=True)
class RemoveKeyResult(Result):
    """What `remove-key --json` prints; seqid for LUKS2 only."""

    container: str
    image: str
    type: str
    removed_slot: int
    seqid: int | None = None
    active_slots: tuple[int, ...]


def remove_key(request: RemoveKeyRequest) -> RemoveKeyResult:
    """Remove the key slot `key` opens, never the last one."""
    from lukspack.luks.keyslots import remove_key as remove

    with request.key.open() as key:
        return RemoveKeyResult.from_summary(remove(request.image, key))
