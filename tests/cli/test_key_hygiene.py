"""No key, passphrase or volume key appears in any output of a run, in the image, or in argv."""

from __future__ import annotations

import base64
from pathlib import Path

from tests.helpers import FAST, Cli, MiB, cryptsetup, pattern_disk


def test_keys_never_leak(tmp_path: Path, cli: Cli, keyfile: Path) -> None:
    src = pattern_disk(tmp_path / "s.raw", 4)
    enc = tmp_path / "e.img"
    passphrase = keyfile.read_bytes()
    outputs: list[bytes] = []
    for args in (
        ["encrypt", src, enc, "--key-file", keyfile, "--json", *FAST],
        ["info", enc], ["info", enc, "--json"],
        ["verify", enc, "--key-file", keyfile, "--source", src, "--json"],
        ["decrypt", enc, tmp_path / "d.raw", "--key-file", keyfile, "--json"],
        ["size", src, "--json"],
    ):
        p = cli(*args)
        outputs += [p.stdout, p.stderr]
        assert passphrase.decode() not in " ".join(map(str, args))
    bad = tmp_path / "wrong.key"
    bad.write_bytes(b"not the key, and not a DEK\n")
    p = cli("verify", enc, "--key-file", bad, check=False)
    outputs += [p.stdout, p.stderr]

    dump = cryptsetup("luksDump", "--dump-volume-key", "--batch-mode", "--key-file", str(keyfile),
                      str(enc)).stdout.decode()
    vk = bytes.fromhex("".join(dump.split("MK dump:")[1].split()))
    secrets = [passphrase, base64.b64decode(passphrase), vk, vk.hex().encode(),
               vk[:32], vk[32:], b"not the key"]
    image = enc.read_bytes()
    for secret in secrets:
        for out in outputs:
            assert secret not in out
        assert secret not in image[: 2 * MiB]  # header and key slots hold no plain key
    assert not list(tmp_path.glob("*lukspack-tmp*"))
