"""A fleet manifest: one row per image, in YAML or CSV, checked strictly before anything runs.

YAML: a mapping with `images:` (a list of rows) and optional `defaults:` (a row's fields, used
where a row does not give them). CSV: the header row is the field names, one image per line; a
row whose `name` is `defaults` (or `*`) gives the defaults; an empty cell is not given.

Precedence, field by field: the row, then the file's defaults, then the command line (publish's
options: `--root-key-crn`, `--kms-url`, ...), then publish's own defaults. Every error names the
row (counted from 0, as `--index` counts) and the field, in one line.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Any

from lukspack.errors import LukspackError

# the image's own fields
ROW_FIELDS = ("source", "target", "name", "os", "output", "key", "format", "skip_check",
              "resource_group", "input_format")
# publish's options, as defaults for every row (the command line's, with underscores)
OPTION_FIELDS = ("root_key_crn", "kms_instance", "endpoint_url", "endpoint_type",
                 "credentials_file", "kms_url", "private_kms", "iam_url", "api_url",
                 "pbkdf_force_iterations", "note", "cloud_init", "byol", "wait", "part_size",
                 "concurrency", "keys_dir")
FIELDS = ROW_FIELDS + OPTION_FIELDS
BOOL_FIELDS = ("skip_check", "private_kms", "cloud_init", "byol", "wait")
INT_FIELDS = {"pbkdf_force_iterations": (1000, None), "part_size": (5, 5120),
              "concurrency": (1, 64)}
REQUIRED = ("source", "target", "name", "os", "output", "key", "root_key_crn", "kms_instance")
BUILTIN = {"skip_check": False, "private_kms": False, "cloud_init": True, "byol": False,
           "wait": True, "part_size": 16, "concurrency": 4, "endpoint_type": "public", "note": ""}
TARGETS = ("vpc", "classic")
GOOD_OS = {"vpc": "debian-12-amd64", "classic": "UBUNTU_22_64"}  # names the import takes
FORMATS = {"vpc": ("qcow2",), "classic": ("vhd", "raw")}
INPUT_FORMATS = ("raw", "vhd", "qcow2", "vmdk", "vhdx", "ova")
PATH_FIELDS = ("credentials_file", "keys_dir")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class ManifestError(LukspackError):
    """A manifest that cannot run: one line naming the file, the row and the field."""


@dataclass
class Row:
    index: int
    values: dict[str, Any]  # every field, merged (row > file defaults > command line > builtin)
    line: int | None = None  # CSV: the line in the file

    def __getitem__(self, name: str) -> Any:
        return self.values.get(name)

    @property
    def name(self) -> str:
        return str(self.values["name"])


@dataclass
class Manifest:
    path: str
    rows: list[Row] = field(default_factory=list)

    @property
    def base(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def where(self, row: Row, fld: str | None = None) -> str:
        at = f"{self.path}: row {row.index}"
        if row.line is not None:
            at += f" (line {row.line})"
        if row.values.get("name"):
            at += f" ({row.values['name']})"
        return at + (f", field {fld!r}" if fld else "")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(16 << 20)
    except OSError as e:
        raise ManifestError(f"{path}: cannot read the manifest: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: the manifest is not UTF-8 text") from None


def _raw_rows(path: str) -> tuple[dict[str, Any], list[tuple[dict[str, Any], int | None]]]:
    """(file defaults, [(row, line)]) as written, before any check of the values."""
    text = _read(path)
    if path.lower().endswith(".csv"):
        return _csv_rows(path, text)
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ManifestError(f"{path}: not valid YAML{at}") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: the manifest must be a mapping with 'images:' (a list of "
                            "rows) and optional 'defaults:'")
    extra = sorted(set(map(str, doc)) - {"images", "defaults"})
    if extra:
        raise ManifestError(f"{path}: unknown top-level field {extra[0]!r} (known: images, "
                            "defaults)")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ManifestError(f"{path}: 'defaults' must be a mapping of field: value")
    images = doc.get("images")
    if not isinstance(images, list) or not images:
        raise ManifestError(f"{path}: 'images' must be a non-empty list of rows")
    rows: list[tuple[dict[str, Any], int | None]] = []
    for i, r in enumerate(images):
        if not isinstance(r, dict):
            raise ManifestError(f"{path}: row {i}: must be a mapping of field: value")
        rows.append((r, None))
    return defaults, rows


def _csv_rows(path: str, text: str
              ) -> tuple[dict[str, Any], list[tuple[dict[str, Any], int | None]]]:
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{path}: empty CSV (the header row names the fields)") from None
    for h in header:
        if h not in FIELDS:
            raise ManifestError(f"{path}: header, unknown field {h!r} (known: "
                                f"{', '.join(FIELDS)})")
    if len(set(header)) != len(header):
        raise ManifestError(f"{path}: header names a field twice")
    defaults: dict[str, Any] = {}
    rows: list[tuple[dict[str, Any], int | None]] = []
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            raise ManifestError(f"{path}: line {line}: {len(cells)} cells, the header has "
                                f"{len(header)}")
        r = {h: c.strip() for h, c in zip(header, cells, strict=False) if c.strip()}
        if r.get("name") in ("defaults", "*"):
            r.pop("name")
            defaults.update(r)
            continue
        rows.append((r, line))
    if not rows:
        raise ManifestError(f"{path}: no image rows under the header")
    return defaults, rows


def _value(fld: str, v: Any, where: str) -> Any:
    if fld in BOOL_FIELDS:
        if isinstance(v, bool):
            return v
        s = str(v).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise ManifestError(f"{where}: {v!r} is not true or false")
    if fld in INT_FIELDS:
        if isinstance(v, bool):
            raise ManifestError(f"{where}: {v!r} is not a whole number")
        try:
            n = int(str(v).strip())
        except ValueError:
            raise ManifestError(f"{where}: {v!r} is not a whole number") from None
        lo, hi = INT_FIELDS[fld]
        if n < lo or (hi is not None and n > hi):
            raise ManifestError(f"{where}: {n} must be at least {lo}"
                                + (f" and at most {hi}" if hi is not None else ""))
        return n
    if isinstance(v, (dict, list)):
        raise ManifestError(f"{where}: must be a single value, not {type(v).__name__}")
    return str(v)


def _check_values(values: dict[str, Any], where: Any) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        if k not in FIELDS:
            raise ManifestError(f"{where(k)}: unknown field (known: {', '.join(FIELDS)})")
        if v is not None:  # `field:` with no value, as an empty CSV cell: not given
            out[k] = _value(k, v, where(k))
    return out


def load(path: str, cli_defaults: dict[str, Any] | None = None) -> Manifest:
    """Read and check a manifest; cli_defaults: publish's options given on the command line
    (field name -> value; None means not given)."""
    file_defaults, raw = _raw_rows(path)
    m = Manifest(path)

    def dwhere(fld: str | None) -> str:
        return f"{path}: defaults" + (f", field {fld!r}" if fld else "")

    fdefaults = _check_values({str(k): v for k, v in file_defaults.items()}, dwhere)
    cli = {k: v for k, v in (cli_defaults or {}).items() if v is not None}
    for i, (r, line) in enumerate(raw):
        row = Row(i, {}, line)
        row.values = {"name": r.get("name")} if isinstance(r.get("name"), str) else {}
        given = _check_values({str(k): v for k, v in r.items()},
                              lambda f, row=row: m.where(row, f))
        row.values = {**BUILTIN, **cli, **fdefaults, **given}
        _check_row(m, row)
        m.rows.append(row)
    _check_unique(m)
    return m


def _check_row(m: Manifest, row: Row) -> None:
    from lukspack.cloud.errors import CloudError
    from lukspack.cloud.imports import check_vpc_name

    v = row.values
    for fld in REQUIRED:
        if not v.get(fld):
            raise ManifestError(f"{m.where(row, fld)}: missing (give it in the row, in "
                                "'defaults', or as a command-line option)")
    if v["target"] not in TARGETS:
        raise ManifestError(f"{m.where(row, 'target')}: {v['target']!r} must be vpc or classic")
    fmt = v.get("format")
    if fmt is not None and fmt not in FORMATS[v["target"]]:
        raise ManifestError(f"{m.where(row, 'format')}: {v['target']} imports "
                            f"{' or '.join(FORMATS[v['target']])}, not {fmt!r}")
    if v.get("input_format") is not None and v["input_format"] not in INPUT_FORMATS:
        raise ManifestError(f"{m.where(row, 'input_format')}: {v['input_format']!r} is not one "
                            f"of {', '.join(INPUT_FORMATS)}")
    try:
        if v["target"] == "vpc":
            check_vpc_name(v["name"])
        elif not v["name"].strip() or len(v["name"]) > 100:
            raise CloudError(f"image name {v['name']!r} must be 1 to 100 characters")
    except CloudError as e:
        raise ManifestError(f"{m.where(row, 'name')}: {e}") from None
    if v["endpoint_type"] not in ("public", "private", "direct"):
        raise ManifestError(f"{m.where(row, 'endpoint_type')}: must be public, private or "
                            "direct")
    # paths in the manifest are relative to its folder
    from lukspack.remote import is_remote

    if not is_remote(v["source"]):
        v["source"] = os.path.join(m.base, os.path.expanduser(v["source"]))
    for fld in PATH_FIELDS:
        if v.get(fld):
            v[fld] = os.path.join(m.base, os.path.expanduser(v[fld]))
    if v["key"] != "new":
        v["key"] = os.path.join(m.base, os.path.expanduser(v["key"]))
    if not v.get("keys_dir"):
        v["keys_dir"] = os.path.join(m.base, "keys")
    from lukspack.cloud.publish import import_request

    # publish's own request rules, field by field: the object with an operating system the
    # import takes, then the row's operating system
    for fld, os_name in (("output", GOOD_OS[v["target"]]), ("os", v["os"])):
        try:
            v["output"] = str(output_location(v))
            import_request(publish_plan({**v, "os": os_name}), output_location(v),
                           "placeholder-wdek", "placeholder")
        except CloudError as e:
            raise ManifestError(f"{m.where(row, fld)}: {e}") from None


def output_location(v: dict[str, Any]) -> Any:
    """The object of a row: `output` names it, or names a bucket (or a folder ending in '/')
    into which NAME plus the format's suffix goes, as publish names it."""
    from lukspack.cloud.location import parse_cos
    from lukspack.cloud.publish import object_location

    out = str(v["output"])
    if out.endswith("/"):
        loc = parse_cos(out.rstrip("/"), need_key=False)
        inner = object_location(publish_plan({**v, "output": str(loc.with_key(""))}))
        return loc.with_key(f"{loc.key}/{inner.key}" if loc.key else inner.key)
    return object_location(publish_plan(v))


