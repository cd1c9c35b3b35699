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
    from lukspack.cli import key_from
    from lukspack.images.vhd_crypt import EncryptedVhdImage, key_hash, open_encrypted_vhd_with_key
    from lukspack.keys import decode_vhd_key, wipe

    if image is None and key_file is None:
        raise click.UsageError("give --key-file KEY, an IMAGE, or both")
    if nonce is not None and image is not None:
        raise click.UsageError("--nonce only applies to a key alone (an IMAGE stores its nonce)")
    salt = bytes(32)
    if nonce is not None:
        try:
            salt = bytes.fromhex(nonce)
        except ValueError:
            salt = b""
        if len(salt) != 32:
            raise click.BadParameter("must be 64 hex digits", param_hint="--nonce")
    key = None
    if key_file is not None:
        with key_from(key_file, dek_rules=False) as content:
            key = decode_vhd_key(content, name=key_file)
    try:
        if image is None:
            assert key is not None
            click.echo(key_hash(key, salt).hex())
            return
        img: EncryptedVhdImage = open_encrypted_vhd_with_key(image, key)
        with img:
            if key is None:
                click.echo(f"{img.nonce.hex()} {img.key_hash.hex()}")
            else:
                click.echo(f"{image}: the key matches the key hash {img.key_hash.hex()} "
                           f"(AES-{img.key_bits // 2}-XTS)")
    finally:
        wipe(key)
