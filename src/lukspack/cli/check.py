"""`lukspack check` and `lukspack boot-test`: is the image a Linux with cloud-init that IBM Cloud
can boot (read without mounting), and does it boot under QEMU as IBM's hypervisor opens it."""

from __future__ import annotations

import sys
from typing import Any

import click

TARGET_HELP = "IBM Cloud VPC (KVM, NoCloud) or classic (Xen, ConfigDrive)."


def register(cli: click.Group) -> None:
    from lukspack.cli import KEY_FILE_HELP, emit
    from lukspack.cli.cloud import cos_options, remote_options_from
    from lukspack.cli.options import input_format_option, json_option

    @cli.command()
    @click.argument("source")
    @click.option("--target", type=click.Choice(["vpc", "classic"]), default="vpc",
                  show_default=True, help=TARGET_HELP)
    @click.option("--key-file", default=None,
                  help=KEY_FILE_HELP + " For an encrypted SOURCE (LUKS RAW, qcow2+LUKS, VHD).")
    @input_format_option
    @json_option
    @cos_options
    def check(source: str, target: str, key_file: str | None, input_format: str | None,
              as_json: bool, **cloud: Any) -> None:
        """Check that SOURCE is a bootable Linux with cloud-init fit for IBM Cloud, reading only
        the blocks it needs (no root, no mount). Exit 1 on any FAIL."""
        from lukspack import api

        key = None if key_file is None else api.KeySource(path=key_file)
        r = api.check(api.CheckRequest(source, target, key, input_format,
                                       remote_options_from(**cloud)))
        emit(r.to_dict(), as_json, r.lines())
        r.raise_on_fail(source)

    @cli.command("boot-test")
    @click.argument("image", type=click.Path())
    @click.option("--key-file", default=None,
                  help=KEY_FILE_HELP + " For a LUKS RAW or qcow2+LUKS IMAGE (QEMU decrypts) or "
                       "an encrypted VHD (lukspack decrypts it into a private sparse copy).")
    @click.option("--timeout", type=click.IntRange(min=1), default=600, show_default=True,
                  help="Seconds to wait for the marker on the serial console.")
    @click.option("--datasource", type=click.Choice(["nocloud", "configdrive"]), default="nocloud",
                  show_default=True, help="Seed: NoCloud (VPC) or ConfigDrive v2 (classic).")
    @click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
                  show_default=True, help="KVM, TCG, or KVM falling back to TCG when it hangs.")
    @click.option("--memory", type=click.IntRange(min=256), default=1024, show_default=True,
                  help="Guest memory in MiB.")
    @json_option
    def boot_test_cmd(image: str, key_file: str | None, timeout: int, datasource: str, accel: str,
                      memory: int, as_json: bool) -> None:
        """Boot IMAGE under qemu-system-x86_64 (machine pc, SeaBIOS, virtio, never writing it)
        with a generated cloud-init seed; pass when its user-data's marker reaches the serial
        console. Exit 1 on failure, with the console's last lines on stderr."""
        from lukspack.boot import boot_test
        from lukspack.cli import key_from

        if key_file is None:
            result = boot_test(image, datasource=datasource, timeout=timeout, accel=accel,
                               memory_mb=memory)
        else:
            with key_from(key_file, dek_rules=False) as key:
                result = boot_test(image, passphrase=key, datasource=datasource, timeout=timeout,
                                   accel=accel, memory_mb=memory)
        if as_json or result.passed:
            emit(result.to_dict(), as_json, result.lines())
        else:
            click.echo(result.lines()[0])
            click.echo("serial console, last lines:", err=True)
            for line in result.console_tail:
                click.echo(f"  | {line}", err=True)
        sys.stderr.flush()
        result.raise_on_fail()
