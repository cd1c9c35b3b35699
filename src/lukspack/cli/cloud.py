"""Cloud delivery commands: upload, wrap-key, unwrap-key, import vpc|classic (publish is in
cli/publish.py).

Credentials come from the environment or a credentials file only (see
lukspack.cloud.credentials); no option takes a secret.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

import click

from lukspack.cli import emit, human, progress_bar

MiB = 1 << 20
TARGET_CHOICE = click.Choice(["vpc", "classic", "luks-raw"])
IAM_URL_HELP = ("IAM: the base, as IBM's SDKs take it (https://iam.cloud.ibm.com, "
                "https://private.iam.cloud.ibm.com), or the full token URL (.../identity/token) "
                "[default: https://iam.cloud.ibm.com].")


def cos_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--endpoint-type", type=click.Choice(["public", "private", "direct"]),
                     default="public", show_default=True,
                     help="COS endpoint: s3., s3.private. or s3.direct.REGION..."),
        click.option("--endpoint-url", default=None,
                     help="S3 endpoint URL [default: $COS_ENDPOINT, else IBM's for the region]."),
        click.option("--credentials-file", type=click.Path(dir_okay=False), default=None,
                     help="HMAC keys or API key file [default: $COS_CREDENTIALS_FILE, else "
                          "~/.bluemix/cos_credentials]; else the environment."),
        click.option("--iam-url", default=None, help=IAM_URL_HELP),
    ]):
        f = opt(f)
    return f


def remote_options_from(endpoint_type: str = "public", endpoint_url: str | None = None,
                        credentials_file: str | None = None, iam_url: str | None = None,
                        **_transfer: Any) -> Any:
    """The options of a remote SOURCE (cos://, http(s)://) from cos_options' values: the
    endpoint and credentials `upload` would use."""
    from lukspack.remote import RemoteOptions

    return RemoteOptions(cos=cos_options_from(endpoint_type, endpoint_url, credentials_file,
                                              iam_url))


def transfer_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--part-size", type=click.IntRange(min=5, max=5120), default=16,
                     show_default=True, help="Part size in MiB (grown to keep <= 10,000 parts)."),
        click.option("--concurrency", type=click.IntRange(min=1, max=64), default=4,
                     show_default=True, help="Parts in flight."),
        click.option("--resume", is_flag=True, help="Continue a kept upload (its state file)."),
        click.option("--state-dir", type=click.Path(file_okay=False), default=None,
                     help="Where the state file goes [default: beside FILE, else the user's "
                          "cache directory]."),
        click.option("--verify-remote", is_flag=True,
                     help="Also read the object back part by part (parallel ranged GETs) and "
                          "compare each with the SHA-256 it was sent with."),
    ]):
        f = opt(f)
    return f


def stream_options(f: Any) -> Any:
    """The object-storage options of `encrypt SOURCE cos://...` (the lead's encrypt command adds
    them with this decorator and builds the sink with `object_sink_from`)."""
    return cos_options(transfer_options(f))


def object_sink_from(source: str, output: str, fingerprint: dict[str, Any], *,
                     endpoint_type: str, endpoint_url: str | None, credentials_file: str | None,
                     iam_url: str | None, part_size: int, concurrency: int, resume: bool,
                     state_dir: str | None, verify_remote: bool) -> Any:
    """The ObjectSink for a streamed encryption, from stream_options' values."""
    from lukspack.sinks.object import ObjectSinkOptions, open_streamed

    cos = cos_options_from(endpoint_type, endpoint_url, credentials_file, iam_url,
                           part_size=part_size, concurrency=concurrency, resume=resume,
                           state_dir=state_dir, verify_remote=verify_remote)
    opts = ObjectSinkOptions.from_cos(cos)
    return open_streamed(output, source, opts, fingerprint,
                         remote_options_from(endpoint_type, endpoint_url, credentials_file,
                                             iam_url))


def kms_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--region", required=True, help="Key Protect region (us-south, eu-de...)."),
        click.option("--instance-id", required=True, help="Key Protect instance GUID."),
        click.option("--root-key-id", required=True, help="Root key ID or alias."),
        click.option("--kms-url", default=None,
                     help="Key Protect Dedicated or Hyper Protect Crypto Services URL."),
        click.option("--private", "private_ep", is_flag=True,
                     help="Use private.REGION.kms.cloud.ibm.com."),
        click.option("--credentials-file", type=click.Path(dir_okay=False), default=None,
                     help="File with the API key ('apikey'); else $IBMCLOUD_API_KEY."),
        click.option("--iam-url", default=None, help=IAM_URL_HELP),
    ]):
        f = opt(f)
    return f


def cos_options_from(endpoint_type: str, endpoint_url: str | None, credentials_file: str | None,
                     iam_url: str | None, **transfer: Any) -> Any:
    """The CosOptions of cos_options' (and transfer_options') values; --part-size is MiB."""
    from lukspack.cloud.upload import CosOptions

    if "part_size" in transfer:
        transfer["part_size"] *= MiB
    return CosOptions(endpoint_url=endpoint_url, endpoint_type=endpoint_type,
                      credentials_file=credentials_file, iam_url=iam_url, **transfer)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("location")
