"""`lukspack publish`: one command from a disk image to an imported, encrypted custom image."""

from __future__ import annotations

from typing import Any

import click

from lukspack.cli import emit, progress_bar
from lukspack.cli.cloud import cos_options


@click.command()
@click.argument("source")
@click.option("--to", "target", type=click.Choice(["vpc", "classic"]), required=True)
@click.option("--cos", "cos", required=True, help="cos://REGION/BUCKET[/OBJECT]")
@click.option("--root-key-crn", required=True)
@click.option("--kms-instance", required=True, help="Key Protect instance GUID.")
@click.option("--name", required=True, help="Image name.")
@click.option("--os", "os_name", required=True,
              help="VPC: operating system name; classic: operatingSystemReferenceCode.")
@click.option("--key-file", default=None, help="Existing key file (what encrypts the image).")
@click.option("--new-key-file", type=click.Path(dir_okay=False), default=None,
              help="Write a new key here (mode 0600) before anything is uploaded: VPC a "
                   "44-character passphrase, classic VHD base64 of 64 random bytes "
                   "(AES-256-XTS), classic RAW a 32-byte DEK (lukspack keygen's).")
@click.option("--new-key-bytes", type=click.Choice(["32", "64"]), default=None,
              help="Random bytes of a new classic key [default: 64 for the VHD (AES-256-XTS), "
                   "32 gives AES-128-XTS; 32 for the LUKS RAW].")
@click.option("--output-format", type=click.Choice(["qcow2", "vhd", "raw"]), default=None,
              help="VPC: qcow2; classic: vhd (encrypted VHD) or raw (the 2018 LUKS RAW).")
@click.option("--resource-group", default=None, help="VPC resource group ID.")
@click.option("--note", default="", help="Classic: the image template's note.")
@click.option("--cloud-init/--no-cloud-init", default=True, show_default=True)
@click.option("--byol", is_flag=True)
@click.option("--kms-url", default=None)
@click.option("--private-kms", is_flag=True, help="private.REGION.kms.cloud.ibm.com")
@click.option("--api-url", default=None, help="VPC or SoftLayer API endpoint.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="VPC: until the image is available or failed; classic: until the template "
                   "has no transaction left and is Active.")
@click.option("--resume", is_flag=True, help="Continue an interrupted publish.")
@click.option("--skip-check", is_flag=True,
              help="Do not run `lukspack check --target` on SOURCE first (said in the summary).")
@click.option("--part-size", type=click.IntRange(min=5, max=5120), default=16, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1, max=64), default=4, show_default=True)
@click.option("--pbkdf-force-iterations", type=click.IntRange(min=1000), default=None,
              help="Key slot iterations instead of calibrating.")
@cos_options
@click.option("--json", "as_json", is_flag=True)
@click.option("--progress/--no-progress", default=True)
def publish(source: str, target: str, cos: str, root_key_crn: str, kms_instance: str, name: str,
            os_name: str, key_file: str | None, new_key_file: str | None,
            new_key_bytes: str | None, output_format: str | None, resource_group: str | None,
            note: str, cloud_init: bool,
            byol: bool, kms_url: str | None, private_kms: bool, api_url: str | None, wait: bool,
            resume: bool, skip_check: bool, part_size: int, concurrency: int,
            pbkdf_force_iterations: int | None,
            endpoint_type: str, endpoint_url: str | None, credentials_file: str | None,
            iam_url: str | None, as_json: bool, progress: bool) -> None:
    """Check, encrypt SOURCE straight into the bucket, wrap the key, import, wait, compare."""
    from lukspack import api
    from lukspack.cli.cloud import cos_options_from

    req = api.PublishRequest(
        source, target, cos, root_key_crn, kms_instance, name, os_name,
        key=None if key_file is None else api.KeySource(path=key_file),
        new_key_file=new_key_file,
        new_key_bytes=None if new_key_bytes is None else int(new_key_bytes),
        output_format=output_format, resource_group=resource_group, note=note,
        cloud_init=cloud_init, byol=byol, kms_url=kms_url, private_kms=private_kms,
        api_url=api_url, wait=wait, resume=resume, skip_check=skip_check,
        pbkdf_force_iterations=pbkdf_force_iterations,
        cos_options=cos_options_from(endpoint_type, endpoint_url, credentials_file, iam_url,
                                     part_size=part_size, concurrency=concurrency,
                                     resume=resume))
    with progress_bar(progress) as bar:
        r = api.publish(req, progress=bar, say=lambda line: click.echo(line, err=True))
    emit(r.to_dict(), as_json, _lines(r))


def _lines(r: Any) -> list[str]:
    """publish's text output: the object, the image, the check, the checksum."""
    img: dict[str, Any] = r.image or {}
    lines = [f"{r.object}: {r.format}, sha256 {r.sha256}",
             f"image {img.get('name')}: id {img.get('id')}"
             + (f", status {img.get('status')}" if img.get("status") else "")
             + (f", crn {img['crn']}" if img.get("crn") else "")]
    check = r.check or {}
    lines.append(f"check for IBM Cloud {r.target}: skipped (--skip-check)" if check.get("skipped")
                 else f"check for IBM Cloud {r.target}: {check.get('PASS')} passed, "
                      f"{check.get('WARN')} warnings, {check.get('FAIL')} failed")
    if img.get("checksum_match"):
        lines.append("file.checksums.sha256 matches the uploaded object")
    elif img.get("checksum_note"):
        lines.append(img["checksum_note"])
    return lines


def register(cli: click.Group) -> None:
    cli.add_command(publish)
