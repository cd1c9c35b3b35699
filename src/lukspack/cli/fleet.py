"""`lukspack fleet plan|run|status MANIFEST`: many publishes from one manifest (lukspack.fleet)."""

from __future__ import annotations

from typing import Any

import click

from lukspack.cli import Group, emit


def default_options(f: Any) -> Any:
    """publish's options, as defaults for every row (a manifest field of the same name, with
    underscores, overrides them)."""
    for opt in reversed([
        click.option("--root-key-crn", default=None),
        click.option("--kms-instance", default=None, help="Key Protect instance GUID."),
        click.option("--kms-url", default=None),
        click.option("--private-kms", is_flag=True, default=None,
                     help="private.REGION.kms.cloud.ibm.com"),
        click.option("--api-url", default=None, help="VPC or SoftLayer API endpoint."),
        click.option("--endpoint-type", type=click.Choice(["public", "private", "direct"]),
                     default=None, help="COS endpoint [default: public]."),
        click.option("--endpoint-url", default=None,
                     help="S3 endpoint URL [default: $COS_ENDPOINT, else IBM's for the region]."),
        click.option("--credentials-file", type=click.Path(dir_okay=False), default=None),
        click.option("--iam-url", default=None, help="IAM token endpoint [default: IBM's]."),
        click.option("--pbkdf-force-iterations", type=click.IntRange(min=1000), default=None),
        click.option("--part-size", type=click.IntRange(min=5, max=5120), default=None,
                     help="Part size in MiB [default: 16]."),
        click.option("--concurrency", type=click.IntRange(min=1, max=64), default=None,
                     help="Parts in flight per image [default: 4]."),
        click.option("--skip-check", is_flag=True, default=None,
                     help="Do not check the images (lukspack check) before encrypting."),
        click.option("--keys-dir", type=click.Path(file_okay=False), default=None,
                     help="Where `key: new` writes keys [default: keys/ beside the manifest]."),
        click.option("--state-dir", type=click.Path(file_okay=False), default=None,
                     help="The fleet's state [default: MANIFEST.state beside the manifest]."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
    ]):
        f = opt(f)
    return f


def _defaults(kw: dict[str, Any]) -> tuple[dict[str, Any], str | None, bool]:
    state_dir, as_json = kw.pop("state_dir"), kw.pop("as_json")
    return {k: v for k, v in kw.items() if v is not None}, state_dir, as_json


def _say(line: str) -> None:
    click.echo(line, err=True)


@click.group(name="fleet", cls=Group)
def fleet_group() -> None:
    """Publish many images from a manifest (YAML or CSV): plan, run, status."""


@fleet_group.command(name="plan")
@click.argument("manifest", type=click.Path(dir_okay=False))
@default_options
def plan_cmd(manifest: str, **kw: Any) -> None:
    """Check every row, open every source, run the pre-flight once per bucket / root key /
    region; print what `fleet run` will do. Nothing is uploaded and no key is written."""
    from lukspack.api.fleet import FleetRequest, fleet_plan
    from lukspack.fleet.report import human

    defaults, state_dir, as_json = _defaults(kw)
    r = fleet_plan(FleetRequest(manifest, defaults, state_dir), say=_say)
    lines = [f"{i.index}  {i.name}: {i.status}; {i.source} ({i.input or '-'}, "
             f"{human(i.size)}) -> {i.target} {i.format} {i.output}; key "
             f"{i.key}" + ("; check skipped" if i.skip_check else "")
             for i in r.images]
    lines.append(f"{len(r.images)} image(s), {len(r.preflights)} pre-flight(s) passed; "
                 f"state in {r.state_dir}")
    emit(r.to_dict(), as_json, lines)


@fleet_group.command(name="run")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--jobs", "-j", type=click.IntRange(min=1, max=256), default=None,
              help="Images at once in the local pool [default: from the CPUs and memory].")
@click.option("--index", type=click.IntRange(min=0), default=None,
              help="Run only row N (counted from 0) in this process [default: "
                   "$JOB_COMPLETION_INDEX (Kubernetes), else $JOB_INDEX (Code Engine), else "
                   "every row].")
@click.option("--ray", "ray", default=None, metavar="auto|local|ADDRESS",
              help="Run each image as a Ray task: auto (the running cluster), local (start one "
                   "here) or the head's ADDRESS; needs pip install 'lukspack[ray]'.")
@click.option("--ray-cpus", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="CPUs a Ray task asks for.")
@default_options
def run_cmd(manifest: str, jobs: int | None, index: int | None, ray: str | None,
            ray_cpus: float, **kw: Any) -> None:
    """Publish every image not done yet; a rerun skips finished images and resumes the others.
    Exit 0 only when every image (or the indexed one) is done."""
    from lukspack.api.fleet import FleetRunRequest, fleet_run
    from lukspack.fleet.report import table

    defaults, state_dir, as_json = _defaults(kw)
    r = fleet_run(FleetRunRequest(manifest, defaults, state_dir, jobs=jobs, index=index,
                                  ray=ray, ray_cpus=ray_cpus, index_from_environment=True),
                  say=_say)
    emit(r.to_dict(), as_json, table(r.to_dict()["images"]))
    r.raise_unless_done()


@fleet_group.command(name="status")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--bucket", is_flag=True,
              help="Images the state directory does not know: read the record beside each "
                   "object (batch jobs whose pods shared no state directory).")
@default_options
def status_cmd(manifest: str, bucket: bool, **kw: Any) -> None:
    """The table of `fleet run` from the state directory, without running anything (give the
    options `fleet run` was given)."""
    from lukspack.api.fleet import FleetRequest, fleet_status
    from lukspack.fleet.report import table

    defaults, state_dir, as_json = _defaults(kw)
    r = fleet_status(FleetRequest(manifest, defaults, state_dir, bucket=bucket))
    emit(r.to_dict(), as_json, table(r.to_dict()["images"]))


def register(cli: click.Group) -> None:
    cli.add_command(fleet_group)