@cos_options
@transfer_options
@click.option("--abort", "abort_kept", is_flag=True,
              help="Discard the kept (interrupted) upload of FILE to LOCATION.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--progress/--no-progress", default=True, help="Progress on stderr.")
def upload(file: str, location: str, endpoint_type: str, endpoint_url: str | None,
           credentials_file: str | None, iam_url: str | None, part_size: int, concurrency: int,
           resume: bool, state_dir: str | None, verify_remote: bool, abort_kept: bool,
           as_json: bool, progress: bool) -> None:
    """Upload FILE to cos://REGION/BUCKET/OBJECT: parallel multipart, each part checked by the
    server, the SHA-256 stored as metadata; interrupted, it resumes with --resume."""
    from lukspack import api

    req = api.UploadRequest(file, location, cos_options_from(
        endpoint_type, endpoint_url, credentials_file, iam_url, part_size=part_size,
        concurrency=concurrency, resume=resume, state_dir=state_dir,
        verify_remote=verify_remote))
    if abort_kept:
        a = api.abort_upload(req)
        emit(a.to_dict(), as_json, [f"{location}: discarded the kept upload {a.aborted}"])
        return
    with progress_bar(progress) as bar:
        s = api.upload(req, progress=bar)
    kept = f", {s.kept_parts} already there" if s.kept_parts else ""
    emit(s.to_dict(), as_json, [
        f"{s.location}: {human(s.bytes)} in {s.parts} part(s) of "
        f"{human(s.part_size)}{kept}, sha256 {s.sha256}"
        + (", read back and compared" if s.verified_remote else "")])


@click.command(name="wrap-key")
@click.option("--key-file", required=True, help="The key file the image was encrypted with.")
@click.option("--for", "target", type=TARGET_CHOICE, required=True,
              help="vpc: qcow2+LUKS; classic: encrypted VHD; luks-raw: the 2018 LUKS RAW.")
@kms_options
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Write the WDEK here (mode 0600) [default: stdout].")
@click.option("--no-check", is_flag=True, help="Do not unwrap once to compare.")
@click.option("--json", "as_json", is_flag=True)
def wrap_key(key_file: str, target: str, region: str, instance_id: str, root_key_id: str,
             kms_url: str | None, private_ep: bool, credentials_file: str | None,
             iam_url: str | None, output: str | None, no_check: bool, as_json: bool) -> None:
    """Wrap the key with a Key Protect root key, as the image service needs it back."""
    from lukspack import api

    kms = api.KmsTarget(region, instance_id, root_key_id, kms_url, private_ep, credentials_file,
                        iam_url)
    r = api.wrap_key(api.WrapKeyRequest(api.KeySource(path=key_file), target, kms,
                                        output=output, check=not no_check))
    if as_json:
        emit(r.to_dict(), True, [])
        return
    if not output:
        click.echo(r.wdek)
    click.echo(f"wrapped for {target} with root key {root_key_id}"
               + (", unwrapped once and compared" if r.checked else "")
               + (f"; WDEK written to {output} (mode 0600)" if output else ""), err=True)
    for note in r.warnings or ():
        warnings.warn(note, stacklevel=1)


@click.command(name="unwrap-key")
@click.option("--wdek-file", required=True, type=click.Path(dir_okay=False))
@kms_options
@click.option("--key-file", default=None, help="Say whether the WDEK holds this key file.")
@click.option("--for", "target", type=TARGET_CHOICE, default="vpc", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def unwrap_key(wdek_file: str, region: str, instance_id: str, root_key_id: str,
               kms_url: str | None, private_ep: bool, credentials_file: str | None,
               iam_url: str | None, key_file: str | None, target: str, as_json: bool) -> None:
    """Check a WDEK: unwrap it (never printed) and, with --key-file, compare."""
    from lukspack import api

    kms = api.KmsTarget(region, instance_id, root_key_id, kms_url, private_ep, credentials_file,
                        iam_url)
    req = api.UnwrapKeyRequest(wdek_file, kms, None if key_file is None else
                               api.KeySource(path=key_file), target)
    r = api.unwrap_key(req)
    emit(r.to_dict(), as_json, [f"{wdek_file}: unwraps with root key {root_key_id} to "
                                f"{r.unwrapped_bytes} bytes"
                                + ("" if key_file is None else
                                   f"; {'matches' if r.matches_key_file else 'does NOT match'} "
                                   f"{key_file} for {target}")])
    mismatch = api.unwrap_mismatch(req, r)
    if mismatch is not None:
        raise mismatch


@click.group(name="import")
def import_group() -> None:
    """Import an encrypted image from object storage as a custom image."""


def api_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--dry-run", is_flag=True, help="Print the request as JSON (secrets "
                                                      "redacted); send nothing."),
        click.option("--api-url", default=None, help="Override the service endpoint."),
        click.option("--credentials-file", type=click.Path(dir_okay=False), default=None),
        click.option("--iam-url", default=None, help=IAM_URL_HELP),
        click.option("--json", "as_json", is_flag=True),
    ]):
        f = opt(f)
    return f