def publish_plan(v: dict[str, Any]) -> Any:
    """The PublishPlan of a row (resume always on: a fleet row is idempotent)."""
    from lukspack.cloud.publish import PublishPlan
    from lukspack.cloud.upload import CosOptions

    MiB = 1 << 20
    cos = CosOptions(endpoint_url=v.get("endpoint_url"), endpoint_type=v["endpoint_type"],
                     credentials_file=v.get("credentials_file"), iam_url=v.get("iam_url"),
                     part_size=v["part_size"] * MiB, concurrency=v["concurrency"], resume=True,
                     state_dir=v.get("upload_state_dir"))
    return PublishPlan(v["target"], v["output"], v["root_key_crn"], v["kms_instance"], v["name"],
                       v["os"], output_format=v.get("format"),
                       resource_group=v.get("resource_group"), note=v["note"],
                       cloud_init=v["cloud_init"], byol=v["byol"], kms_url=v.get("kms_url"),
                       private_kms=v["private_kms"], api_url=v.get("api_url"), wait=v["wait"],
                       resume=True, skip_check=bool(v.get("skip_check")), cos_options=cos)


def _check_unique(m: Manifest) -> None:
    seen_out: dict[str, Row] = {}
    seen_name: dict[tuple[str, str], Row] = {}
    for row in m.rows:
        key = (row["target"], row.name)
        if key in seen_name:
            raise ManifestError(f"{m.where(row, 'name')}: {row.name!r} is also row "
                                f"{seen_name[key].index}'s {row['target']} image name")
        seen_name[key] = row
        out = row["output"]
        if out in seen_out:
            raise ManifestError(f"{m.where(row, 'output')}: {out} is also row "
                                f"{seen_out[out].index}'s output")
        seen_out[out] = row
    keys: dict[str, Row] = {}
    for row in m.rows:
        k = key_path(row)
        if row["key"] == "new" and k in keys:
            raise ManifestError(f"{m.where(row, 'key')}: the new key {k} is also row "
                                f"{keys[k].index}'s")
        keys[k] = row


def key_path(row: Row) -> str:
    """Where the row's key is: its key file, or (key: new) KEYS_DIR/NAME.key."""
    if row["key"] != "new":
        return str(row["key"])
    return os.path.join(str(row["keys_dir"]), f"{row.name}.key")
