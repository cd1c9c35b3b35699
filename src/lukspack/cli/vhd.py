"""`lukspack keyhash`: the encrypted-VHD key hash, as `vhd-util key` computes and prints it."""

from __future__ import annotations

import click

NONCE_HELP = "Nonce as 64 hex digits, as `vhd-util key -N` [default: zeros, what vhd-util copy uses]."


def register(cli: click.Group) -> None:
    cli.add_command(keyhash)


@click.command()
@click.argument("image", required=False, type=click.Path())
@click.option("--key-file", default=None,
              help="Key file: base64 DEK or the raw 32/64-byte key; '-' reads stdin.")
@click.option("--nonce", default=None, help=NONCE_HELP)
def keyhash(image: str | None, key_file: str | None, nonce: str | None) -> None:
    """Print the key hash of --key-file (as `vhd-util key -C -k KEY`), the nonce and key hash of
    an encrypted VHD IMAGE (as `vhd-util key -p -n IMAGE`), or with both, check that the key
    matches IMAGE (as `vhd-util key -c`)."""
    from lukspack.api import KeySource, keys

    key = None if key_file is None else KeySource(key_file)
    r = keys.keyhash(keys.KeyhashRequest(image, key, nonce))
    if image is None:
        click.echo(r.key_hash)
    elif r.matches is None:
        click.echo(f"{r.nonce} {r.key_hash}")
    else:
        click.echo(f"{image}: the key matches the key hash {r.key_hash} "
                   f"(AES-{(r.key_bits or 0) // 2}-XTS)")