@import_group.command(name="vpc")
@click.option("--name", required=True)
@click.option("--file", "file_", required=True, help="cos://REGION/BUCKET/OBJECT (qcow2).")
@click.option("--os", "os_name", required=True, help="Operating system name (debian-12-amd64).")
@click.option("--root-key-crn", required=True)
@click.option("--wdek-file", required=True, type=click.Path(dir_okay=False))
@click.option("--resource-group", default=None, help="Resource group ID.")
@click.option("--wait", is_flag=True, help="Wait until available or failed; compare checksums.")
@click.option("--expect-sha256", default=None,
              help="SHA-256 the image must report [default: the object's sha256 metadata].")
@api_options
def import_vpc(name: str, file_: str, os_name: str, root_key_crn: str, wdek_file: str,
               resource_group: str | None, wait: bool, expect_sha256: str | None,
               dry_run: bool, api_url: str | None, credentials_file: str | None,
               iam_url: str | None, as_json: bool) -> None:
    """Create a VPC custom image (POST /v1/images) from an encrypted qcow2 in COS."""
    from lukspack.api.imports import ImportRequest, import_image

    req = ImportRequest("vpc", name, file_, os_name, root_key_crn, wdek_file,
                        resource_group=resource_group, expect_sha256=expect_sha256, wait=wait,
                        dry_run=dry_run, api_url=api_url, credentials_file=credentials_file,
                        iam_url=iam_url)
    r = import_image(req, on_status=lambda s: click.echo(f"image status: {s}", err=True))
    _emit_import(r, as_json, _image_lines)


def _emit_import(r: Any, as_json: bool, lines: Callable[[dict[str, Any]], list[str]]) -> None:
    """A dry run prints the request (secrets redacted); else the service's record."""
    if r.request is not None:
        click.echo(json.dumps(r.to_dict(), indent=2))
    else:
        emit(r.to_dict(), as_json, lines(r.to_dict()))


def _image_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"image {r.get('name')}: id {r.get('id')}, status {r.get('status')}"]
    if r.get("crn"):
        lines.append(f"crn {r['crn']}")
    if r.get("checksum_match") is True:
        lines.append(f"file.checksums.sha256 {r['sha256']} matches the uploaded object")
    elif r.get("checksum_note"):
        lines.append(r["checksum_note"])
    return lines


def _template_lines(r: dict[str, Any]) -> list[str]:
    return [f"image template {r.get('name')}: id {r.get('id')}, global identifier "
            f"{r.get('globalIdentifier')}" + (f", status {r['status']}" if r.get("status") else "")]


@import_group.command(name="classic")
@click.option("--name", required=True)
@click.option("--file", "file_", required=True, help="cos://REGION/BUCKET/NAME.vhd-0.vhd")
@click.option("--os-code", required=True, help="operatingSystemReferenceCode (UBUNTU_22_64).")
@click.option("--root-key-crn", required=True)
@click.option("--wdek-file", required=True, type=click.Path(dir_okay=False))
@click.option("--note", default="", help="Note on the image template.")
@click.option("--cloud-init/--no-cloud-init", default=True, show_default=True)
@click.option("--byol", is_flag=True, help="Bring your own license.")
@click.option("--output-format", "image_format", type=click.Choice(["vhd", "raw"]), default="vhd",
              show_default=True, help="vhd: encrypted VHD; raw: the 2018 LUKS RAW.")
@click.option("--wait", is_flag=True,
              help="Poll the image template until no transaction is left and it is Active.")
@click.option("--timeout", type=click.IntRange(min=1), default=None,
              help="With --wait: give up after this many seconds (exit 1; the template stays) "
                   "[default: 14400].")
@api_options
def import_classic(name: str, file_: str, os_code: str, root_key_crn: str, wdek_file: str,
                   note: str, cloud_init: bool, byol: bool, image_format: str, wait: bool,
                   timeout: int, dry_run: bool, api_url: str | None, credentials_file: str | None,
                   iam_url: str | None, as_json: bool) -> None:
    """Create a classic image template (SoftLayer createFromIcos) from COS."""
    from lukspack.api.imports import ImportRequest, import_image

    req = ImportRequest("classic", name, file_, os_code, root_key_crn, wdek_file, note=note,
                        cloud_init=cloud_init, byol=byol, image_format=image_format, wait=wait,
                        timeout_s=timeout, dry_run=dry_run, api_url=api_url,
                        credentials_file=credentials_file, iam_url=iam_url)
    r = import_image(req, on_status=lambda st: click.echo(f"image template status: {st}",
                                                          err=True))
    _emit_import(r, as_json, _template_lines)


def register(cli: click.Group) -> None:
    for cmd in (upload, wrap_key, unwrap_key, import_group):
        cli.add_command(cmd)
