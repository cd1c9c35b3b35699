"""`lukspack encrypt`: pick the container from the output format and the sink from the output's
location, then run the one engine (engine.py)."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

from lukspack.containers.base import Container
from lukspack.containers.qcow2_luks import Qcow2Luks
from lukspack.containers.raw_luks import RawLuks
from lukspack.engine import ProgressFn, encrypt_image
from lukspack.images import DiskImage, open_image, source_files
from lukspack.luks.kdf import KdfCache
from lukspack.options import (
    FORMAT_NAMES,
    EncryptOptions,
    fingerprint,
    for_format,
    format_name,
    kdf_note,
    output_format,
)
from lukspack.remote import source_reads
from lukspack.sinks.base import Sink, SinkFactory
from lukspack.sinks.file import open_file_output
from lukspack.sinks.paths import check_output_path

OBJECT_SCHEME = "cos://"
log = logging.getLogger(__name__)


def _why_format(output: str, opts: EncryptOptions) -> str:
    if opts.output_format is not None:
        return f"from --output-format {opts.output_format}"
    if opts.target is not None:
        return f"from --target {opts.target}"
    suffix = output.rsplit(".", 1)[-1].lower() if "." in output.rsplit("/", 1)[-1] else ""
    if suffix in ("qcow2", "qcow", "vhd"):
        return f"from the name's suffix .{suffix}"
    return "the name ends in neither .qcow2 nor .vhd (say -O qcow2 or -O vhd for those)"


def make_container(image: DiskImage, output: str, opts: EncryptOptions) -> Container:
    """The container for the output format; bad options fail here, before any output exists
    (options.for_format: an option the format does not take is a usage error)."""
    opts = for_format(opts, output_format(output, opts.output_format, opts.target))
    fmt, name = opts.output_format, output
    if fmt == "vhd":
        from lukspack.containers.encrypted_vhd import EncryptedVhd

        return EncryptedVhd(image.virtual_size, name=name)
    assert opts.kdf is not None and opts.luks_type is not None and opts.key_bytes is not None
    if fmt == "qcow2":
        return Qcow2Luks(image.virtual_size, opts.kdf, luks_type=opts.luks_type, name=name,
                         fields=opts.fields)
    assert opts.sector_size is not None
    return RawLuks(image.virtual_size, opts.luks_type, opts.kdf, sector_size=opts.sector_size,
                   key_bytes=opts.key_bytes, name=name, fields=opts.fields)


def make_sink(output: str, opts: EncryptOptions, sources: tuple[str, ...],
              protected: tuple[tuple[str, str], ...] = ()) -> Sink:
    if output.startswith(OBJECT_SCHEME):
        from dataclasses import replace

        from lukspack.sinks.object import ObjectSinkOptions, open_object_sink

        sink_options = opts.sink_options
        # a caller's untyped options reach open_object_sink, which refuses them in one line
        if isinstance(sink_options, ObjectSinkOptions) and sink_options.fingerprint is None:
            # what a --resume must find unchanged (options.fingerprint)
            fmt = output_format(output, opts.output_format, opts.target)
            sink_options = replace(sink_options, fingerprint=fingerprint(opts, fmt))
        return open_object_sink(output, sink_options)
    return open_file_output(output, force=opts.force,
                            protected=tuple(("source", s) for s in sources) + protected,
                            direct=not opts.stream.verify)


def encrypt(source: str, output: str, passphrase: bytes | bytearray, opts: EncryptOptions,
            progress: ProgressFn | None = None, *, sink: SinkFactory | None = None,
            key_material: bytes | None = None,
            protected: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """Encrypt a disk image into output (a path, a block device or cos://REGION/BUCKET/OBJECT);
    returns a summary. protected: (what, path) of files the output must not be (key files).
    sink: a function that makes the sink once the options have been checked (nothing is
    created for a run that fails its checks; `lambda: sink` for one already made); None: the
    sink the output names (make_sink). A resumable sink's saved key material is used when
    key_material is not given."""
    key_notes = _check_before_start(source, output, passphrase, opts, sink, protected)
    t0 = time.perf_counter()
    with open_image(source, opts.input_format, opts.disk, remote=opts.source_options) as image:
        log.info("source %s: %s (%s), %d bytes virtual, opened in %.3f s", image.path,
                 image.format_name, "from --input-format" if opts.input_format else
                 "detected from its content", image.virtual_size, time.perf_counter() - t0)
        container = make_container(image, output, opts)
        _log_layout(container)
        report = _check_fit(image, opts)
        made: Sink = make_sink(output, opts, source_files(image), protected) if sink is None \
            else sink()
        if key_material is None:
            key_material = made.saved_key_material
        with KdfCache() as cache:  # this encryption's: the header check reuses the build's
            summary = encrypt_image(image, container, made, passphrase, opts.stream, progress,
                                    key_material=key_material, cache=cache)
        return _add_notes(summary, image, key_notes, report, opts)


def _check_before_start(source: str, output: str, passphrase: bytes | bytearray,
                        opts: EncryptOptions, sink: SinkFactory | None,
                        protected: tuple[tuple[str, str], ...]) -> list[str]:
    """Usage errors, the KDF note and a bad output path, before anything is read; returns the
    key's warnings for the output's target."""
    fmt = output_format(output, opts.output_format, opts.target)
    for_format(opts, fmt)  # usage errors first
    log.info("output %s: %s, %s", output, FORMAT_NAMES[format_name(fmt)],
             _why_format(output, opts))
    note = kdf_note(opts, fmt)
    if note is not None:  # said before anything starts
        warnings.warn(note, stacklevel=3)  # at encrypt()'s caller
    from lukspack.keys import key_for_target

    # what the key means for the output's target, before any output exists (keys.py's one rule)
    key_notes = key_for_target(fmt, passphrase, dict(protected).get("key file", "key file")).warnings
    if sink is None and not output.startswith(OBJECT_SCHEME):  # a bad output fails before any read
        check_output_path(output, opts.force, (("source", source), *protected))
    return list(key_notes)


def _log_layout(container: Container) -> None:
    log.info("layout: %s, %d bytes before the payload, %d-byte disk, at most %d bytes, "
             "%s; %s-%s, %d-bit key, %d-byte sectors", container.name,
             container.prefix_size, container.disk_size, container.size_hint,
             "sparse (holes not stored)" if container.sparse else "every byte written",
             container.cipher_name, container.cipher_mode, container.key_bytes * 8,
             container.sector_size)


def _check_fit(image: DiskImage, opts: EncryptOptions) -> Any:
    """The --target check's report (CheckFailed names the failures); None without a target."""
    if opts.target is None or opts.skip_check:
        return None
    from lukspack.check import ensure_fit

    t1 = time.perf_counter()
    report = ensure_fit(image, opts.target)
    log.info("check for %s: passed in %.3f s", opts.target, time.perf_counter() - t1)
    return report


def _add_notes(summary: dict[str, Any], image: DiskImage, key_notes: list[str], report: Any,
               opts: EncryptOptions) -> dict[str, Any]:
    """The summary's warnings, source reads and check counts."""
    if key_notes:
        summary.setdefault("warnings", []).extend(key_notes)
    reads = source_reads(image)
    if reads is not None:
        summary["source_reads"] = reads
    if report is not None:
        summary["check"] = {"target": opts.target, **report.to_dict()["counts"]}
        summary.setdefault("warnings", []).extend(
            f"check: {f}" for f in report.lines() if f.lstrip().startswith("WARN"))
    return summary
